"""`initsearch claims`: every claim names a comparison that can run on its model, the verdict
words follow the paired interval, and a claim runs end to end through the race at toy size."""
from __future__ import annotations

import json

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
    control_options = {**claim.options, **(claim.control_options or {})}
    for recipe, options in ((claim.recipe, claim.options), (claim.control, control_options)):
        if recipe.name in ("xavier", "gradinit_start"):
            continue  # not baselines: their roles are checked when they apply
        _, model = resolve_model(claim.arch, arch_options=options, profile="cpu")
        assert why_not(recipe.name, model.probe) is None, (name, recipe.name)
    assert claim.recipe.name != claim.control.name
    assert claim.kind in ("better", "comparable", "less_variable")


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
    got, reason, diff = judge_claim(claim, dict(enumerate(ours)), dict(enumerate(theirs)),
                                    min_effect=0.01, untrained=0.1)
    assert got == word, reason
    assert diff is not None and claim.recipe.name in reason
    if word.startswith("inconclusive"):
        assert "half-width" in reason


def test_a_claim_with_too_few_seeds_is_inconclusive():
    word, reason, diff = judge_claim(CLAIM, {0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5}, min_effect=0.01,
                                     untrained=0.1)
    assert word == "inconclusive at this power" and diff is None and "only 2 seeds" in reason


DIVERGED = "diverged at epoch 1: train_loss nan"


def test_a_recipe_that_diverges_where_its_control_trains_is_not_reproduced():
    """Emergence on VGG-19 without BN (measured): it diverged on all 3 seeds while He trained.
    The failures count, as untrained networks, against the recipe -- not as missing seeds."""
    ours, theirs = {0: DIVERGED, 1: DIVERGED, 2: DIVERGED}, {0: 0.31, 1: 0.29, 2: 0.33}
    word, reason, diff = judge_claim(CLAIM, ours, theirs, min_effect=0.01, untrained=0.1)
    assert word == "not reproduced", reason
    assert diff.diff.n == 3 and abs(diff.diff.mean + 0.21) < 1e-9
    assert f"{CLAIM.recipe.name} failed on 3 of 3 seeds (seed 0: {DIVERGED})" in reason
    assert "scored untrained (10.0%)" in reason
    # the other way round, the recipe trains where its control diverges: a "better" claim holds
    word, reason, _ = judge_claim(CLAIM, theirs, ours, min_effect=0.01, untrained=0.1)
    assert word == "reproduced" and f"{CLAIM.control.name} failed on 3 of 3" in reason
    # and a "comparable" one does not: one side trains, the other does not
    assert judge_claim(EQUAL, theirs, ours, min_effect=0.01, untrained=0.1)[0] == "not reproduced"


def test_seeds_where_both_sides_failed_tell_nothing_and_are_left_out():
    ours = {0: DIVERGED, 1: 0.50, 2: 0.52, 3: 0.51, 4: 0.53}
    theirs = {0: "raised: CUDA error", 1: 0.40, 2: 0.41, 3: 0.40, 4: 0.42}
    word, reason, diff = judge_claim(CLAIM, ours, theirs, min_effect=0.01, untrained=0.1)
    assert word == "reproduced" and diff.diff.n == 4 and "1 seeds where both failed left out" in reason
    word, reason, diff = judge_claim(CLAIM, {0: DIVERGED, 1: DIVERGED, 2: 0.5}, {0: "x", 1: "y", 2: 0.4},
                                     min_effect=0.01, untrained=0.1)
    assert word == "inconclusive at this power" and diff is None and "only 1 seeds" in reason


SPREAD = CLAIMS["zero_variance"]


@pytest.mark.parametrize("ours, theirs, word", [
    ([0.600, 0.602, 0.599, 0.601, 0.603, 0.600], [0.55, 0.64, 0.58, 0.66, 0.52, 0.61], "reproduced"),
    ([0.55, 0.64, 0.58, 0.66, 0.52, 0.61], [0.600, 0.602, 0.599, 0.601, 0.603, 0.600], "not reproduced"),
    ([0.60, 0.62, 0.59, 0.61, 0.63, 0.60], [0.58, 0.61, 0.60, 0.62, 0.59, 0.63], "inconclusive at this power"),
])
def test_a_spread_claim_is_judged_on_the_paired_variance_ratio(ours, theirs, word):
    """ZerO's lower seed-to-seed variance: the word follows the Pitman-Morgan interval of the
    variance ratio (below 1, above 1, spanning 1), whatever the means do."""
    got, reason, measured = judge_claim(SPREAD, dict(enumerate(ours)), dict(enumerate(theirs)),
                                        min_effect=0.01, untrained=0.1)
    assert got == word, reason
    assert measured.n == 6 and "variance ratio" in reason and "Pitman-Morgan" in reason
    if word.startswith("inconclusive"):
        assert measured.lo < 1 < measured.hi and "rules out ratios below" in reason


def test_a_spread_claim_with_a_side_that_never_varies_is_inconclusive():
    word, reason, measured = judge_claim(SPREAD, {0: 0.1, 1: 0.1, 2: 0.1}, {0: 0.4, 1: 0.5, 2: 0.45},
                                         min_effect=0.01, untrained=0.1)
    assert word == "inconclusive at this power" and measured is None and "no spread" in reason


def test_fixed_seed_and_two_network_claims_run_end_to_end(data_dir, home, capsys):
    """At toy size: the spread claim trains both recipes on every seed of the budget (4, where a
    race could stop at 3), and RISOTTO-vs-BN trains each side on its own network -- two studies
    on the same fresh seeds, the control's with BN, the recipe's without."""
    code = main(["claims", "zero_variance", "risotto_vs_bn", "--profile", "smoke", "--data",
                 str(data_dir), "--home", str(home), "--backend", "local", "--no-progress",
                 "--confirm-max-seeds", "4"])
    out = capsys.readouterr().out
    assert code == 0 and "zero_variance: " in out and "risotto_vs_bn: " in out, out
    assert out.count("; 4 seeds;") >= 2 and "variance ratio" in out
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    jobs = client.search_runs([exp.experiment_id], "tags.stage = 'confirm'")
    by_study: dict[str, list] = {}
    for r in jobs:
        by_study.setdefault(r.data.tags.get("study", ""), []).append(r)
    variance = [s for s in by_study if "zero_variance" in s]
    risotto = sorted(s for s in by_study if "risotto_vs_bn" in s)
    assert len(variance) == 1 and len(by_study[variance[0]]) == 8  # 2 recipes x 4 seeds
    assert len(risotto) == 2 and all(len(by_study[s]) == 4 for s in risotto)
    seeds = [sorted(r.data.tags["seed"] for r in by_study[s]) for s in risotto]
    assert seeds[0] == seeds[1]  # the same fresh seeds on both networks: the scores pair
    norms = {s.rsplit("-", 1)[1]: {json.loads(r.data.tags["arch_options"])["norm"]
                                   for r in by_study[s]} for s in risotto}
    assert norms == {"risotto": {"none"}, "pytorch_default": {"batch"}}


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
