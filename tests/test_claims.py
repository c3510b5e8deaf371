"""`initsearch claims`: every claim names a comparison that can run on its model, the verdict
words follow the paired interval, and a claim runs end to end through the race at toy size."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from initsearch.claims import CLAIMS, EXPERIMENT, judge_claim
from initsearch.cli import main
from initsearch.plan import resolve_model
from initsearch.recipe import why_not

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", [n for n, c in CLAIMS.items() if not c.unavailable])
def test_every_claim_compares_two_recipes_that_apply_to_its_model(name):
    claim = CLAIMS[name]
    _, model = resolve_model(claim.arch, arch_options=claim.options, profile="cpu")
    for recipe in (claim.recipe, claim.control):
        if recipe.name in ("xavier", "gradinit_start"):
            continue  # not baselines: their roles are checked when they apply
        assert why_not(recipe.name, model.probe) is None, (name, recipe.name)
    assert claim.recipe.name != claim.control.name and claim.kind in ("better", "comparable")


CLAIM = CLAIMS["emergence_mlp"]
EQUAL = CLAIMS["zero_resnet"]


@pytest.mark.parametrize("claim, ours, theirs, word", [
    (CLAIM, [0.50, 0.52, 0.51, 0.53], [0.40, 0.41, 0.40, 0.42], "reproduced"),
    (CLAIM, [0.40, 0.41, 0.40, 0.42], [0.50, 0.52, 0.51, 0.53], "not reproduced"),
    (CLAIM, [0.50, 0.40, 0.55, 0.38], [0.45, 0.47, 0.44, 0.46], "inconclusive at this power"),
    (EQUAL, [0.500, 0.510, 0.505, 0.502], [0.501, 0.509, 0.506, 0.503], "reproduced"),
    (EQUAL, [0.40, 0.41, 0.40, 0.42], [0.50, 0.52, 0.51, 0.53], "not reproduced"),
    (EQUAL, [0.50, 0.40, 0.55, 0.38], [0.45, 0.47, 0.44, 0.46], "inconclusive at this power"),
])
def test_the_word_follows_the_paired_interval(claim, ours, theirs, word):
    got, reason, diff = judge_claim(claim, ours, theirs, min_effect=0.01)
    assert got == word, reason
    assert diff is not None and claim.recipe.name in reason
    if word.startswith("inconclusive"):
        assert "half-width" in reason


def test_a_claim_with_too_few_seeds_is_inconclusive():
    word, reason, diff = judge_claim(CLAIM, [0.5, 0.6], [0.4, 0.5], min_effect=0.01)
    assert word == "inconclusive at this power" and diff is None and "2 seeds" in reason


def test_a_claim_runs_through_the_race_and_is_logged_with_the_claims(data_dir, home, capsys):
    """At toy size: emergence vs its He base on the MLP, 3 fresh seeds each, scored by AUC;
    a CIFAR-100 claim says it cannot run; listing and bad names are one line."""
    assert main(["claims"]) == 0 and "tfixup_vs_default" in capsys.readouterr().out
    assert main(["claims", "nope"]) == 2 and "unknown claim 'nope'" in capsys.readouterr().err
    code = main(["claims", "emergence_mlp", "lion_dg_cifar100", "--profile", "smoke",
                 "--data", str(data_dir), "--home", str(home), "--backend", "local",
                 "--no-progress", "--confirm-max-seeds", "3", "--markdown", str(home.parent / "claims.md")])
    out = capsys.readouterr().out
    assert code == 0
    assert "emergence_mlp: " in out and "; 3 seeds;" in out
    assert any(w.upper() in out for w in ("reproduced", "not reproduced", "inconclusive at this power"))
    assert "lion_dg_cifar100: CANNOT RUN HERE" in out and "CIFAR-100" in out
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    jobs = [r for r in client.search_runs([exp.experiment_id], "tags.stage = 'confirm'")]
    assert len(jobs) == 6  # 2 recipes x 3 seeds, in the claims experiment
    rows = [line for line in (home.parent / "claims.md").read_text().splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["emergence_mlp", "lion_dg_cifar100"]
    assert "| 3 |" in rows[0] and "**cannot run here**" in rows[1] and "Profile `smoke`" in (
        home.parent / "claims.md").read_text()
    assert main(["claims", "emergence_mlp", "--markdown", str(home / "no" / "t.md")]) == 2
    assert "--markdown" in capsys.readouterr().err
