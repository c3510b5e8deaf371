"""The racing confirmation and its statistics on generated score streams (no training): a known
winner, a known equivalence, known noise, failures and dead seeds, and the repeated-look error
rate; the statistics' edge cases (sign, no spread, too few seeds)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats as scipy_stats

from initsearch.race import RaceRules, race
from initsearch.stats import Paired, estimate, paired

SEEDS = list(range(100, 112))
RULES = RaceRules(min_seeds=3, max_seeds=10, min_effect=0.01, chance=0.112)


def stream(means: dict[str, float], noise: float, seed: int = 0, shared: float = 0.02) -> dict:
    """``{name: {seed: accuracy}}`` for every seed: a shared per-seed effect plus own noise."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, shared, len(SEEDS))
    return {m: {s: float(mu + c + rng.normal(0, noise)) for s, c in zip(SEEDS, common)}
            for m, mu in means.items()}


def test_paired_statistics_agree_with_scipy_and_keep_the_sign():
    a, b = [0.52, 0.55, 0.50, 0.58], [0.50, 0.51, 0.49, 0.53]
    d = paired(a, b)
    assert math.isclose(d.p, scipy_stats.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    half = scipy_stats.t.ppf(0.975, 3) * scipy_stats.tstd([x - y for x, y in zip(a, b)]) / 2
    assert math.isclose(d.diff.hi - d.diff.mean, half, rel_tol=1e-9)
    assert d.better() and d.significant and not d.worse()
    flipped = paired(b, a)  # the same evidence, the other way round: a significant loss
    assert math.isclose(flipped.p, d.p) and flipped.worse() and not flipped.better()
    assert not flipped.significant


def test_no_spread_is_never_p_zero_and_few_seeds_are_refused():
    same = paired([0.52, 0.55, 0.50], [0.50, 0.53, 0.48])  # +2 pp on every seed
    assert same.p == pytest.approx(0.25) and not same.better()  # the exact sign-flip p
    assert paired([0.5] * 7, [0.4] * 7).p == pytest.approx(2 / 2 ** 7)
    assert paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]).p == 1.0
    with pytest.raises(ValueError):
        paired([0.5, 0.6], [0.4, 0.5])  # two seeds: no test


def test_equivalence_is_two_one_sided_tests():
    tight = paired([0.500, 0.510, 0.505, 0.502], [0.501, 0.509, 0.506, 0.500])
    assert tight.equivalent(0.01)
    assert not tight.equivalent(0.0005)  # its 90 % interval is wider than that
    shifted = paired([0.520, 0.531, 0.524, 0.523], [0.50, 0.51, 0.505, 0.502])  # +2 pp, tight
    assert not shifted.equivalent(0.01) and shifted.better()


def test_a_known_winner_drops_everyone_else():
    means = {"default": 0.40, "he": 0.45, "lsuv": 0.45, "best": 0.55}
    out = race(list(means), "default", stream(means, 0.005), SEEDS, RULES)
    assert out.stop == "winner" and out.survivors == ("best",) and out.leader == "best"
    assert set(out.dropped) == {"default", "he", "lsuv"}
    assert all(why.startswith("worse than best") for _, why in out.dropped.values())


def test_beating_the_default_is_not_enough_to_win():
    """A candidate far above the default but level with a baseline is no winner: the race goes on
    to its budget with both alive (the verdict's 'beats the best baseline' condition)."""
    means = {"default": 0.30, "baseline": 0.50, "candidate": 0.50}
    out = race(list(means), "default", stream(means, 0.01), SEEDS, RULES)
    assert "default" in out.dropped
    assert out.stop == "budget" and set(out.survivors) == {"baseline", "candidate"}
    assert out.seeds == RULES.max_seeds


def test_a_known_equivalence_stops_early():
    means = {"default": 0.50, "a": 0.50, "b": 0.50}
    out = race(list(means), "default", stream(means, 0.0005, shared=0.02), SEEDS, RULES)
    assert out.stop == "equivalent" and out.seeds == 3 and set(out.survivors) == set(means)


def test_known_noise_runs_to_the_budget_and_asks_seed_by_seed():
    means = {"default": 0.45, "a": 0.45, "b": 0.45}
    full = stream(means, 0.03)
    partial = {m: {s: v for s, v in scores.items() if s in SEEDS[:4]} for m, scores in full.items()}
    partial["b"].pop(SEEDS[3])
    out = race(list(means), "default", partial, SEEDS, RULES)
    if out.stop == "running":  # the 4th seed of every survivor, b's still missing
        assert out.wanted == (("b", SEEDS[3]),) or ("b", SEEDS[3]) in out.wanted
    done = race(list(means), "default", full, SEEDS, RULES)
    assert done.stop in ("budget", "equivalent")
    replayed = race(list(means), "default", full, SEEDS, RULES)  # a pure function of the records
    assert replayed == done


def test_a_failed_or_dead_seed_is_never_recommended_over_one_that_always_trains():
    means = {"default": 0.10, "steady": 0.40, "flaky": 0.60, "boom": 0.70}
    scores = stream(means, 0.01)
    scores["default"] = {s: 0.10 for s in SEEDS}  # stays at chance
    scores["flaky"][SEEDS[1]] = 0.10               # one dead seed, a higher mean
    scores["boom"][SEEDS[2]] = "diverged at epoch 2: train_loss nan"
    out = race(list(means), "default", scores, SEEDS, RULES)
    assert out.dropped["boom"][1].startswith(f"failed on seed {SEEDS[2]}: diverged")
    assert out.dropped["flaky"][1].startswith(f"stayed at chance on seed {SEEDS[1]}")
    assert out.dropped["default"][0] == 1
    assert out.stop == "winner" and out.survivors == ("steady",)


def test_a_claims_race_scores_failures_and_lets_the_paired_test_decide():
    """``untrained`` (claims): a recipe that diverges on every seed while its control barely
    trains is not dropped at the first look -- it scores as untrained (10 %) and the race
    goes on until the paired test finds it worse; the recommendation rules would have ended it
    at 3 seeds."""
    control = {s: 0.10 + d for s, d in zip(SEEDS, [0.03, 0.01, 0.12, 0.05, 0.06, 0.04, 0.08,
                                                 0.02, 0.07, 0.05, 0.06, 0.03])}
    scores = {"recipe": {s: "diverged at epoch 1: train_loss nan" for s in SEEDS}, "control": control}
    assert race(["recipe", "control"], None, scores, SEEDS, RULES).seeds == 3  # dropped: failed
    claims = replace(RULES, untrained=0.10)
    out = race(["recipe", "control"], None, scores, SEEDS, claims)
    assert out.stop == "winner" and out.survivors == ("control",) and out.seeds > 3
    look, why = out.dropped["recipe"]
    assert why.startswith("worse than control") and out.looks[look - 1].standings["recipe"].mean == 0.10
    # both at chance, one of them failing: nothing trains, said at the first look
    dead = {"recipe": scores["recipe"], "control": {s: 0.10 for s in SEEDS}}
    assert race(["recipe", "control"], None, dead, SEEDS, claims).stop == "nothing"


def test_nothing_trains():
    scores = {m: {s: 0.10 for s in SEEDS} for m in ("default", "a")}
    out = race(["default", "a"], "default", scores, SEEDS, RULES)
    assert out.stop == "nothing" and out.seeds == 3


def test_lower_bound_ranking_prefers_the_steady_leader():
    scores = {"steady": {s: 0.50 + 0.001 * i for i, s in enumerate(SEEDS)},
              "wild": {s: (0.70 if i % 3 else 0.32) for i, s in enumerate(SEEDS)}}
    by_mean = race(list(scores), None, scores, SEEDS, RULES)
    by_lcb = race(list(scores), None, scores, SEEDS, RaceRules(rank="lcb", chance=0.112))
    assert by_mean.looks[0].leader == "wild" and by_lcb.looks[0].leader == "steady"


def test_repeated_looks_keep_false_drops_of_the_best_rare():
    """Under the null (every recipe equal), a race that looks 8 times must still recommend a
    non-default recipe in at most 5 % of races (here 400 races; the benchmark runs 4,000)."""
    rules = RaceRules(min_seeds=3, max_seeds=10, min_effect=0.01, chance=0.112)
    names = ["default"] + [f"r{i}" for i in range(1, 12)]
    false = 0
    for k in range(400):
        out = race(names, "default", stream(dict.fromkeys(names, 0.45), 0.015, seed=k), SEEDS, rules)
        false += out.leader not in (None, "default") and (
            out.stop == "winner" or (out.stop == "budget" and "default" not in out.survivors))
    assert false / 400 <= 0.05


def test_rules_are_checked():
    with pytest.raises(ValueError):
        RaceRules(min_seeds=2)
    with pytest.raises(ValueError):
        RaceRules(rank="median")
    assert RaceRules(min_seeds=3, max_seeds=10).level == pytest.approx(0.05 / 8)
    assert estimate([0.5]).lo == 0.5 and isinstance(paired([1, 2, 3], [0, 1, 1]), Paired)


def test_an_interrupted_race_resumes_where_it_stopped():
    """run_race over a real (in-memory) Optuna study, its rounds 'trained' by writing records:
    cut off in its second round, the race asks again only for what is missing, and ends with
    the verdict the uninterrupted race reaches."""
    import optuna

    from initsearch.confirm import ConfirmJob, Entry, run_race, write_record
    from initsearch.recipe import Recipe, RoleInit

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    means = {"pytorch_default": 0.40, "he": 0.45, "xavier": 0.46}
    truth = stream(means, 0.01, seed=3)
    entries = [Entry(m, Recipe({} if m == "pytorch_default" else {"conv": RoleInit(m)}, m),
                     m, None) for m in means]

    def trainer(study, calls, stop_after=None):
        def train(jobs: list[ConfirmJob]) -> None:
            calls.append([(j.entry.name, j.seed) for j in jobs])
            for i, j in enumerate(jobs):
                if stop_after is not None and len(calls) == 2 and i == stop_after:
                    raise KeyboardInterrupt
                write_record(study, j, {"state": "COMPLETE", "confirm_acc": truth[j.entry.name][j.seed],
                                        "test_acc": 0.0, "error": None})
        return train

    whole = optuna.create_study()
    expected = run_race(whole, entries, SEEDS, RULES, trainer(whole, []))
    study, first = optuna.create_study(), []
    with pytest.raises(KeyboardInterrupt):
        run_race(study, entries, SEEDS, RULES, trainer(study, first, stop_after=1))
    assert len(first[0]) == 3 * len(entries)  # round 1: every entry's first 3 seeds at once
    again: list = []
    resumed = run_race(study, entries, SEEDS, RULES, trainer(study, again))
    assert again[0] == first[1][1:]  # only what the cut-off round had not recorded
    assert resumed == expected


def test_merging_a_studys_race_keeps_one_entry_per_baseline():
    """A study's trial spells a baseline with every role explicit; the bound space spells it
    bare: the same baseline, one entry, carrying the study's search score."""
    from initsearch.confirm import Entry, merge
    from initsearch.recipe import Recipe, RoleInit

    bare = Entry("he", Recipe({"conv": RoleInit("he")}, "he"), "he", None)
    spelled = Entry("he", Recipe({"conv": RoleInit("he"), "stem": RoleInit("default")}, "he"),
                    "he", 1, {}, 0.37)
    mine = Entry("he", Recipe({"conv": RoleInit("xavier")}, "he"), None, None, {}, 0.4)
    merged = merge([bare], [spelled, mine])
    assert [e.name for e in merged] == ["he", f"he-{mine.key[:6]}"]
    assert merged[0].search_val_acc == 0.37 and merged[0].key == bare.key


COSTLY = RaceRules(min_seeds=3, max_seeds=6, min_effect=0.01, chance=0.112, cost_ratio=4.0)


def test_a_costly_entry_that_does_not_lead_retires_and_is_not_called_worse():
    """Five equal recipes, one (``gradinit``) ten times as costly: it trains its first 3 seeds,
    then retires at look 1, reported as retired for cost; the others race on to the budget.
    Without the rule, or when it leads, it trains every seed."""
    means = {"default": 0.45, "a": 0.45, "b": 0.45, "gradinit": 0.45, "c": 0.45}
    full = stream(means, 0.03, seed=5)
    full["gradinit"] = {s: v - 0.002 for s, v in full["a"].items()}  # never the leader
    costs = {m: 20.0 for m in means} | {"gradinit": 200.0}
    out = race(list(means), "default", full, SEEDS, COSTLY, costs)
    look, why = out.dropped["gradinit"]
    assert look == 1 and why.startswith("retired for cost") and "10.0x" in why
    assert out.retired == ("gradinit",) and "gradinit" not in out.survivors
    assert all(("gradinit", s) not in out.wanted for s in SEEDS)
    plain = race(list(means), "default", full, SEEDS, replace(COSTLY, cost_ratio=0.0), costs)
    assert "gradinit" not in plain.dropped and out.retired == ("gradinit",)
    leads = dict(full, gradinit={s: v + 0.05 for s, v in full["a"].items()})
    assert "gradinit" not in race(list(means), "default", leads, SEEDS, COSTLY, costs).retired


def test_cost_never_ends_a_race_nor_retires_the_default():
    """Two entries besides the leader always stay: with three entries, of which two costly,
    only one retires; the default is never retired, however costly."""
    means = {"default": 0.45, "x": 0.45, "y": 0.45}
    full = stream(means, 0.03, seed=6)
    leader = race(list(means), "default", full, SEEDS, RULES).looks[0].leader
    costs = {m: 500.0 for m in means} | {leader: 1.0}
    out = race(list(means), "default", full, SEEDS, COSTLY, costs)
    assert len(out.retired) <= 1 and "default" not in out.retired
    assert out.stop != "winner" or not out.retired


def test_a_replayed_race_retires_the_same_entries_from_its_records():
    """The costs come from the records of the first seeds, so the verdict read back from a
    study (``judge``) retires who the race retired; records without seconds retire no one."""
    from initsearch.confirm import Entry, costs
    from initsearch.recipe import Recipe, RoleInit
    from initsearch.recommend import judge

    means = {"pytorch_default": 0.45, "he": 0.46, "xavier": 0.45, "gradinit": 0.44}
    full = stream(means, 0.03, seed=7)
    recorded = {m: {s: {"state": "COMPLETE", "score": v, "confirm_acc": v, "test_acc": v,
                        "seconds": 150.0 if m == "gradinit" else 15.0, "error": None}
                    for s, v in runs.items()} for m, runs in full.items()}
    entries = [Entry(m, Recipe({} if m == "pytorch_default" else {"conv": RoleInit("he")}, m),
                     m, None) for m in means]
    assert costs(recorded, SEEDS[:3]) == {m: (150.0 if m == "gradinit" else 15.0) for m in means}
    verdict = judge(entries, recorded, SEEDS, COSTLY)
    status = {r.name: r.status for r in verdict.rows}
    assert "retired for cost" in status["gradinit"] and "retired for cost" in verdict.text
    no_seconds = {m: {s: {k: v for k, v in r.items() if k != "seconds"} for s, r in runs.items()}
                  for m, runs in recorded.items()}
    assert "retired" not in judge(entries, no_seconds, SEEDS, COSTLY).text
