"""LSUV (Mishkin & Matas 2016): unit output variance of every conv/linear layer, measured
independently on initsearch's ResNet-DS and real CIFAR-10 images; the LION-DG hybrid; side
effects; non-convergence."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs import build_model
from initsearch.archs.resnet import BasicBlock
from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, Recipe, RoleInit, StepInit
from initsearch.roles import WEIGHT_ROLES, discover_roles
from initsearch.schemes import STEPS, InitData, init_forward_mode
from initsearch.schemes.layer import orthogonal_
from initsearch.schemes.lsuv import STEP, lsuv_

WEIGHTS = (nn.modules.conv._ConvNd, nn.Linear)
TOL = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet(norm="batch", width=8):
    torch.manual_seed(0)
    return build_model("resnet_ds", options={"depth": 8, "width": width, "norm": norm})


def _orthogonal(model):
    """LSUV's orthonormal pre-init (the ``orthogonal`` layer scheme on every conv/linear)."""
    for m in model.modules():
        if isinstance(m, WEIGHTS):
            orthogonal_(m)
    return model


@torch.no_grad()
def _variances(model, x):
    """Our own measurement: variance over all elements of every conv/linear output, one full
    forward in the same mode LSUV uses (batch-statistics BN, every head runs)."""
    out = {}

    def record(path):
        def hook(module, inputs, output):
            out.setdefault(path, output.var().item())  # first call; a hook returning None
        return hook

    hooks = [m.register_forward_hook(record(p))
             for p, m in model.named_modules() if isinstance(m, WEIGHTS)]
    with init_forward_mode(model):
        model(x)
    for h in hooks:
        h.remove()
    return out


def _fit_and_held_out(batch, n=128):
    """LSUV's data (the first ``n`` real images) and the other images, which it never sees."""
    x, y = batch
    return InitData(x[:n], y[:n]), x[n:]


def _rows(report):
    return {r["path"]: r for r in report["layers"]}


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_unit_variance_on_real_images_and_held_out(cifar_batch, norm):
    model = _orthogonal(_resnet(norm))
    data, held_out = _fit_and_held_out(cifar_batch)
    before = _variances(model, data.x)
    assert any(abs(v - 1) >= TOL for v in before.values())  # there is something to correct

    report = lsuv_(model, discover_roles(model), data, tol=TOL, batch_size=128)

    assert report["batch_size"] == 128 and report["backward_passes"] == 0
    rows = _rows(report)
    after = _variances(model, data.x)
    assert set(rows) == set(after)  # every conv/linear was visited, none skipped
    for path, var in after.items():
        row = rows[path]
        assert row["skipped"] is None
        if row["converged"]:
            assert abs(var - 1) < TOL, (path, var)
        else:
            assert row["iterations"] == 10, (path, row)
    assert report["converged_all"]
    # One full pass for the order, then one partial pass per layer (re-measures run the layer only).
    assert report["forward_passes"] == 1 + len(rows)

    # It generalizes: on 128 images LSUV never saw, every layer's variance stays near 1.
    for path, var in _variances(model, held_out).items():
        assert 0.5 < var < 2.0, (path, var)


class _RegisteredBackwards(nn.Module):
    """Two ResNet blocks and a classifier, registered in the reverse of the order they run."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 10)
        self.late = BasicBlock(8, 16, 2, norm=False)
        self.early = BasicBlock(3, 8, 1, norm=False)

    def forward(self, x):
        return self.fc(self.late(self.early(x)).mean((2, 3)))


def test_forward_execution_order_not_registration_order(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    executed = ["early.conv1", "early.conv2", "early.shortcut.0",
                "late.conv1", "late.conv2", "late.shortcut.0", "fc"]

    def fresh():
        torch.manual_seed(0)
        model = _orthogonal(_RegisteredBackwards())
        with torch.no_grad():
            for m in model.early.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(5)  # so that correcting `early` changes what `late` sees
        return model, discover_roles(model)

    model, roles = fresh()
    report = lsuv_(model, roles, data, batch_size=64)
    assert [r["path"] for r in report["layers"]] == executed
    assert all(abs(v - 1) < TOL for v in _variances(model, data.x).values())

    # The pitfall, reproduced with the same step: registration order (fc, late, then early)
    # leaves the later layers far from unit variance once `early` is corrected.
    model, roles = fresh()
    for group in (["fc"], ["late.*"], ["early.*"]):
        lsuv_(model, roles, data, batch_size=64, include=group)
    after = _variances(model, data.x)
    assert abs(after["late.conv1"] - 1) > 0.5 and abs(after["fc"] - 1) > 0.5


def test_lsuv_lion_dg_hybrid_zero_heads_zero_aux_gradient_unit_backbone(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    x, y = data.x, data.y

    def aux_gradient(recipe):
        model = _resnet()
        report = recipe.apply(model, data=data, seed=0)
        heads = {id(p) for p in model.aux_heads.parameters()}
        backbone = [p for n, p in model.named_parameters()
                    if id(p) not in heads and not n.startswith("classifier")]
        with init_forward_mode(model):
            _, aux = model(x)
        grads = torch.autograd.grad(sum(F.cross_entropy(a, y) for a in aux),
                                    backbone + [h.weight for h in model.aux_heads.values()],
                                    allow_unused=True)
        return model, report.steps["lsuv"], grads[:len(backbone)], grads[len(backbone):]

    # Aux heads zeroed by the layer scheme, then LSUV (a data step, so it runs last).
    model, report, backbone_g, head_g = aux_gradient(BASELINES["lsuv_lion_dg"])
    rows = _rows(report)
    for name, head in model.aux_heads.items():
        assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
        assert rows[f"aux_heads.{name}"]["skipped"] == "zero weight"  # left alone, not rescaled
    reached = [g for g in backbone_g if g is not None]
    assert len(reached) > 10  # the aux losses reach the backbone's graph...
    assert all(torch.count_nonzero(g) == 0 for g in reached)  # ...with exactly zero gradient
    assert all(g.abs().sum() > 0 for g in head_g)  # while the heads themselves learn
    after = _variances(model, x)
    backbone_layers = [p for p in after if not p.startswith("aux_heads")]
    assert len(backbone_layers) == 10
    assert all(abs(after[p] - 1) < TOL for p in backbone_layers)
    assert report["converged_all"]

    # The control: LSUV without zero heads rescales them to unit variance, and the same
    # measurement then gives a non-zero aux gradient into the backbone.
    model, report, backbone_g, _ = aux_gradient(BASELINES["lsuv"])
    for name in model.aux_heads:
        assert _rows(report)[f"aux_heads.{name}"]["converged"]
    assert sum(float(g.abs().sum()) for g in backbone_g if g is not None) > 0


def test_running_statistics_and_modes_untouched(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    model = _orthogonal(_resnet())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
    model.eval()
    model.stages[1].train()  # a mixed state, to be restored exactly
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    weights = {n: p.clone() for n, p in model.named_parameters()}

    # The first (order) pass and every partial pass up to the classifier run every BN layer.
    lsuv_(model, discover_roles(model), data, batch_size=64, include=["stem", "classifier"])

    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _biased_classifier(bias_variance):
    """A badly scaled classifier whose bias alone has the given variance over its outputs;
    rescaling the weight cannot remove that part, so one correction is not enough."""
    model = _orthogonal(_resnet())
    with torch.no_grad():
        model.classifier.weight.mul_(30)
        signs = torch.tensor([1.0, -1.0]).repeat(5)
        model.classifier.bias.copy_(signs * bias_variance ** 0.5)
    return model


def test_needs_more_than_one_correction_with_a_bias(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    model = _biased_classifier(0.5)
    (row,) = lsuv_(model, discover_roles(model), data, batch_size=64, max_iter=1,
                   include=["classifier"])["layers"]
    assert row["converged"] is False and row["iterations"] == 1
    assert abs(_variances(model, data.x)["classifier"] - 1) >= TOL  # really not there yet

    model = _biased_classifier(0.5)
    (row,) = lsuv_(model, discover_roles(model), data, batch_size=64,
                   include=["classifier"])["layers"]
    assert row["converged"] and 1 < row["iterations"] < 10
    assert abs(_variances(model, data.x)["classifier"] - 1) < TOL


def test_unreachable_variance_hits_the_cap(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    model = _biased_classifier(4.0)  # the bias alone has variance 4 > 1 + tol
    report = lsuv_(model, discover_roles(model), data, batch_size=64, include=["classifier"])
    (row,) = report["layers"]
    assert row["path"] == "classifier" and row["converged"] is False and row["iterations"] == 10
    assert not report["converged_all"]
    assert _variances(model, data.x)["classifier"] > 1 + TOL


class _WithIdleHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = BasicBlock(3, 8, 1, norm=True)
        self.fc = nn.Linear(8, 10)
        self.idle = nn.Linear(8, 10)  # e.g. a head used only in some other mode

    def forward(self, x):
        return self.fc(self.block(x).mean((2, 3)))


def test_layers_never_run_are_reported_and_left_alone(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    model = _orthogonal(_WithIdleHead())
    idle = model.idle.weight.clone()
    rows = _rows(lsuv_(model, discover_roles(model), data, batch_size=64))
    assert rows["idle"]["skipped"] == "not run by the forward pass"
    assert rows["idle"]["converged"] is None
    assert torch.equal(model.idle.weight, idle)
    ran = ("block.conv1", "block.conv2", "block.shortcut.0", "fc")
    assert all(rows[p]["converged"] for p in ran)


def test_step_registration_options_and_recipe(cifar_batch):
    data, _ = _fit_and_held_out(cifar_batch, 64)
    assert STEPS["lsuv"] is STEP and STEP.needs_data
    assert set(STEP.defaults["include"]) == set(WEIGHT_ROLES)
    assert STEP.check_options({"tol": 0.05, "max_iter": 5, "include": ["conv", "stages.*"]}) is None
    assert STEP.check_options({"max_iter": 0}) is not None
    model = _resnet()
    with pytest.raises(UsageError, match="needs data"):
        STEP(model, discover_roles(model))
    with pytest.raises(UsageError, match="neither a role"):
        lsuv_(model, discover_roles(model), data, include=["convv"])

    # Through a recipe, options as a YAML file would give them (lists, not tuples).
    recipe = Recipe.from_dict(Recipe({r: RoleInit("orthogonal") for r in WEIGHT_ROLES}, "lsuv_conv",
                                     steps=(StepInit("lsuv", {"include": ["conv", "branch_last"],
                                                              "batch_size": 32}),)).to_dict())
    report = recipe.apply(model, data=data, seed=0).steps["lsuv"]
    assert report["batch_size"] == 32
    assert {r["role"] for r in report["layers"]} == {"conv", "branch_last"}
    assert report["converged_all"]


def test_init_costs_list_steps_that_refuse_the_model(data_dir):
    """`initsearch schemes --measure` times LSUV on the profile's model and real data (one
    partial pass per layer after the order pass) and lists a transformer-only step with why it
    does not apply, instead of stopping at it."""
    from initsearch.costs import format_costs, measure_costs

    costs = measure_costs("smoke", data_dir, steps=(StepInit("tfixup"), StepInit("lsuv")))
    tfixup, lsuv = costs["rows"]
    assert "attention" in tfixup["refused"] and "seconds" not in tfixup
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
                   for m in build_model("resnet_ds", options=costs["arch_options"]).modules())
    assert lsuv["passes"] == 1 + n_layers and lsuv["seconds"] > 0
    assert "tfixup" in format_costs(costs) and "does not apply" in format_costs(costs)
    with pytest.raises(UsageError, match="no step of tfixup applies to resnet_ds"):
        measure_costs("smoke", data_dir, steps=(StepInit("tfixup"),))
