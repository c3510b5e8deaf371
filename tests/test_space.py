import re

import optuna
import pytest
from torch import nn

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.recipe import BASELINES, RoleInit
from initsearch.space import load_space


def test_shipped_spaces_and_profiles_load():
    transformer_only = {"gpt2", "tfixup", "mimetic"}
    assert set(load_space("resnet_ds").baselines()) == set(BASELINES) - transformer_only
    assert set(load_space("default").baselines()) == set(BASELINES)
    assert transformer_only <= set(load_space("vit").baselines())
    for name in ("cpu", "gpu", "smoke"):
        assert load_protocol(name).epochs >= 1


#: Per built-in arch (smoke sizes): the baselines its own space runs on it.
EXPECTED = {
    "resnet": {"pytorch_default", "he", "lsuv", "gradinit", "emergence", "zerO", "risotto"},
    "resnet_ds": {"pytorch_default", "he", "lion_dg", "lsuv", "lsuv_lion_dg", "gradinit",
                  "emergence", "zerO", "risotto"},
    "densenet_ds": {"pytorch_default", "he", "lion_dg", "lsuv", "lsuv_lion_dg", "gradinit",
                    "emergence"},
    "vgg": {"pytorch_default", "he", "lsuv", "gradinit", "emergence", "zerO"},
    "mlp": {"pytorch_default", "he", "lsuv", "gradinit", "emergence", "zerO"},
    "vit": {"pytorch_default", "he", "lsuv", "gradinit", "emergence", "gpt2", "mimetic"},
    "transformer_postln": {"pytorch_default", "he", "lsuv", "gradinit", "emergence", "gpt2",
                           "mimetic"},
}


def test_every_arch_is_expected_here():
    from initsearch.archs import ARCHS

    assert set(EXPECTED) == set(ARCHS)


@pytest.mark.parametrize("arch", EXPECTED)
def test_every_arch_has_a_space_and_protocol_sizes(arch):
    for profile in ("cpu", "gpu", "smoke"):
        assert load_protocol(profile).for_arch(arch)[1], f"{profile} does not size {arch}"
    protocol, options = load_protocol("smoke").for_arch(arch)
    space = load_space(arch).bind(build_model(arch, options=options))
    assert set(space.baselines()) == EXPECTED[arch]


def test_protocol_arch_sections_merge_key_by_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("format: initsearch.protocol\nversion: 1\noptimizer: {lr: 0.1, momentum: 0.8}\n"
                    "archs: {mlp: {options: {depth: 3}, optimizer: {lr: 0.01}, epochs: 2, "
                    "pruner: {name: median}}}\n")
    protocol, options = load_protocol(str(path)).for_arch("mlp")
    assert options == {"depth": 3} and protocol.epochs == 2
    assert protocol.optimizer == {"lr": 0.01, "momentum": 0.8}  # lr overridden, momentum kept
    assert protocol.pruner == {"name": "median"}  # replaced whole: another pruner's options
    assert type(protocol.make_pruner()).__name__ == "MedianPruner"  # would not fit it
    assert load_protocol(str(path)).for_arch("vgg")[0].optimizer["lr"] == 0.1
    assert load_protocol(str(path)).for_arch(None)[1] == {}  # a user's model: no sizes


@pytest.mark.parametrize("text, message", [
    ("archs: {vgg16: {options: {}}}", "archs.vgg16: unknown architecture"),
    ("archs: {vgg: {epochs: 0}}", "(archs.vgg): epochs must be an integer >= 1"),
    ("archs: {vgg: {optimizer: 3}}", "archs.vgg"),
    ("archs: {vgg: [1]}", "archs.vgg must be"),
])
def test_bad_protocol_arch_sections(tmp_path, text, message):
    path = tmp_path / "p.yaml"
    path.write_text(f"format: initsearch.protocol\nversion: 1\n{text}\n")
    with pytest.raises(UsageError, match=re.escape(message)):
        load_protocol(str(path))


def test_space_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "format: initsearch.space\nversion: 1\nroles: {conv: {init: [default, he]}, "
        "classifier: {init: [default, zero]}}\nrole_overrides: {x: conv}\n")
    (tmp_path / "child.yaml").write_text(
        f"format: initsearch.space\nversion: 1\nextends: {tmp_path / 'base.yaml'}\n"
        "roles: {classifier: null, stem: {init: [default, orthogonal]}}\nrole_overrides: {}\n")
    space = load_space(str(tmp_path / "child.yaml"))
    assert set(space.roles) == {"conv", "stem"} and space.roles["conv"].labels == ["default", "he"]
    assert dict(space.role_overrides) == {}  # keys other than roles replace the base's
    (tmp_path / "sub").mkdir()  # a relative extends is read beside the extending file
    (tmp_path / "sub" / "a.yaml").write_text("format: initsearch.space\nversion: 1\n"
                                             "extends: b.yaml\nroles: {}\n")
    (tmp_path / "sub" / "b.yaml").write_text("format: initsearch.space\nversion: 1\n"
                                             "roles: {stem: {init: [default]}}\n")
    assert set(load_space(str(tmp_path / "sub" / "a.yaml")).roles) == {"stem"}
    (tmp_path / "sub" / "empty.yaml").write_text("")
    (tmp_path / "sub" / "c.yaml").write_text("format: initsearch.space\nversion: 1\nextends: empty.yaml\n")
    with pytest.raises(UsageError, match="not a space file"):
        load_space(str(tmp_path / "sub" / "c.yaml"))
    (tmp_path / "loop.yaml").write_text(
        f"format: initsearch.space\nversion: 1\nextends: {tmp_path / 'loop.yaml'}\nroles: {{}}\n")
    with pytest.raises(UsageError, match="loops back"):
        load_space(str(tmp_path / "loop.yaml"))


@pytest.mark.parametrize("norm, absent", [("batch", {"fixup", "skipinit"}), ("none", set())])
def test_bound_space_runs_the_baselines_that_apply(norm, absent):
    space = load_space("resnet_ds").bind(build_model("resnet_ds", options={"depth": 8, "norm": norm}))
    assert set(space.baselines()) == set(BASELINES) - absent - {"gpt2", "tfixup", "mimetic"}
    assert ("norm" in space.roles) == (norm == "batch")  # roles the model lacks are not searched
    plain = load_space("resnet_ds").bind(build_model("resnet_ds", options={"depth": 8, "aux_stages": ()}))
    assert "lion_dg" not in plain.baselines() and "aux_head" not in plain.roles


def test_layer_scales_and_steps_are_sampled_and_enqueued():
    model = build_model("resnet_ds", options={"depth": 8})
    space = load_space("resnet_ds_layerwise").bind(model)
    assert "layer.stages.0.0.conv1.scale" in space.params_for(BASELINES["he"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(20):
        recipe = space.sample(study.ask())
        paths = [row["path"] for row in recipe.plan(model)]
        expected = {p for p in paths if p in ("stem", "classifier") or ".conv" in p
                    or p.endswith("shortcut.0")}
        assert set(recipe.layer_scales) == expected
        seen |= {s.name for s in recipe.steps}
    assert seen == {"lsuv", "gradinit", "gradinit_fast"}


def test_enqueued_baselines_are_sampled_exactly():
    space = load_space("resnet_ds")
    study = optuna.create_study(direction="maximize")
    for recipe in space.baselines().values():
        study.enqueue_trial(space.params_for(recipe))
    for name, recipe in space.baselines().items():
        sampled = space.sample(study.ask())
        for role in space.roles:  # a role the baseline leaves out means PyTorch's default
            assert sampled.roles[role] == recipe.roles.get(role, RoleInit()), (name, role)


def test_sampling_is_conditional_on_zero():
    space = load_space("resnet_ds")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_zero = False
    for _ in range(60):
        trial = study.ask()
        recipe = space.sample(trial)
        if recipe.roles["aux_head"].scheme == "zero":
            seen_zero = True
            assert "aux_head.scale" not in trial.params
        else:
            assert 0.1 <= trial.params["aux_head.scale"] <= 4.0
        study.tell(trial, 0.0)
    assert seen_zero


@pytest.mark.parametrize("text, message", [
    ("roles: {}", "format"),
    ("format: initsearch.space\nversion: 1\nroles: {trunk: {init: [he]}}", "unknown role 'trunk'"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [hee]}}", "unknown init scheme"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [he], scale: [2, 4]}}",
     "1 must be inside"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [xavier]}}", "none of the baselines"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [default]}}\nsteps: {a: [lsuv], b: [fixup]}",
     "list the static slots first"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [default]}}\nsteps: {a: [lsuvv]}",
     "unknown init step 'lsuvv'"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [default]}}\nlayer_scales: {conv: 2}",
     "layer_scales"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [he]}}\nextra: 1", "unknown key"),
    ("format: initsearch.space\nversion: 1\nroles: [oops", "not valid YAML"),
])
def test_malformed_space_files(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_space(str(path))


def test_bind_drops_the_structural_steps_that_refuse_the_model():
    """T-Fixup needs a transformer without LayerNorm, Fixup residual blocks, mimetic an
    nn.MultiheadAttention: a bound space offers only the steps that run on its model."""
    static = lambda space: {c.step.name for c in space.steps["static"] if c}  # noqa: E731
    vit = dict(depth=2, width=32, heads=2, patch_size=8)
    assert static(load_space("vit").bind(build_model("vit", options=vit))) == {
        "gpt2", "mimetic", "emergence"}
    assert "tfixup" in static(load_space("vit").bind(build_model("vit", options={**vit, "norm": "none"})))
    assert static(load_space("default").bind(build_model("vgg", options={"width": 4}))) == {
        "risotto", "emergence"}  # no residual blocks: no fixup, gpt2; no attention: no tfixup, mimetic


def test_a_model_that_cannot_take_cifar_images_is_one_line():
    """A model built for another input size is refused when the space binds it, before any
    baseline check or trial fails on it in its own words."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 10))
    with pytest.raises(UsageError, match=r"the model does not run on 3x32x32 images \(CIFAR-10\)"):
        load_space("default").bind(model)
    assert model.training  # the probe leaves its mode as it was
