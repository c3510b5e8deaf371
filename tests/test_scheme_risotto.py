"""RISOTTO (initsearch.schemes.risotto): exact dynamical isometry of ReLU ResNets at init.

The defining property (Gadhikar & Burkholz, arXiv 2210.02411): on a ReLU ResNet at init, every
singular value of the input-output Jacobian is 1, at finite width and depth, with and without
projection shortcuts. It is measured on networks built from initsearch's own norm-free
``BasicBlock`` and on the product ``resnet_ds`` with real CIFAR-10 images.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev
from torch.nn import functional as F

from initsearch.archs import build_model
from initsearch.archs.resnet import BasicBlock
from initsearch.layers import Bias, Scale
from initsearch.errors import UsageError
from initsearch.recipe import Recipe, StepInit
from initsearch.roles import discover_roles
from initsearch.schemes import STEPS, init_forward_mode
from initsearch.schemes.layer import he_

RISOTTO = STEPS["risotto"]
SIDE = 3  # a 3x3 input keeps the full Jacobian small (27 inputs)


class TinyResNet(nn.Module):
    """Stem conv -> ReLU -> norm-free BasicBlocks, all stride 1 -> flatten -> Linear readout.

    Stride 1 everywhere because a stride-2 block keeps one pixel in four: the discarded pixels
    have zero derivative, so the Jacobian *must* have zero singular values there, whatever the
    init. Likewise the readout reads the flattened map (not a global average, whose singular
    values are 1/sqrt(pixels)) and has as many outputs as LL features (``width/2 * pixels``),
    so the input-output Jacobian is tall and can be an exact isometry.
    """

    def __init__(self, widths: tuple[int, ...], stem_conv: nn.Module | None = None,
                 plain_from: int = 0) -> None:
        super().__init__()
        self.stem = stem_conv or nn.Conv2d(3, plain_from or widths[0], 3, 1, 1, bias=False)
        # optional plain (non-residual) conv plain_from -> widths[0], with a bias
        self.plain = nn.Conv2d(plain_from, widths[0], 3, 1, 1) if plain_from else nn.Identity()
        self.blocks = nn.Sequential(*[BasicBlock(a, b, 1, norm=False)
                                      for a, b in zip(widths, widths[1:])])
        features = widths[-1] * SIDE * SIDE
        self.classifier = nn.Linear(features, features // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(self.plain(h)) if isinstance(self.plain, nn.Conv2d) else h
        return self.classifier(self.blocks(h).flatten(1))


def jacobian_singular_values(model: nn.Module) -> torch.Tensor:
    x = torch.randn(3, SIDE, SIDE, dtype=torch.float64)
    jac = jacrev(lambda v: model(v[None])[0])(x)
    return torch.linalg.svdvals(jac.reshape(jac.shape[0], -1))


IDENTITY_ONLY = (8, 8, 8, 8)            # three identity-skip blocks
WITH_PROJECTIONS = (6, 6, 10, 10, 14)   # identity, projection 6->10, identity, projection 10->14


@pytest.mark.parametrize("widths, plain_from", [(IDENTITY_ONLY, 0), (WITH_PROJECTIONS, 0),
                                                (IDENTITY_ONLY, 6)],
                         ids=["identity", "projection", "plain-conv"])
@pytest.mark.parametrize("options", [{}, {"beta": 1.0}, {"mix": "independent", "beta": 2.0}],
                         ids=["default", "beta1", "independent"])
def test_every_jacobian_singular_value_is_one(widths, plain_from, options):
    torch.manual_seed(0)
    model = TinyResNet(widths, plain_from=plain_from).double()
    report = RISOTTO(model, discover_roles(model), **options)
    projections = sum(a != b for a, b in zip(widths, widths[1:]))
    identities = len(widths) - 1 - projections
    assert report["blocks"] == {"identity": identities, "projection": projections}
    s = jacobian_singular_values(model)
    assert len(s) == 3 * SIDE * SIDE  # full rank: no input direction is lost
    assert torch.allclose(s, torch.ones_like(s), atol=1e-4), s


def test_he_init_is_far_from_isometry():
    """Control: the same network and measurement under He init fail the property."""
    torch.manual_seed(0)
    model = TinyResNet(WITH_PROJECTIONS).double()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            he_(m)
    s = jacobian_singular_values(model)
    assert (s - 1).abs().max() > 0.5, s


def _decode(h: torch.Tensor) -> torch.Tensor:
    """The LL state z of h = [relu(z); relu(-z)]: first half minus second half."""
    n = h.shape[1] // 2
    return h[:, :n] - h[:, n:]


def _pixels(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def _capture(model: nn.Module, paths: list[str]) -> tuple[dict, list]:
    """Inputs and outputs of the modules at ``paths``, recorded by forward hooks."""
    seen, named = {}, dict(model.named_modules())
    handles = [named[p].register_forward_hook(
        lambda m, args, out, p=p: seen.__setitem__(p, (args[0], out))) for p in paths]
    return seen, handles


def _real_model(cifar_batch, **options):
    """resnet_ds (depth 8, width 8, norm-free) with Fixup scalars knocked off their neutral
    values (as a previous scheme might leave them), then RISOTTO; float64, 64 real images."""
    torch.manual_seed(1)
    model = build_model("resnet_ds", options={"depth": 8, "width": 8, "norm": "none"}).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, Bias):
                m.bias.fill_(0.3)
            elif isinstance(m, Scale):
                m.weight.fill_(2.0)
    roles = discover_roles(model)
    report = RISOTTO(model, roles, **options)
    return model.eval(), roles, report, cifar_batch[0][:64].double()


def test_product_resnet_is_exactly_looks_linear_and_isometric_per_pixel(cifar_batch):
    """On real images the network is linear, every block's pre-activation is an LL pair
    ([a; -a]), and every block (and the stem) preserves the Gram matrix of the per-pixel states
    z: z -> Q z, Q orthogonal. A stride-2 block maps the state at pixel 2o to pixel o."""
    model, roles, report, x = _real_model(cifar_batch)
    assert report["blocks"] == {"identity": 1, "projection": 2}
    blocks = roles.blocks
    paths = [b.path for b in blocks] + [f"{b.path}.bias2b" for b in blocks] \
        + [f"{b.path}.shortcut" for b in blocks]
    seen, handles = _capture(model, paths)
    logits = model(x)
    for h in handles:
        h.remove()
    assert logits.shape == (64, 10) and torch.isfinite(logits).all()
    # the whole ReLU network computes a linear function of its input at init
    assert torch.allclose(model(-x), -logits, atol=1e-10)
    assert torch.allclose(model(x[:32] - 2 * x[32:]), logits[:32] - 2 * logits[32:], atol=1e-10)
    pick = torch.randperm(64 * 32 * 32, generator=torch.Generator().manual_seed(0))[:300]
    z_in = _pixels(x)[pick]  # the stem maps the 3 input channels isometrically (N = 4 >= 3)
    first = _pixels(_decode(seen[blocks[0].path][0]))[pick]
    assert torch.allclose(first @ first.T, z_in @ z_in.T, atol=1e-9)
    for b in blocks:
        h_in, h_out = seen[b.path]
        pre = seen[f"{b.path}.bias2b"][1] + seen[f"{b.path}.shortcut"][1]
        n = pre.shape[1] // 2
        assert torch.allclose(pre[:, :n], -pre[:, n:], atol=1e-10), b.path
        stride = h_in.shape[-1] // h_out.shape[-1]
        before = _pixels(_decode(h_in)[..., ::stride, ::stride])[:300]
        after = _pixels(_decode(h_out))[:300]
        assert torch.allclose(after @ after.T, before @ before.T, atol=1e-9), b.path


@pytest.mark.parametrize("beta", [1 / math.sqrt(2), 1.0])
def test_balanced_projection_blocks_weigh_skip_and_branch_equally(cifar_batch, beta):
    """mix='balanced': at every pixel of every real image, the projection shortcut and the
    residual branch have the same norm; at the default beta = 1/sqrt(2) they are also
    orthogonal, so each carries half of the pre-activation's energy."""
    model, roles, _, x = _real_model(cifar_batch, beta=beta)
    projections = [b.path for b in roles.blocks if b.shortcut]
    seen, handles = _capture(model, [f"{p}.bias2b" for p in projections]
                             + [f"{p}.shortcut" for p in projections])
    model(x)
    for h in handles:
        h.remove()
    for p in projections:
        r, s = (_pixels(seen[f"{p}.{name}"][1]) for name in ("bias2b", "shortcut"))
        assert torch.allclose(r.norm(dim=1), s.norm(dim=1), rtol=1e-9), p
        if beta == 1 / math.sqrt(2):
            assert (r * s).sum(1).abs().max() < 1e-9 * s.norm(dim=1).max() ** 2, p


def test_independent_mix_is_not_balanced(cifar_batch):
    """Control for the test above: Q drawn independently of the shortcut is still an exact
    isometry, but the branch is larger than the skip."""
    model, roles, _, x = _real_model(cifar_batch, mix="independent")
    p = next(b.path for b in roles.blocks if b.shortcut)
    seen, handles = _capture(model, [f"{p}.bias2b", f"{p}.shortcut"])
    model(x)
    for h in handles:
        h.remove()
    r, s = (_pixels(seen[f"{p}.{name}"][1]).norm(dim=1) for name in ("bias2b", "shortcut"))
    assert (r / s).mean() > 1.2


def test_batchnorm_model_keeps_the_ll_pairing(cifar_batch):
    """norm='batch': batch-statistics BN maps an LL pair (a, -a) to a pair, so the stem's and
    every first branch conv's normalized outputs are still [a; -a] (exactness of the isometry
    is not claimed with BN: see the module docstring)."""
    torch.manual_seed(0)
    model = build_model("resnet_ds", options={"depth": 8, "width": 8})
    with torch.no_grad():  # affines off their neutral values, as a previous scheme might leave them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    roles = discover_roles(model)
    RISOTTO(model, roles)
    paths = ["stem_bn"] + [f"{b.path}.bn1" for b in roles.blocks]
    seen, handles = _capture(model, paths)
    with init_forward_mode(model):
        logits, aux = model(cifar_batch[0][:64])
    for h in handles:
        h.remove()
    assert torch.isfinite(logits).all()
    for p in paths:
        out = seen[p][1]
        n = out.shape[1] // 2
        assert torch.allclose(out[:, :n], -out[:, n:], atol=1e-5), p
        assert out.pow(2).mean() > 0.5, p  # unit-variance channels, not a trivial 0 = -0


def test_recipe_runs_risotto_reproducibly_and_checks_options():
    def weights(seed):
        model = build_model("resnet_ds", options={"depth": 8, "width": 8, "norm": "none"})
        report = Recipe(name="risotto", steps=(StepInit("risotto", {"beta": 1.0}),)).apply(
            model, seed=seed)
        return torch.cat([p.flatten() for p in model.parameters()]), report

    a, report = weights(0)
    assert torch.equal(a, weights(0)[0]) and not torch.equal(a, weights(1)[0])
    assert report.steps["risotto"]["blocks"] == {"identity": 1, "projection": 2}
    for bad in ({"beta": 0.3}, {"mix": "haar"}, {"gamma": 1.0}):
        with pytest.raises(UsageError):
            StepInit("risotto", bad)


class ThreeConvBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (nn.Conv2d(c, c, 3, 1, 1) for _ in range(3))

    def forward(self, x):
        return F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))) + x)


@pytest.mark.parametrize("model, message", [
    (TinyResNet((7, 7)), r"stem has 7 output channels.*even"),
    (TinyResNet((8, 8), nn.Conv2d(3, 8, 3, 1, 0)), r"stem has kernel \(3, 3\) and padding"),
    (TinyResNet((8, 8), nn.Conv2d(3, 8, 2, 1, 1)), r"stem has kernel \(2, 2\)"),
    (TinyResNet((8, 4)), r"block blocks.0 narrows 8->4->4"),
    (nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), ThreeConvBlock(8), nn.Flatten(), nn.Linear(8, 10)),
     r"block 1 has 3 convs"),
], ids=["odd", "padding", "even-kernel", "narrowing", "bottleneck"])
def test_unfit_structure_is_a_one_line_usage_error(model, message):
    with pytest.raises(UsageError, match=message) as err:
        RISOTTO(model, discover_roles(model))
    assert "\n" not in str(err.value)
