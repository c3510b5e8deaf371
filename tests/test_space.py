import optuna
import pytest

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.recipe import BASELINES, RoleInit
from initsearch.space import load_space


def test_shipped_spaces_and_profiles_load():
    for name in ("resnet_ds", "default"):
        space = load_space(name)
        assert set(space.baselines()) == set(BASELINES)
    for name in ("cpu", "gpu", "smoke"):
        assert load_protocol(name).epochs >= 1


@pytest.mark.parametrize("norm, absent", [("batch", {"fixup", "skipinit"}), ("none", set())])
def test_bound_space_runs_the_baselines_that_apply(norm, absent):
    space = load_space("resnet_ds").bind(build_model("resnet_ds", options={"depth": 8, "norm": norm}))
    assert set(space.baselines()) == set(BASELINES) - absent
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
    assert seen == {"lsuv", "gradinit"}


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
