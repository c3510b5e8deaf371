import optuna
import pytest

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
    ("format: initsearch.space\nversion: 1\nroles: {aux_head: {init: [default, he]}}", "lacks 'zero'"),
    ("format: initsearch.space\nversion: 1\nroles: {conv: {init: [he]}}\nextra: 1", "unknown key"),
    ("format: initsearch.space\nversion: 1\nroles: [oops", "not valid YAML"),
])
def test_malformed_space_files(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_space(str(path))
