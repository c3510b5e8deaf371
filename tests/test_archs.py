"""Built-in architectures: output conventions, paper parameter counts, aux heads, option checks."""
from __future__ import annotations

import pytest
import torch

from initsearch.errors import UsageError
from initsearch.archs import ARCHS, build_model

torch.set_num_threads(1)  # two cores shared with other jobs; these are many tiny ops

#: Small options per registry entry, so a forward pass takes milliseconds.
SMALL = {
    "resnet": {"depth": 8, "width": 4},
    "resnet_ds": {"depth": 8, "width": 4},
    "densenet_ds": {"depth": 10, "growth": 4},
    "vgg": {"width": 4, "fc_layers": 3, "fc_width": 8},
    "mlp": {"depth": 3, "width": 16},
    "vit": {"depth": 2, "width": 16, "heads": 2, "patch_size": 8},
    "transformer_postln": {"depth": 2, "width": 16, "heads": 2, "patch_size": 8},
}
#: The convolutional archs take norm batch|none (the transformers: layer|none, tested apart).
CONV = sorted(n for n in SMALL if n not in ("vit", "transformer_postln"))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_every_arch_has_small_options():
    assert set(SMALL) == set(ARCHS)


@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("name", CONV)
def test_output_shapes(name, norm):
    model = build_model(name, num_classes=7, options={**SMALL[name], "norm": norm})
    heads = len(getattr(model, "aux_heads", ()))
    out = model.train()(_x())
    if heads:
        logits, aux = out
        assert [a.shape for a in aux] == [(2, 7)] * heads
    else:
        logits = out
    assert logits.shape == (2, 7)
    assert model.eval()(_x()).shape == (2, 7)


@pytest.mark.parametrize("options", [{"activation": a, "norm": n} for a, n in
                                     [("tanh", "layer"), ("gelu", "batch"), ("selu", "none"),
                                      ("identity", "none")]])
def test_mlp_variants(options):
    model = build_model("mlp", options={**SMALL["mlp"], **options})
    assert model.train()(_x()).shape == model.eval()(_x()).shape == (2, 10)


@pytest.mark.parametrize("depth", [11, 13, 16, 19])
def test_vgg_depths_count_convs(depth):
    model = build_model("vgg", options={"depth": depth, "width": 4})
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert convs == depth - 3  # the paper's depth counts its three fully connected layers
    assert model.eval()(_x()).shape == (2, 10)


def test_densenet_bc_100_parameter_count():
    """DenseNet-BC-100, k=12: "0.8M" in the paper (769,162 here, 10 classes); the two side
    heads add ~6k."""
    plain = _params(build_model("densenet_ds", options={"aux_blocks": ()}))
    assert 0.765e6 <= plain < _params(build_model("densenet_ds")) <= 0.80e6


@pytest.mark.parametrize("depth, paper", [(20, 0.27e6), (56, 0.85e6), (110, 1.7e6)])
def test_resnet_parameter_counts(depth, paper):
    """The paper's counts (option A shortcuts); the projections here add under 3k."""
    model = build_model("resnet", options={"depth": depth})
    assert _params(model) == pytest.approx(paper, rel=0.03)


@pytest.mark.parametrize("name, option, taps, keys", [
    ("resnet", "aux_stages", (), set()),
    ("resnet", "aux_stages", (2,), {"stage2"}),
    ("resnet_ds", "aux_stages", (1, 2), {"stage1", "stage2"}),
    ("densenet_ds", "aux_blocks", (), set()),
    ("densenet_ds", "aux_blocks", (1,), {"block1"}),
    ("densenet_ds", "aux_blocks", (1, 2), {"block1", "block2"}),
])
def test_aux_heads_only_where_asked(name, option, taps, keys):
    model = build_model(name, options={**SMALL[name], option: taps})
    assert set(model.aux_heads) == keys
    out = model.train()(_x())
    assert len(out[1]) == len(keys) if keys else isinstance(out, torch.Tensor)


@pytest.mark.parametrize("name", ["vgg", "mlp"])
def test_no_aux_heads(name):
    model = build_model(name, options=SMALL[name])
    assert not any("aux" in n for n, _ in model.named_modules())
    assert isinstance(model.train()(_x()), torch.Tensor)


def test_densenet_aux_logits_come_from_the_heads():
    """Zeroing a head's ``fc`` zeroes its logits (in block order) and leaves the main logits."""
    torch.manual_seed(0)
    model = build_model("densenet_ds", options=SMALL["densenet_ds"]).train()
    logits, aux = model(_x())
    assert all(a.abs().sum() > 0 for a in aux)
    with torch.no_grad():
        for p in model.aux_heads["block2"].fc.parameters():
            p.zero_()
    logits2, aux2 = model(_x())
    assert torch.equal(logits2, logits) and torch.equal(aux2[0], aux[0])
    assert torch.count_nonzero(aux2[1]) == 0
    with torch.no_grad():
        for p in model.aux_heads["block1"].fc.parameters():
            p.zero_()
    logits3, aux3 = model(_x())
    assert torch.equal(logits3, logits) and all(torch.count_nonzero(a) == 0 for a in aux3)


@pytest.mark.parametrize("name", ["resnet_ds", "densenet_ds"])
def test_heads_feed_nothing_back(name):
    model = build_model(name, options=SMALL[name]).train()
    logits, _ = model(_x())
    logits.sum().backward()
    assert all(p.grad is None for p in model.aux_heads.parameters())


@pytest.mark.parametrize("name, option, value", [
    ("resnet", "depth", 21), ("resnet", "width", 0), ("resnet", "aux_stages", (3,)),
    ("resnet", "norm", "layer"), ("resnet", "num_classes", 0),
    ("densenet_ds", "depth", 99), ("densenet_ds", "growth", 0),
    ("densenet_ds", "compression", 1.5),
    ("densenet_ds", "compression", 0.001), ("densenet_ds", "aux_blocks", (3,)),
    ("densenet_ds", "aux_blocks", 1), ("densenet_ds", "norm", "group"),
    ("vgg", "depth", 12), ("vgg", "width", 0), ("vgg", "norm", "layer"), ("vgg", "fc_layers", 4),
    ("vgg", "fc_width", 0),
    ("mlp", "depth", 0), ("mlp", "width", "wide"), ("mlp", "activation", "swish"),
    ("mlp", "norm", "group"),
])
def test_bad_options_raise_value_error(name, option, value):
    arch = ARCHS[name]
    with pytest.raises(ValueError) as err:
        arch.factory(**{**arch.defaults, **SMALL[name], option: value})
    message = str(err.value)
    assert option in message and repr(value) in message


def test_build_model_turns_bad_options_into_one_line_usage_errors():
    with pytest.raises(UsageError, match=r"densenet_ds: depth .*22, 40, 100"):
        build_model("densenet_ds", options={"depth": 98})
    with pytest.raises(UsageError, match=r"vgg has no option 'wdith'; its options: depth"):
        build_model("vgg", options={"wdith": 8})
