"""Role discovery: every built-in architecture, and models written only here -- a residual
layout no naming convention describes, auxiliary heads under unusual names, an untraceable
model (names fallback), one that branches on its input's shape (traced on an example), and a
model that cannot be labelled without help."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs import ARCHS, build_model
from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.roles import discover_roles

torch.set_num_threads(1)


def _check_resnet(roles, aux):
    assert roles["stem"] == "stem" and roles["classifier"] == "classifier"
    for stage in range(3):
        for block in range(2):
            assert roles[f"stages.{stage}.{block}.conv1"] == "conv"
            assert roles[f"stages.{stage}.{block}.conv2"] == "branch_last"
    assert roles["stages.1.0.shortcut.0"] == roles["stages.2.0.shortcut.0"] == "shortcut"
    assert [roles[f"aux_heads.stage{s}"] for s in (1, 2) if f"aux_heads.stage{s}" in roles] == \
        ["aux_head"] * aux
    assert len(roles.blocks) == 6
    assert [b.path for b in roles.blocks if b.shortcut] == ["stages.1.0", "stages.2.0"]


CONV_ARCHS = sorted(a for a in ARCHS if a not in ("vit", "transformer_postln"))


@pytest.mark.parametrize("arch", CONV_ARCHS)
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_builtin_arch_roles(arch, norm):
    options = load_protocol("smoke").for_arch(arch)[1]  # tiny sizes
    if arch.startswith("resnet"):
        options["depth"] = 14  # two blocks per stage
    model = build_model(arch, options={**options, "norm": norm})
    roles = discover_roles(model)
    assert roles.source == "graph"
    weights = [p for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    counts = {r: list(roles.values()).count(r) for r in set(roles.values())}
    assert counts["stem"] == counts["classifier"] == 1
    assert (counts.get("norm", 0) > 0) == (norm == "batch")
    if arch.startswith("resnet"):
        _check_resnet(roles, aux=2 if arch == "resnet_ds" else 0)
        if norm == "none":  # Fixup's scalars: one multiplier per block, found on the branch side
            assert all(b.scale == f"{b.path}.scale" for b in roles.blocks)
    elif arch == "densenet_ds":  # concatenation, not addition: no residual block at all
        assert not roles.blocks and "branch_last" not in counts
        assert sorted(p for p, r in roles.items() if r == "aux_head") == \
            ["aux_heads.block1.fc", "aux_heads.block2.fc"]
        assert all(roles[p] == "conv" for p in weights if p not in ("stem", "classifier")
                   and not p.startswith("aux_heads"))
    elif arch == "vgg":
        assert weights[0] in roles and roles[weights[0]] == "stem"
        assert roles["classifier"] == "classifier" and not roles.blocks
        assert counts["conv"] == 7 and "aux_head" not in counts
    else:  # mlp, 3 hidden layers
        assert [roles[p] for p in weights] == ["stem", "linear", "linear", "classifier"]


@pytest.mark.parametrize("arch, placement", [("vit", "pre"), ("transformer_postln", "post")])
@pytest.mark.parametrize("norm", ["layer", "none"])
def test_builtin_transformer_roles(arch, placement, norm):
    """Every unit of the built-in transformers by what it does: patch embedding, the class
    token and position embedding the model owns, each attention's packed q/k/v and output
    projection, the MLP's layers, norms, classifier; an attention block and an MLP block per
    layer, with the norm placement of the arch (none without LayerNorm)."""
    options = {**load_protocol("smoke").for_arch(arch)[1], "depth": 3, "norm": norm}
    roles = discover_roles(build_model(arch, options=options))
    assert roles.source == "graph" and roles.topology == "transformer"
    assert (roles["patch_embed"], roles["class_token"], roles["pos_embedding"]) == (
        "embedding", "token", "pos_embedding")
    for i in range(3):
        assert (roles[f"blocks.{i}.attn"], roles[f"blocks.{i}.attn.out_proj"],
                roles[f"blocks.{i}.mlp.0"], roles[f"blocks.{i}.mlp.2"]) == (
            "attn_qkv", "attn_out", "mlp_in", "mlp_out")
    assert roles["classifier"] == "classifier"
    assert [b.branch for b in roles.blocks] == [
        branch for i in range(3) for branch in ((f"blocks.{i}.attn", f"blocks.{i}.attn.out_proj"),
                                                (f"blocks.{i}.mlp.0", f"blocks.{i}.mlp.2"))]
    assert {b.norm for b in roles.blocks} == {placement if norm == "layer" else None}
    assert ("norm" in roles.values()) == (norm == "layer")


class _SoftmaxAttention(nn.Module):
    """A hand-written attention, as timm and many papers write it: separate or packed
    projections, softmax(q k^T) v, an output projection; a pre-LN block with a layer scale."""

    def __init__(self, d, packed):
        super().__init__()
        self.packed = packed
        if packed:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1) if self.packed else (self.q(x), self.k(x), self.v(x))
        return self.proj((q @ k.transpose(-2, -1) / 4).softmax(-1) @ v)


class _HandWrittenViT(nn.Module):
    def __init__(self, packed=True, sdpa=False):
        super().__init__()
        self.sdpa = sdpa
        self.patch = nn.Conv2d(3, 16, 8, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos = nn.Parameter(torch.zeros(1, 17, 16))
        self.ln1, self.ln2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.attn = _SoftmaxAttention(16, packed)
        self.gamma = nn.Parameter(torch.full((16,), 1e-4))
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
        if self.sdpa:
            a = self.ln1(h)
            q, k, v = self.attn.qkv(a).chunk(3, -1)
            h = h + self.gamma * self.attn.proj(F.scaled_dot_product_attention(q, k, v))
        else:
            h = h + self.gamma * self.attn(self.ln1(h))
        h = h + self.fc2(F.gelu(self.fc1(self.ln2(h))))
        return self.head(h[:, 0])


@pytest.mark.parametrize("packed, sdpa", [(True, False), (False, False), (True, True)],
                         ids=["qkv", "separate", "sdpa"])
def test_hand_written_attention_is_read_from_the_graph(packed, sdpa):
    """q/k/v and the output projection found from softmax(q k^T) v or a
    scaled_dot_product_attention call, under any name; the owned tensors by how they meet the
    data: concatenated (token), added (position embedding), multiplying a branch (layer scale)."""
    roles = discover_roles(_HandWrittenViT(packed, sdpa))
    projections = {"attn.qkv": "attn_qkv"} if packed else {
        "attn.q": "attn_q", "attn.k": "attn_k", "attn.v": "attn_v"}
    assert {p: roles[p] for p in projections} == projections
    assert (roles["attn.proj"], roles["fc1"], roles["fc2"]) == ("attn_out", "mlp_in", "mlp_out")
    assert (roles["cls"], roles["pos"], roles["gamma"], roles["patch"], roles["head"]) == (
        "token", "pos_embedding", "layer_scale", "embedding", "classifier")
    assert [b.scale for b in roles.blocks] == ["gamma", None]
    assert [b.norm for b in roles.blocks] == ["pre", "pre"]


def test_pytorch_transformer_layers_read_from_their_layout():
    """nn.TransformerEncoder cannot be traced by fx (its fast path branches on tensor
    properties); discovery reads its known layout: Post-LN or Pre-LN blocks, roles inside."""
    for norm_first, placement in ((False, "post"), (True, "pre")):
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(3, 32, 8, 8)
                layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, norm_first=norm_first)
                self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.fc = nn.Linear(32, 10)

            def forward(self, x):
                return self.fc(self.enc(self.stem(x).flatten(2).transpose(1, 2)).mean(1))

        roles = discover_roles(Net())
        assert roles.source == "graph" and roles.topology == "transformer"
        assert (roles["stem"], roles["enc.layers.1.self_attn"], roles["enc.layers.1.self_attn.out_proj"],
                roles["enc.layers.1.linear1"], roles["enc.layers.1.linear2"]) == (
            "embedding", "attn_qkv", "attn_out", "mlp_in", "mlp_out")
        assert len(roles.blocks) == 4 and {b.norm for b in roles.blocks} == {placement}


class _FlatResidual(nn.Module):
    """Residual units spread over flat ModuleLists and added in the top-level forward: the
    skip comes first in the sum, the projection is called ``reshape``, pre-activation order,
    a residual MLP stage joined with ``torch.add`` -- no class or name says "block"."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 16, 3, 2, 1)])
        self.b = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)])
        self.reshape = nn.Conv2d(8, 16, 1, 2)
        self.norms = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8)])
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 16)
        self.last = nn.Linear(16, 10)

    def forward(self, x):
        x = self.first(x)
        x = x + self.b[0](F.relu(self.a[0](F.relu(self.norms[0](x)))))  # identity unit
        h = F.relu(self.norms[1](x))
        x = self.reshape(h) + self.b[1](F.relu(self.a[1](h)))  # skip first, projected
        z = x.mean((2, 3))
        z = torch.add(z, self.fc3(F.relu(self.fc2(F.relu(self.fc1(z))))))  # 3-layer MLP branch
        return self.last(z)


def test_nonstandard_residual_layout_from_the_graph():
    roles = discover_roles(_FlatResidual())
    assert roles.source == "graph"
    assert roles["first"] == "stem" and roles["last"] == "classifier"
    assert roles["a.0"] == roles["a.1"] == "conv" and roles["b.0"] == roles["b.1"] == "branch_last"
    assert roles["reshape"] == "shortcut"
    assert (roles["fc1"], roles["fc2"], roles["fc3"]) == ("linear", "linear", "branch_last")
    assert [(b.branch, b.shortcut) for b in roles.blocks] == [
        (("a.0", "b.0"), None), (("a.1", "b.1"), "reshape"), (("fc1", "fc2", "fc3"), None)]


def test_fixup_reads_the_graph_blocks():
    """Fixup reads the blocks the graph found: branches of 2, 2 and 3 layers -> refused clearly."""
    from initsearch.recipe import BASELINES

    model = _FlatResidual()
    with pytest.raises(UsageError, match="same number of layers"):
        BASELINES["fixup"].apply(model, seed=0)


class _Probed(nn.Module):
    """Deep supervision under unusual names, and a classifier registered before the body (so
    registration order would call it the stem)."""

    def __init__(self):
        super().__init__()
        self.readout = nn.Linear(16, 10)
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.probe = nn.ModuleDict({"p0": nn.Conv2d(8, 10, 1)})
        self.tail = nn.Linear(16, 10)  # a tap whose output is returned second

    def forward(self, x):
        h = self.trunk[1](self.trunk[0](x))
        p0 = self.probe["p0"](h).mean((2, 3))
        h = self.trunk[3](self.trunk[2](h)).mean((2, 3))
        return self.readout(h), [p0, self.tail(h)]


def test_aux_heads_under_unusual_names_from_the_graph():
    roles = discover_roles(_Probed())
    assert roles["trunk.0"] == "stem" and roles["trunk.2"] == "conv"
    assert roles["readout"] == "classifier"
    assert roles["probe.p0"] == roles["tail"] == "aux_head"


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.aux_out = nn.Linear(8, 10)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.stem(x)
        if h.mean() > 0:  # control flow on a tensor value: fx cannot trace this
            h = F.relu(h)
        return self.head(h.mean((2, 3)))


def test_untraceable_model_falls_back_to_names():
    roles = discover_roles(_Untraceable())
    assert roles.source.startswith("names (fx could not trace")
    assert "branches on a tensor's values" in roles.source  # no one graph for every input
    assert roles == {"stem": "stem", "aux_out": "aux_head", "head": "classifier"}


class _ShapeBranching(nn.Module):
    """timm's style: Python arithmetic and branches on the input's shape ("same" padding, a
    window that must divide the map), which symbolic tracing cannot follow."""

    def __init__(self, c=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, stride=2), nn.BatchNorm2d(c))
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, 10)
        self.window = 4

    def forward(self, x):
        pad = max((math.ceil(x.shape[-1] / 2) - 1) * 2 + 3 - x.shape[-1], 0)
        h = self.stem(F.pad(x, (pad // 2, pad - pad // 2) * 2))
        if h.shape[-1] % self.window:
            h = F.pad(h, (0, self.window - h.shape[-1] % self.window) * 2)
        B, C, H, W = h.shape
        h = h + self.b(F.relu(self.a(h)))
        return self.head(h.reshape(B, C, H * W).mean(-1))


def test_a_forward_that_branches_on_shapes_is_traced_on_an_example():
    model = _ShapeBranching()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    roles = discover_roles(model)
    assert roles.source == "graph (traced on a 1x3x32x32 example: its forward branches on shapes)"
    assert (roles["stem.0"], roles["stem.1"], roles["a"], roles["b"], roles["head"]) == (
        "stem", "norm", "conv", "branch_last", "classifier")
    assert [(b.branch, b.shortcut) for b in roles.blocks] == [(("a", "b"), None)]
    # nothing touched: not the weights, not BatchNorm's running stats, not the caller's RNG
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # the modes are restored
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    discover_roles(model)
    assert torch.equal(torch.rand(3), expected)
    # the example's shape is the caller's: one that this model cannot take fails the trace
    odd = discover_roles(model, input_shape=(3, 32))
    assert odd.source.startswith("names (fx could not trace") and "symbolically" in odd.source


class _Unit(nn.Module):  # a residual unit whose class name says nothing
    def __init__(self, c):
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.b(torch.relu(self.a(x)))


class _BareParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.entry = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(_Unit(8), _Unit(8))
        self.out = nn.Linear(8, 10)
        self.gain = nn.Parameter(torch.ones(()))  # a bare parameter on the root

    def forward(self, x):
        return self.out(self.body(self.entry(x)).mean((2, 3))) * self.gain


def test_an_unclassifiable_parameter_names_its_path_and_the_fix():
    """A gain on the output is neither a token, a position embedding, a bias, an attention's
    tensor nor a multiplier of a branch that is summed: discovery stops with one line naming the
    parameter path and the override."""
    model = _BareParameter()
    with pytest.raises(UsageError, match=r"cannot label gain \(a parameter of shape \(\)\).*"
                                         r"role_overrides \(e.g. 'gain': scalar_bias"):
        discover_roles(model)
    roles = discover_roles(model, overrides={"gain": "branch_scale"})
    assert roles["entry"] == "stem" and roles["out"] == "classifier"
    assert [roles[f"body.{i}.b"] for i in (0, 1)] == ["branch_last"] * 2
    roles = discover_roles(model, overrides={"gain": "branch_scale", "body.*.a": "shortcut"})
    assert roles["body.0.a"] == "shortcut" and roles["body.0.b"] == "branch_last"


def test_bad_overrides_are_usage_errors():
    model = build_model("resnet_ds", options={"depth": 8})
    with pytest.raises(UsageError, match="unknown role"):
        discover_roles(model, overrides={"stem": "trunk"})
    with pytest.raises(UsageError, match="matches no layer or parameter"):
        discover_roles(model, overrides={"nothing.here": "conv"})


class _LayerScaleNet(nn.Module):
    """ConvNeXt-style: each block owns a layer-scale ``gamma`` *and* has child layers, so it must
    be traced through (not one opaque node) -- and it needs an override for its own gamma."""

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.pw1, self.pw2 = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
            self.gamma = nn.Parameter(torch.full((c, 1, 1), 1e-6))

        def forward(self, x):
            return x + self.gamma * self.pw2(F.gelu(self.pw1(self.dw(x))))

    def __init__(self):
        super().__init__()
        self.patchify = nn.Conv2d(3, 8, 4, 4)
        self.blocks = nn.Sequential(self.Block(8), self.Block(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.patchify(x)).mean((2, 3)))


def test_layer_scale_blocks_are_traced_through():
    """A block owning its layer-scale ``gamma`` beside child layers is traced through; the gamma
    is labelled by what it does (it multiplies the branch) and recorded as the branch's scale."""
    roles = discover_roles(_LayerScaleNet())
    assert roles.source == "graph"
    assert [b.branch for b in roles.blocks] == [
        (f"blocks.{i}.dw", f"blocks.{i}.pw1", f"blocks.{i}.pw2") for i in (0, 1)]
    assert [b.scale for b in roles.blocks] == ["blocks.0.gamma", "blocks.1.gamma"]
    assert roles["blocks.0.gamma"] == roles["blocks.1.gamma"] == "layer_scale"
    assert roles["blocks.1.pw2"] == "branch_last" and roles["patchify"] == "stem"


def test_overrides_and_blocks_agree():
    model = build_model("resnet_ds", options={"depth": 8})
    roles = discover_roles(model, {"stages.0.0.conv2": "conv"})  # no longer a branch end...
    assert [b.path for b in roles.blocks] == ["stages.1.0", "stages.2.0"]  # ...so no block
    vgg = build_model("vgg", options={"width": 4})
    roles = discover_roles(vgg, {"features.4": "branch_last"})  # a block declared by override
    assert [(b.path, b.branch) for b in roles.blocks] == [("features", ("features.4",))]


class _Nested(nn.Module):
    """An outer residual around an inner residual unit plus a mixing conv; and a one-conv
    branch beside a 1x1 projection (a tie broken by the projection's shape)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inner = _Unit(8)
        self.mix = nn.Conv2d(8, 8, 3, padding=1)
        self.wide, self.proj = nn.Conv2d(8, 16, 3, 2, 1), nn.Conv2d(8, 16, 1, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.mix(self.inner(x))
        x = self.proj(x) + self.wide(x)
        return self.fc(x.mean((2, 3)))


def test_nested_residuals_and_projection_ties():
    roles = discover_roles(_Nested())
    assert [(b.branch, b.shortcut) for b in roles.blocks] == [
        (("inner.a", "inner.b"), None), (("mix",), None), (("wide",), "proj")]
    assert (roles["inner.b"], roles["mix"], roles["wide"], roles["proj"]) == (
        "branch_last", "branch_last", "branch_last", "shortcut")
