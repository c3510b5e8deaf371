"""Recipes: file round trip, determinism, and the defining properties of the first schemes,
measured on a real network and real CIFAR-10 images."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, Recipe, RoleInit, StepInit
from initsearch.roles import discover_roles
from initsearch.schemes import InitData


def _resnet():
    return build_model("resnet_ds", options={"depth": 8})


#: The deeply-supervised architectures, small: LION-DG's property must hold on each.
DS = {"resnet_ds": {"depth": 8}, "densenet_ds": {"depth": 10, "growth": 6}}


def _split(model):
    """(backbone params, aux-head layer params): the heads are the ``aux_head`` layers."""
    roles = discover_roles(model)
    modules = dict(model.named_modules())
    heads = [(f"{p}.{n}", q) for p, r in roles.items() if r == "aux_head"
             for n, q in modules[p].named_parameters()]
    aux = {id(q) for q in model.aux_heads.parameters()}
    backbone = [(n, p) for n, p in model.named_parameters()
                if id(p) not in aux and not n.startswith("classifier")]
    return backbone, heads


def _aux_grads(recipe, batch, arch="resnet_ds"):
    model = build_model(arch, options=DS[arch])
    recipe.apply(model, seed=0)
    model.train()
    x, y = batch
    _, aux = model(x)
    aux_loss = sum(F.cross_entropy(a, y) for a in aux)
    backbone, heads = _split(model)
    grads = torch.autograd.grad(aux_loss, [p for _, p in backbone + heads], allow_unused=True)
    return model, grads[:len(backbone)], grads[len(backbone):]


@pytest.mark.parametrize("arch", DS)
def test_lion_dg_zero_heads_and_zero_aux_gradient_into_backbone(cifar_batch, arch):
    model, backbone_g, head_g = _aux_grads(BASELINES["lion_dg"], cifar_batch, arch)
    _, heads = _split(model)
    assert len(heads) == 4 and all(torch.count_nonzero(q) == 0 for _, q in heads)  # W and b
    reached = [g for g in backbone_g if g is not None]
    assert len(reached) > 10  # the aux losses do reach the backbone's graph...
    assert all(torch.count_nonzero(g) == 0 for g in reached)  # ...with exactly zero gradient
    weight_grads = head_g[0::2]
    assert all(g.abs().sum() > 0 for g in weight_grads)  # the heads themselves learn


@pytest.mark.parametrize("arch", DS)
def test_he_heads_send_nonzero_aux_gradient(cifar_batch, arch):
    """The control: the same measurement is non-zero without LION-DG, so the test can fail."""
    _, backbone_g, _ = _aux_grads(BASELINES["he"], cifar_batch, arch)
    assert sum(float(g.abs().sum()) for g in backbone_g if g is not None) > 0


def _plain_relu_stack(depth=12, width=32):
    layers = [nn.Conv2d(3, width, 3, padding=1)]
    layers += [nn.Conv2d(width, width, 3, padding=1) for _ in range(depth - 1)]
    return nn.Sequential(*[m for c in layers for m in (c, nn.ReLU())])


@torch.no_grad()
def _second_moments(model, x):
    out = []
    for m in model:
        x = m(x)
        if isinstance(m, nn.ReLU):
            out.append(float(x.pow(2).mean()))
    return out


def test_he_preserves_activation_scale_on_real_images(cifar_batch):
    """He fan_in keeps E[x^2] of a deep ReLU net roughly constant (its defining property);
    Xavier halves it at every ReLU layer."""
    x = cifar_batch[0][:64]
    he, xavier = _plain_relu_stack(), _plain_relu_stack()
    Recipe({r: RoleInit("he") for r in ("stem", "conv", "classifier")}).apply(he, seed=0)
    Recipe({r: RoleInit("xavier") for r in ("stem", "conv", "classifier")}).apply(xavier, seed=0)
    m_he, m_xa = _second_moments(he, x), _second_moments(xavier, x)
    assert 0.3 < m_he[-1] / m_he[1] < 3
    assert m_xa[-1] / m_xa[1] < 0.05


def test_orthogonal_and_scale():
    model = nn.Sequential(nn.Linear(64, 32))
    Recipe({"stem": RoleInit("orthogonal", {"gain": "linear"}, scale=3.0)}).apply(model, seed=0)
    w = model[0].weight
    torch.testing.assert_close(w @ w.T, 9 * torch.eye(32), atol=1e-4, rtol=0)


def test_round_trip_and_identical_apply(tmp_path):
    recipe = Recipe({"stem": RoleInit("he", {"mode": "fan_out"}, 1.7), "conv": RoleInit("orthogonal"),
                     "aux_head": RoleInit("zero"), "classifier": RoleInit("xavier", scale=0.5)},
                    name="r", meta={"val_acc": 0.5})
    for suffix in (".yaml", ".json"):
        path = recipe.save(tmp_path / f"recipe{suffix}")
        loaded = Recipe.load(path)
        assert loaded == recipe
        a, b = _resnet(), _resnet()
        torch.manual_seed(123)
        state = torch.get_rng_state()
        plan = loaded.apply(a, seed=7).plan
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
        recipe.apply(b, seed=7)
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), name
        assert {row["path"]: row["scheme"] for row in plan}["stem"] == "he"


def test_bad_recipe_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: initsearch.recipe\nversion: 1\nroles: {stem: {scheme: lsuvv}}\n")
    with pytest.raises(UsageError, match="unknown init scheme 'lsuvv'"):
        Recipe.load(bad)
    bad.write_text("format: initsearch.recipe\nversion: 9\n")
    with pytest.raises(UsageError, match="version"):
        Recipe.load(bad)
    with pytest.raises(UsageError, match="does not apply to role 'norm'"):
        Recipe({"norm": RoleInit("he")})


def test_schemes_work_on_channels_last_weights():
    model = build_model("resnet_ds", options={"depth": 8}).to(memory_format=torch.channels_last)
    Recipe({r: RoleInit("orthogonal") for r in ("stem", "conv", "branch_last", "shortcut")}).apply(model)
    w = model.stages[0][0].conv1.weight.reshape(16, -1)
    torch.testing.assert_close(w @ w.T, 2 * torch.eye(16), atol=1e-4, rtol=0)  # gain sqrt(2)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
def test_he_uniform_bound_and_variance(mode):
    conv = nn.Sequential(nn.Conv2d(64, 128, 3))
    Recipe({"stem": RoleInit("he", {"distribution": "uniform", "mode": mode})}).apply(conv, seed=0)
    fan = (64 if mode == "fan_in" else 128) * 9
    w = conv[0].weight
    assert float(w.abs().max()) <= (6 / fan) ** 0.5  # U(-sqrt(6/fan), sqrt(6/fan))
    assert abs(float(w.var()) / (2 / fan) - 1) < 0.05  # variance 2/fan
    assert torch.count_nonzero(conv[0].bias) == 0


def test_steps_and_layer_scales_round_trip_and_order(tmp_path, cifar_batch):
    recipe = Recipe({"stem": RoleInit("he"), "conv": RoleInit("he", scale=2.0)}, "steps",
                    steps=(StepInit("emergence", {"alpha": 1.3}), StepInit("lsuv", {"tol": 0.05})),
                    layer_scales={"stages.0.0.conv1": 0.5})
    loaded = Recipe.load(recipe.save(tmp_path / "r.yaml"))
    assert loaded == recipe
    model = _resnet()
    x, y = cifar_batch
    report = loaded.apply(model, data=InitData(x, y), seed=0)
    assert set(report.steps) == {"emergence", "lsuv"} and report.forward_passes > 0
    # the data step ran last: every layer LSUV rescaled ends at unit variance despite the scales
    rows = [r for r in report.steps["lsuv"]["layers"] if r["converged"] is not None]
    assert rows and all(r["converged"] for r in rows)
    plan = {r["path"]: r["scale"] for r in report.plan if "scale" in r}
    assert plan["stages.0.0.conv1"] == pytest.approx(1.0) and plan["stages.1.0.conv1"] == 2.0
    with pytest.raises(UsageError, match="must come after the static ones"):
        Recipe(steps=(StepInit("lsuv"), StepInit("fixup")))
    with pytest.raises(UsageError, match="need data"):
        Recipe(steps=(StepInit("lsuv"),)).apply(_resnet())
    with pytest.raises(UsageError, match="lacks"):
        Recipe(layer_scales={"no.such.layer": 2.0}).apply(_resnet())
    with pytest.raises(UsageError, match="unknown init step"):
        StepInit("metainit")


def test_static_steps_then_scales_is_the_documented_order():
    """Role/layer scales multiply what the structural steps produced (RISOTTO overwrites the
    weights it sets, so a scale given with it must still show)."""
    a, b = (build_model("resnet_ds", options={"depth": 8, "norm": "none"}) for _ in range(2))
    Recipe({"conv": RoleInit("he")}, steps=(StepInit("risotto"),)).apply(a, seed=0)
    Recipe({"conv": RoleInit("he", scale=3.0)}, steps=(StepInit("risotto"),)).apply(b, seed=0)
    ratio = b.stages[0][0].conv1.weight.norm() / a.stages[0][0].conv1.weight.norm()
    assert float(ratio) == pytest.approx(3.0)


class _TwoLayerHeadNet(nn.Module):
    """A deeply-supervised net whose auxiliary head has two layers (conv 1x1 -> ReLU -> pool ->
    linear), as GoogLeNet's and many user models' do."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.head_conv = nn.Conv2d(16, 8, 1)
        self.head_fc = nn.Linear(8, 10)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = F.relu(self.stem(x))
        aux = self.head_fc(F.relu(self.head_conv(h)).mean((2, 3)))
        out = self.fc(F.relu(self.body(h)).mean((2, 3)))
        return (out, [aux]) if self.training else out


def test_lion_dg_zeroes_only_the_last_layer_of_a_deeper_head(cifar_batch):
    """LION-DG zeroes the auxiliary *classifier*: the head's earlier layers get the backbone's
    He init. At step 0 the auxiliary loss sends exactly zero gradient into the backbone and into
    the head's first layer; within a few steps the first layer moves (deep supervision alive).
    The last layer's weight grows from 0 at first, so the first layer's gradient starts small."""
    x, y = cifar_batch
    torch.manual_seed(0)
    model = _TwoLayerHeadNet()
    roles = discover_roles(model)
    assert (roles["head_conv"], roles["head_fc"]) == ("conv", "aux_head")
    BASELINES["lion_dg"].apply(model, seed=0)
    assert not model.head_fc.weight.any() and not model.head_fc.bias.any()
    w = model.head_conv.weight
    assert 0.8 < float(w.var() * w[0].numel() / 2) < 1.25  # He fan_in, not zero
    model.train()
    _, (aux,) = model(x[:128])
    first = [model.stem.weight, model.body.weight, model.head_conv.weight, model.head_conv.bias]
    grads = torch.autograd.grad(F.cross_entropy(aux, y[:128]), first, allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    assert grads[2] is not None  # the graph reaches the head's first layer, with zero gradient
    start = model.head_conv.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(10):
        xb, yb = x[24 * i:24 * (i + 1)], y[24 * i:24 * (i + 1)]
        out, (aux,) = model(xb)
        loss = F.cross_entropy(out, yb) + 0.3 * F.cross_entropy(aux, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model.head_conv.weight - start).abs().max() > 1e-5  # zeroed too, it stays exactly 0


def _he_ratio(weight: torch.Tensor) -> float:
    """Var(W) * fan_in / 2: 1 for He-normal fan_in, 1/6 for PyTorch's default."""
    return float(weight.var() * weight[0].numel() / 2)


@pytest.mark.parametrize("arch", DS)
def test_lion_dg_backbone_and_classifier_are_he(arch):
    """LION-DG is He everywhere but the auxiliary classifiers: every backbone conv and the main
    classifier are He-normal fan_in (the main classifier is not zeroed)."""
    model = build_model(arch, options=DS[arch])
    BASELINES["lion_dg"].apply(model, seed=0)
    roles = discover_roles(model)
    modules = dict(model.named_modules())
    convs = [modules[p].weight for p, r in roles.items() if r in ("stem", "conv", "branch_last")]
    pooled = sum(_he_ratio(w) * w.numel() for w in convs) / sum(w.numel() for w in convs)
    assert 0.9 < pooled < 1.1, pooled
    classifier = modules[next(p for p, r in roles.items() if r == "classifier")]
    assert classifier.weight.any() and 0.6 < _he_ratio(classifier.weight) < 1.5
