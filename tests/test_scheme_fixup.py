"""Fixup and SkipInit on the normalization-free ResNet: every residual block is the identity at
init, Fixup's branch layers carry L^(-1/(2m-2)), and both train on real CIFAR-10 without BN."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs import build_model
from initsearch.archs.resnet import BasicBlock
from initsearch.errors import UsageError
from initsearch.roles import discover_roles, units
from initsearch.schemes import SCHEMES, STEPS
from initsearch.schemes.fixup import FIXUP_ROLES, SKIPINIT_ROLES, fixup_


def _resnet(depth, width=8):
    return build_model("resnet_ds", options={"depth": depth, "width": width, "norm": "none"})


def _init(model, table, step=False):
    """Apply ``{role: (scheme, options)}`` by role, then (Fixup) the step; returns its report."""
    roles, modules = discover_roles(model), units(model)
    for path, role in roles.items():
        if role in table:
            scheme, options = table[role]
            SCHEMES[scheme].fn(modules[path], **options)
    return fixup_(model, roles) if step else None


FIXUP = dict(table=FIXUP_ROLES, step=True)
SKIPINIT = dict(table=SKIPINIT_ROLES)
# Control: Fixup's roles with a He last layer -- the blocks are no longer the identity.
HE_LAST = dict(table={**FIXUP_ROLES, "branch_last": ("he", {})}, step=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def stream(cifar_stream):
    return cifar_stream


@torch.no_grad()
def _blocks_are_identity(model, x):
    """Feed real images through the net block by block; is each block's output exactly
    relu(shortcut(input)) (relu(input) = input for an identity skip, inputs being >= 0)?"""
    x = F.relu(model.stem_bias(model.stem(x)))
    exact = []
    for stage in model.stages:
        for block in stage:
            out = block(x)
            exact.append(torch.equal(out, F.relu(block.shortcut(x))))
            x = out
    return exact


@pytest.mark.parametrize("depth", [8, 14])
@pytest.mark.parametrize("recipe,identity", [(FIXUP, True), (SKIPINIT, True), (HE_LAST, False)],
                         ids=["fixup", "skipinit", "control"])
def test_every_block_is_identity_at_init(depth, recipe, identity, cifar_batch):
    torch.manual_seed(0)
    model = _resnet(depth)
    _init(model, **recipe)
    exact = _blocks_are_identity(model, cifar_batch[0][:32])
    assert len(exact) == (depth - 2) // 2
    assert all(exact) if identity else not any(exact)


@pytest.mark.parametrize("depth", [8, 14])
def test_branch_layers_carry_depth_factor(depth):
    """Measured std of every non-last branch conv, relative to He fan_out sqrt(2/fan_out), is
    L^(-1/2) (m = 2); the shortcuts keep plain He fan_out."""
    torch.manual_seed(0)
    model = _resnet(depth, width=16)
    report = _init(model, **FIXUP)
    n_blocks = (depth - 2) // 2

    def rel_std(convs):  # pooled over layers: sqrt(mean(w^2 / (2 / fan_out)))
        z = [c.weight.detach().flatten() / (2 / (c.out_channels * c.weight[0, 0].numel())) ** 0.5
             for c in convs]
        return float(torch.cat(z).pow(2).mean().sqrt())

    blocks = [b for stage in model.stages for b in stage]
    assert rel_std([b.conv1 for b in blocks]) == pytest.approx(n_blocks ** -0.5, rel=0.05)
    assert rel_std([b.shortcut[0] for b in blocks if isinstance(b.shortcut, nn.Sequential)]) \
        == pytest.approx(1.0, rel=0.1)
    assert report["residual_branches"] == n_blocks and report["layers_per_branch"] == 2


def _train(model, stream, steps=200, lr=0.1, batch=64):
    x, y = stream
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    losses = []
    for i in range(steps):
        loss = F.cross_entropy(model(x[i * batch:(i + 1) * batch])[0], y[i * batch:(i + 1) * batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return sum(losses[:20]) / 20, sum(losses[-20:]) / 20


def _scalars(model):
    return {n: float(p.detach()) for n, p in model.named_parameters() if p.dim() == 0}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [FIXUP, SKIPINIT], ids=["fixup", "skipinit"])
def test_trains_without_normalization(recipe, stream):
    torch.manual_seed(0)
    model = _resnet(8)
    _init(model, **recipe)
    before = _scalars(model)
    first, last = _train(model, stream)
    assert last < first - 0.2, (first, last)  # measured over 3 seeds: -0.34..-0.51
    after = _scalars(model)
    scales = [n for n in before if n.endswith("scale.weight")]
    assert len(scales) == 3 and all(after[n] != before[n] for n in scales)  # the multipliers learn
    moved = [n for n in before if n.endswith(".bias") and after[n] != before[n]]
    assert len(moved) > len(before) // 2  # and so do the scalar biases


def test_step_through_registry_and_recipe(cifar_batch):
    """The registered step and the baseline recipes built from FIXUP_ROLES/SKIPINIT_ROLES."""
    from initsearch.recipe import BASELINES
    model = _resnet(14)
    report = STEPS["fixup"](model, discover_roles(model))
    assert report["factor"] == pytest.approx(6 ** -0.5) and len(report["layers"]) == 6
    for name in ("fixup", "skipinit"):
        model = _resnet(14)
        BASELINES[name].apply(model, seed=0)
        assert all(_blocks_are_identity(model, cifar_batch[0][:16])), name


class _ThreeConvBlock(nn.Module):
    """A bottleneck-like block: three convs on the branch (m = 3)."""

    def __init__(self, width):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (nn.Conv2d(width, width, 3, padding=1)
                                              for _ in range(3))

    def forward(self, x):
        return F.relu(x + self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))


def test_usage_errors():
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(UsageError, match="needs residual blocks"):
        fixup_(plain, discover_roles(plain))
    mixed = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), BasicBlock(8, 8, 1, norm=False),
                          _ThreeConvBlock(8))
    with pytest.raises(UsageError, match=r"same number of layers.*\[2, 3\]"):
        fixup_(mixed, discover_roles(mixed))
    bottlenecks = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                                *(_ThreeConvBlock(8) for _ in range(16)))
    assert fixup_(bottlenecks, discover_roles(bottlenecks))["factor"] == pytest.approx(16 ** -0.25)


def test_fixup_baseline_output_is_zero_and_blocks_identity(cifar_batch):
    """The Fixup baseline recipe (as searches run it): the classifier is zero, so the network's
    output is exactly 0 on real images, and every residual block is the identity."""
    from initsearch.recipe import BASELINES
    model = _resnet(8)
    BASELINES["fixup"].apply(model, seed=0)
    assert not model.classifier.weight.any() and not model.classifier.bias.any()
    model.eval()
    assert not model(cifar_batch[0][:64]).any()
    assert all(_blocks_are_identity(model, cifar_batch[0][:64]))
