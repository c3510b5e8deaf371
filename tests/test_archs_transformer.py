"""Built-in transformers (``vit``, ``transformer_postln``): shapes, layout and the closed-form
parameter count, where the LayerNorms sit (pre-LN vs Post-LN), torch.fx tracing, option checks
and FLOPs."""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from initsearch.archs import ARCHS, build_model, flops_per_image
from initsearch.archs.vit import PostLNBlock, PostLNTransformer, PreLNBlock, ViT
from initsearch.errors import UsageError

torch.set_num_threads(1)  # two cores shared with other jobs; these are many tiny ops

NAMES = ("vit", "transformer_postln")
#: Small options, so a forward pass takes milliseconds: 16 patches, 2 blocks of width 16.
SMALL = {"patch_size": 8, "depth": 2, "width": 16, "heads": 2, "mlp_ratio": 2}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _closed_form(patch_size: int, depth: int, width: int, mlp_ratio: int, num_classes: int,
                 final_norm: bool) -> int:
    """Parameters from the layout, layer by layer (weights + biases)."""
    w, hidden = width, mlp_ratio * width
    tokens = 1 + (32 // patch_size) ** 2
    embed = 3 * patch_size ** 2 * w + w  # Conv2d(3, w, p, stride=p)
    class_token = w
    pos_embedding = tokens * w
    norms = 2 * (2 * w)  # norm1, norm2: weight + bias each
    attn = (3 * w * w + 3 * w) + (w * w + w)  # packed q/k/v in_proj, then out_proj
    mlp = (w * hidden + hidden) + (hidden * w + w)
    final = 2 * w if final_norm else 0
    classifier = w * num_classes + num_classes
    return embed + class_token + pos_embedding + depth * (norms + attn + mlp) + final + classifier


@pytest.mark.parametrize("options", [SMALL, {}], ids=["small", "defaults"])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape(name, options):
    model = build_model(name, options=options)
    assert model.train()(_x()).shape == (2, 10)
    assert model.eval()(_x()).shape == (2, 10)


def test_vit_parameter_count_is_the_closed_form():
    """ViT at patch 4, depth 6, width 192, 3 heads, ratio 4 (the defaults), 10 classes."""
    model = build_model("vit", options={"patch_size": 4, "depth": 6, "width": 192, "heads": 3,
                                        "mlp_ratio": 4})
    expected = _closed_form(4, 6, 192, 4, 10, final_norm=True)
    assert expected == 2_693_578
    assert _params(model) == expected


@pytest.mark.parametrize("name, final_norm", [("vit", True), ("transformer_postln", False)])
@pytest.mark.parametrize("options", [SMALL, {"patch_size": 2, "depth": 1, "width": 12,
                                             "heads": 4, "mlp_ratio": 3}])
def test_parameter_count_is_the_closed_form_at_other_sizes(name, final_norm, options):
    model = build_model(name, num_classes=7, options=options)
    assert _params(model) == _closed_form(options["patch_size"], options["depth"],
                                          options["width"], options["mlp_ratio"], 7, final_norm)


@pytest.mark.parametrize("name, cls, block", [("vit", ViT, PreLNBlock),
                                              ("transformer_postln", PostLNTransformer,
                                               PostLNBlock)])
def test_build_model_gives_the_layout_asked_for(name, cls, block):
    model = build_model(name, options={"patch_size": 2, "depth": 3, "width": 24, "heads": 6,
                                       "mlp_ratio": 2})
    assert type(model) is cls and len(model.blocks) == 3
    assert all(type(b) is block for b in model.blocks)
    assert model.patch_embed.kernel_size == model.patch_embed.stride == (2, 2)
    attn = model.blocks[0].attn
    assert attn.num_heads == 6 and attn.embed_dim == 24 and attn.batch_first
    assert attn.dropout == 0.0 and not any(isinstance(m, nn.Dropout) for m in model.modules())
    mlp = model.blocks[0].mlp
    assert [type(m) for m in mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert mlp[0].out_features == mlp[2].in_features == 48
    assert isinstance(model.norm, nn.LayerNorm) == (name == "vit")
    assert (model.classifier.in_features, model.classifier.out_features) == (24, 10)
    assert name in ARCHS and ARCHS[name].description


@pytest.mark.parametrize("name", NAMES)
def test_tokens_are_owned_by_the_root_and_initialized_like_torchvision(name):
    torch.manual_seed(0)
    model = build_model(name)  # width 192, 64 patches
    own = dict(model.named_parameters(recurse=False))
    assert set(own) == {"class_token", "pos_embedding"}
    assert own["class_token"].shape == (1, 1, 192) and torch.count_nonzero(own["class_token"]) == 0
    pos = own["pos_embedding"]
    assert pos.shape == (1, 65, 192)
    assert pos.std().item() == pytest.approx(0.02, rel=0.05) and abs(pos.mean().item()) < 2e-3


@pytest.mark.parametrize("name", NAMES)
def test_tokens_and_every_layer_get_gradients(name):
    torch.manual_seed(0)
    model = build_model(name, options=SMALL).train()
    model(_x()).logsumexp(1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_classifier_reads_the_class_token(name):
    """The head sees token 0 of the last block's output (through the final LayerNorm in ViT)."""
    torch.manual_seed(0)
    model = build_model(name, options=SMALL).train()
    seen: dict[str, torch.Tensor] = {}
    model.blocks[-1].register_forward_hook(lambda m, _, out: seen.update(last=out))
    model.classifier.register_forward_pre_hook(lambda m, args: seen.update(head=args[0]))
    model(_x())
    torch.testing.assert_close(seen["head"], model.norm(seen["last"][:, 0]))
    assert not torch.allclose(seen["head"], model.norm(seen["last"].mean(1)), atol=1e-3)


def test_blocks_compute_the_pre_and_post_ln_formulas():
    """The same block weights, arranged as ViT's pre-LN and as the 2017 Post-LN block."""
    torch.manual_seed(0)
    pre = PreLNBlock(16, 2, 2)
    post = PostLNBlock(16, 2, 2)
    post.load_state_dict(pre.state_dict())
    for m in (pre, post):  # LN's affine away from (1, 0), so a misplaced norm shows
        for norm in (m.norm1, m.norm2):
            norm.weight.data.fill_(1.5)
            norm.bias.data.fill_(0.25)
    x = torch.randn(2, 5, 16)

    def attn(h: torch.Tensor) -> torch.Tensor:
        return pre.attn(h, h, h, need_weights=False)[0]

    h = x + attn(pre.norm1(x))
    torch.testing.assert_close(pre(x), h + pre.mlp(pre.norm2(h)))
    h = pre.norm1(x + attn(x))
    torch.testing.assert_close(post(x), pre.norm2(h + pre.mlp(h)))
    assert not torch.allclose(pre(x), post(x), atol=1e-3)


def test_vit_and_postln_differ_with_the_same_weights():
    torch.manual_seed(0)
    vit = build_model("vit", options=SMALL)
    post = build_model("transformer_postln", options=SMALL)
    missing, unexpected = post.load_state_dict(vit.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["norm.bias", "norm.weight"]
    shared = post.state_dict()
    assert all(torch.equal(shared[k], v) for k, v in vit.state_dict().items() if k in shared)
    x = _x()
    assert not torch.allclose(vit.train()(x), post.train()(x), atol=1e-3)


def _block_outputs(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor]]:
    outputs: list[tuple[nn.Module, torch.Tensor]] = []
    hooks = [b.register_forward_hook(lambda m, _, out: outputs.append((m, out.detach())))
             for b in model.blocks]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(outputs) == len(model.blocks)
    return outputs


def _normalized_per_token(block: nn.Module, out: torch.Tensor) -> bool:
    """``out`` has zero mean and unit variance over each token's features, once ``norm2``'s
    affine is undone."""
    z = (out - block.norm2.bias) / block.norm2.weight
    return (torch.allclose(z.mean(-1), torch.zeros(()), atol=1e-4)
            and torch.allclose(z.var(-1, unbiased=False), torch.ones(()), atol=1e-3))


@pytest.mark.parametrize("name, normalized", [("transformer_postln", True), ("vit", False)])
def test_only_postln_blocks_end_normalized(name, normalized):
    """Post-LN: every block's output is LayerNorm'd per token (up to its affine), whatever the
    input scale; pre-LN's residual stream is not."""
    torch.manual_seed(0)
    model = build_model(name, options={**SMALL, "depth": 3}).train()
    with torch.no_grad():  # a non-trivial affine, so "up to the affine" is tested
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_()
    outputs = _block_outputs(model, 10 * _x())
    assert [_normalized_per_token(block, out) for block, out in outputs] == [normalized] * 3


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_fx_traces_the_model(name, mode):
    torch.manual_seed(0)
    model = build_model(name, options=SMALL)
    getattr(model, mode)()
    traced = torch.fx.symbolic_trace(model)
    x = _x()
    torch.testing.assert_close(traced(x), model(x))
    nodes = {(n.op, str(n.target)) for n in traced.graph.nodes}
    assert {("get_attr", "class_token"), ("get_attr", "pos_embedding"),
            ("call_module", "blocks.1.attn"), ("call_module", "classifier")} <= nodes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("option, value", [
    ("patch_size", 5), ("patch_size", 0), ("heads", 5), ("heads", 0), ("depth", 0),
    ("width", 0), ("mlp_ratio", 0), ("mlp_ratio", 1.5), ("num_classes", 0),
])
def test_bad_options_raise_usage_errors_naming_the_option(name, option, value):
    with pytest.raises(UsageError) as err:
        if option == "num_classes":
            build_model(name, num_classes=value)
        else:
            build_model(name, options={option: value})
    message = str(err.value)
    assert message.startswith(f"{name}: {option} ") and repr(value) in message


def test_option_messages_say_what_is_allowed():
    with pytest.raises(UsageError, match=r"vit: patch_size must divide 32 .*not 5"):
        build_model("vit", options={"patch_size": 5})
    with pytest.raises(UsageError, match=r"heads must divide width \(20\), not 3"):
        build_model("transformer_postln", options={"width": 20, "heads": 3})
    with pytest.raises(UsageError, match=r"norm must be one of 'layer', 'none', not 'batch'"):
        build_model("vit", options={"norm": "batch"})
    with pytest.raises(UsageError, match=r"vit has no option 'dropout'; its options: patch_size"):
        build_model("vit", options={"dropout": 0.1})


@pytest.mark.parametrize("name", ["vit", "transformer_postln"])
def test_norm_none_has_no_layernorm(name):
    """``norm=none``: the normalization-free transformer (T-Fixup's condition), same count of
    every other parameter."""
    free = build_model(name, options={**SMALL, "norm": "none"})
    assert not any(isinstance(m, nn.LayerNorm) for m in free.modules())
    normed = build_model(name, options=SMALL)
    n_norms = sum(p.numel() for m in normed.modules() if isinstance(m, nn.LayerNorm)
                  for p in m.parameters())
    assert sum(p.numel() for p in normed.parameters()) - n_norms == sum(p.numel() for p in free.parameters())
    assert free(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("options", [SMALL, {**SMALL, "heads": 1}], ids=["heads2", "heads1"])
@pytest.mark.parametrize("name", NAMES)
def test_flops_per_image(name, options):
    """Positive; at least the patch embedding, MLPs and classifier (2 FLOPs per multiply-add),
    at most that plus attention (q/k/v and output projections, q.k and attn.v products).

    torch's FlopCounterMode sees no FLOPs inside ``aten._native_multi_head_attention`` (the
    eval-mode fast path of nn.MultiheadAttention, taken with an even number of heads) nor in
    CPU scaled-dot-product attention, so on CPU the count can miss the attention part."""
    model = build_model(name, options=options)
    p, d, w, r = (options[k] for k in ("patch_size", "depth", "width", "mlp_ratio"))
    n = (32 // p) ** 2
    t = n + 1
    dense = 2 * (3 * p * p * w * n + d * t * 2 * r * w * w + w * 10)
    attention = 2 * d * (t * 4 * w * w + 2 * t * t * w)
    flops = flops_per_image(model)
    assert 0 < dense <= flops <= dense + attention
