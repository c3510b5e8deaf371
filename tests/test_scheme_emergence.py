"""Emergence-promoting scaling: the alpha^(i-c) depth profile on a real ResNet, and the network
function of a bias-free ReLU chain unchanged by the symmetric profile (changed by others)."""
import math

import pytest
import torch
from torch import nn

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.roles import discover_roles
from initsearch.schemes import STEPS
from initsearch.schemes.emergence import emergence_

MAIN = ("stem", "conv", "branch_last", "linear", "classifier")


@pytest.mark.parametrize("include", [MAIN, ("stem", "conv", "branch_last")], ids=["even", "odd"])
def test_weight_norms_follow_profile_on_resnet(include):
    """Counted layers (main path, registration order): ||W_i|| x alpha^(i - (L-1)/2); every
    other tensor (shortcuts, aux heads, BN, biases) untouched."""
    torch.manual_seed(0)
    model = build_model("resnet_ds", options={"depth": 8, "width": 8})
    roles = discover_roles(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    alpha = 1.3
    emergence_(model, roles, alpha=alpha, include=include)
    counted = [f"{p}.weight" for p, r in roles.items() if r in include]
    assert len(counted) == (8 if include == MAIN else 7)
    centre = (len(counted) - 1) / 2
    after = {n: p.detach() for n, p in model.named_parameters()}
    for i, name in enumerate(counted):
        ratio = float(after[name].norm() / before[name].norm())
        assert ratio == pytest.approx(alpha ** (i - centre), rel=1e-5), name
    assert all(torch.equal(after[n], before[n]) for n in before if n not in counted)
    untouched = {n for n in before if n not in counted}
    assert any("shortcut" in n for n in untouched) and any("aux_heads" in n for n in untouched)


def _relu_chain(n_layers, width=8):
    """Bias-free conv/ReLU chain, average pool, linear classifier: ``n_layers`` weight layers."""
    layers = [nn.Conv2d(3, width, 3, padding=1, bias=False), nn.ReLU()]
    for i in range(n_layers - 2):
        layers += [nn.Conv2d(width, width, 3, stride=1 + (i % 2), padding=1, bias=False), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10, bias=False)]
    return nn.Sequential(*layers).double()


@pytest.mark.parametrize("n_layers", [5, 6])
def test_symmetric_profile_keeps_function_of_bias_free_relu_net(n_layers, cifar_batch):
    torch.manual_seed(0)
    x = cifar_batch[0][:64].double()
    model = _relu_chain(n_layers)
    roles = discover_roles(model)
    weights = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        ref = model(x)
        report = emergence_(model, roles, alpha=1.5)
        assert len(report["layers"]) == n_layers
        out = model(x)
        assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
        changed = sum(not torch.equal(a, b) for a, b in zip(model.parameters(), weights))
        assert changed == n_layers - n_layers % 2  # all but the centre layer of an odd chain
        # Control: scaling only the first half (factors < 1) does change the function, by the
        # product of those factors (positive homogeneity).
        first_half = report["layers"][:n_layers // 2]
        named = dict(model.named_modules())
        for row in first_half:
            named[row["path"]].weight.mul_(row["factor"])
        shrink = math.prod(row["factor"] for row in first_half)
        assert not torch.allclose(model(x), ref, rtol=1e-3)
        assert torch.allclose(model(x), shrink * ref, rtol=1e-10, atol=1e-12)


def test_pivot_centre_on_even_depth_changes_function(cifar_batch):
    """centre="layer" (pivot floor(L/2) unscaled): for L = 6 the exponents are -3..2, so the
    output is scaled by alpha^-3 -- the asymmetric alternative is not function-preserving."""
    torch.manual_seed(0)
    x, alpha = cifar_batch[0][:64].double(), 1.5
    model = _relu_chain(6)
    with torch.no_grad():
        ref = model(x)
        emergence_(model, discover_roles(model), alpha=alpha, centre="layer")
        assert torch.allclose(model(x), alpha ** -3 * ref, rtol=1e-10, atol=1e-12)


def test_options_and_errors():
    model = _relu_chain(5)
    roles = discover_roles(model)
    step = STEPS["emergence"]
    assert step.check_options({"alpha": 1.5, "centre": "layer"}) is None
    assert "outside" in step.check_options({"alpha": 2.5})
    assert "centre" in step.check_options({"centre": "first"})
    with pytest.raises(UsageError, match="conv/linear weights only"):
        emergence_(model, roles, include=("norm",))
    with pytest.raises(UsageError, match="glob"):
        emergence_(model, roles, include=("nothing.*",))
    with pytest.raises(UsageError, match="no conv/linear layer"):
        emergence_(model, roles, include=("aux_head",))


def test_baseline_recipe_reports_profile():
    """Through the recipe: He, then the step; its report gives each layer's exponent and factor."""
    from initsearch.recipe import BASELINES
    model = build_model("resnet_ds", options={"depth": 8, "width": 8})
    report = BASELINES["emergence"].apply(model, seed=0).steps["emergence"]
    exponents = [row["exponent"] for row in report["layers"]]
    assert exponents == [i - 3.5 for i in range(8)]
    assert math.prod(row["factor"] for row in report["layers"]) == pytest.approx(1.0)
