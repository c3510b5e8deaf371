"""The confirmation stage and the verdict: statistics checked against known values, verdicts
on synthetic records (no training), a confirmation job that fails, then real searches (local
backend, a deep MLP on real CIFAR-10) where the default does not train and where everything
diverges."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from scipy import stats as scipy_stats

from initsearch.cli import main
from initsearch.recipe import Recipe
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.stats import chance_level, estimate, holm, paired
from initsearch.study import search

PROTOCOL = str(Path(__file__).parent / "protocols" / "mlp_confirm.yaml")
DEEP = {"depth": 8, "width": 128}  # PyTorch's default init does not train it in 4 epochs


def _study(home, name):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(home / "mlruns" / "optuna" / f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _children(home, result, experiment):
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id],
                                      f"tags.mlflow.parentRunId = '{result.parent_run_id}'")


def test_statistics_against_known_values():
    a, b = [0.52, 0.55, 0.50, 0.58], [0.50, 0.51, 0.49, 0.53]
    e = estimate(a)
    half = scipy_stats.t.ppf(0.975, 3) * scipy_stats.tstd(a) / 2
    assert math.isclose(e.mean, 0.5375) and math.isclose(e.hi - e.mean, half)
    d = paired(a, b)
    assert math.isclose(d.p, scipy_stats.ttest_rel(a, b).pvalue)
    assert d.diff.lo > 0 and d.significant  # +3 pp on every seed
    assert paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]).p == 1.0  # identical: no difference, certainly
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) -> 0.03, 0.04, 0.04 (monotone)
    family = holm([paired(a, b).__class__(d.diff, p, p) for p in (0.04, 0.01, 0.02)])
    assert [round(c.p_adj, 6) for c in family] == [0.04, 0.03, 0.04]
    assert math.isclose(chance_level(10, 2000), 0.1 + 3 * math.sqrt(0.09 / 2000))
    with pytest.raises(ValueError):
        paired([0.5], [0.4])


@pytest.mark.slow
def test_deep_mlp_verdict_beats_the_default_with_evidence(data_dir, home, tmp_path):
    """PyTorch's default does not train an 8-layer ReLU MLP; the confirmed verdict recommends
    a recipe whose 95% CI against it excludes 0, and the recipe file carries that evidence."""
    run = RunConfig(name="deep", backend="local", home=home)
    result = search("mlp", arch_options=DEEP, data_dir=data_dir, budget=6, profile=PROTOCOL,
                    run=run, confirm=ConfirmConfig(top=1, seeds=3))
    verdict = result.verdict
    assert verdict.seeds[:3] == [1, 2, 3] and verdict.recommended is not None
    assert verdict.kind == "recommend"
    chosen = next(r for r in verdict.rows if r.name == verdict.recommended.name)
    assert chosen.kind != "reference" and chosen.vs_reference.diff.lo > 0
    assert verdict.text.startswith(f"recommend {chosen.name}: +")
    assert "vs PyTorch's default (95% CI [+" in verdict.text
    # every baseline that applies raced, each on at least 3 seeds, scored on the confirm split
    from initsearch.space import load_space
    from initsearch.archs import build_model
    applicable = set(load_space("mlp").bind(build_model("mlp", options=DEEP)).baselines())
    assert applicable <= {r.name for r in verdict.rows}
    assert all(len(r.runs) >= 3 for r in verdict.rows)
    assert all(0 <= run["confirm_acc"] <= 1 for r in verdict.rows for run in r.runs.values()
               if run["state"] == "COMPLETE")
    # the recipe file carries its evidence, and round-trips
    path = result.best.save(tmp_path / "best.yaml")
    loaded = Recipe.load(path)
    assert loaded == result.best and loaded.evidence["verdict"] == verdict.text
    ev = loaded.evidence
    assert ev["study"] == "deep" and ev["arch"] == "mlp" and ev["arch_options"] == DEEP
    assert ev["profile"] == "mlp_confirm" and len(ev["protocol_sha256"]) == 64
    assert ev["seeds"] == verdict.seeds and set(ev["confirmed"]) == {r.name for r in verdict.rows}
    assert ev["kind"] == "recommend" and ev["race"]["min_seeds"] == 3
    lo, hi = ev["confirmed"][chosen.name]["score"]["ci95"]
    assert lo <= ev["confirmed"][chosen.name]["score"]["mean"] <= hi
    # every confirmation job is a child run tagged stage=confirm, with its seed
    client, children = _children(home, result, "initsearch-mlp")
    confirm = [c for c in children if c.data.tags["stage"] == "confirm"]
    assert len(confirm) == sum(len(r.runs) for r in verdict.rows)
    assert {"1", "2", "3"} <= {c.data.tags["seed"] for c in confirm}
    # resuming a confirmed study re-runs nothing and reaches the same verdict
    again = search("mlp", arch_options=DEEP, data_dir=data_dir, budget=6, profile=PROTOCOL,
                   run=RunConfig(name="deep", backend="local", home=home, resume=True),
                   confirm=ConfirmConfig(top=1, seeds=3))
    assert again.verdict.text == verdict.text
    assert len(_children(home, result, "initsearch-mlp")[1]) == len(children)
    # the report prints the verdict and writes the plots; the parent run holds them too
    out = tmp_path / "report"
    assert main(["report", "deep", "--home", str(home), "--out", str(out)]) == 0
    pngs = {"race.png", "val_acc_curves.png", "optimization_history.png", "param_importances.png",
            "score_by_scheme.png"}
    assert {p.name for p in out.iterdir()} == pngs
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in out.iterdir())
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert logged == {f"plots/{p}" for p in pngs}


@pytest.mark.slow
def test_a_diverging_protocol_fails_every_trial_and_recommends_nothing(data_dir, home, tmp_path,
                                                                         capsys):
    """A learning rate of 10,000: every trial stops at the epoch its loss became non-finite and is
    recorded as failed with the reason; the run exits 0 with a verdict that says so and writes
    no recipe file."""
    protocol = tmp_path / "explode.yaml"
    protocol.write_text(Path(PROTOCOL).read_text().replace("lr: 0.02", "lr: 10000.0"))
    out = tmp_path / "best.yaml"
    code = main(["run", "--arch", "mlp", "--arch-opt", "depth=3", "--profile", str(protocol),
                 "--budget", "3", "--backend", "local", "--home", str(home), "--study", "boom",
                 "--data", str(data_dir), "--no-progress", "--confirm-seeds", "3",
                 "--out", str(out)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and not out.exists()
    assert printed[-1].startswith("verdict: nothing trained above chance")
    trials = _study(home, "boom").trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    for t in trials:  # stopped at once: at the epoch the loss blew up
        assert t.user_attrs["error"].startswith(f"diverged at epoch {t.user_attrs['epochs']}: ")
        assert t.user_attrs["epochs"] < 4
    assert any("diverged at epoch" in line and "FAIL" in line for line in printed)
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("initsearch-mlp")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'search'")
    assert len(runs) == 3 and all(r.data.tags["error"].startswith("diverged at epoch") for r in runs)


def _verdict(accs: dict[str, list[float]], rules=None, failed: dict | None = None):
    """The verdict :func:`judge` gives on synthetic records: ``accs[name][i]`` is the confirm
    accuracy on seed ``i + 1``; ``failed``: ``{name: seeds}`` of the jobs that diverged."""
    from initsearch.confirm import REFERENCE, Entry
    from initsearch.race import RaceRules
    from initsearch.recommend import judge

    rules = rules or RaceRules(min_seeds=3, max_seeds=6, min_effect=0.01, chance=0.112)
    kinds = {REFERENCE: REFERENCE}
    entries = [Entry(n, Recipe({}, n, meta={"n": n}) if n != REFERENCE else Recipe({}, n),
                     kinds.get(n, None if n.startswith("trial") else n), None) for n in accs]
    records = {n: {s: ({"state": "FAIL", "error": "diverged at epoch 2: train_loss nan",
                        "confirm_acc": None, "test_acc": None}
                       if s in (failed or {}).get(n, ()) else
                       {"state": "COMPLETE", "confirm_acc": a, "test_acc": a - 0.01, "error": None})
                   for s, a in zip(range(1, 7), v)} for n, v in accs.items()}
    return judge(entries, records, list(range(1, 7)), rules)


def test_a_clear_winner_is_recommended_against_the_default_and_the_best_baseline():
    v = _verdict({"pytorch_default": [0.30, 0.31, 0.29, 0.30, 0.32, 0.30],
                  "he": [0.40, 0.41, 0.42, 0.40, 0.41, 0.43],
                  "trial-007": [0.50, 0.52, 0.51, 0.50, 0.53, 0.51]})
    assert v.kind == "recommend" and v.recommended.name == "trial-007" and v.best_baseline == "he"
    assert v.text.startswith("recommend trial-007: +")
    assert "vs PyTorch's default (95% CI [+" in v.text and "vs best baseline he (95% CI [+" in v.text


def test_beating_the_default_without_beating_the_best_baseline_is_not_a_clean_win():
    """The candidate beats the default on every seed but is level with a baseline: the race runs
    to its budget, and the verdict says both remain and what cannot be ruled out."""
    v = _verdict({"pytorch_default": [0.30, 0.31, 0.29, 0.30, 0.32, 0.30],
                  "lsuv": [0.50, 0.53, 0.49, 0.52, 0.50, 0.52],
                  "trial-003": [0.51, 0.52, 0.50, 0.51, 0.51, 0.53]})
    assert v.outcome.stop == "budget" and set(v.outcome.survivors) == {"lsuv", "trial-003"}
    assert "remain" in v.text and "cannot be ruled out" in v.text and "more seeds" in v.text
    row = {r.name: r for r in v.rows}
    assert row["pytorch_default"].status.startswith("dropped at look ") and "worse than" in row["pytorch_default"].status


def test_equivalence_and_undecided_say_what_they_rule_out():
    flat = _verdict({"pytorch_default": [0.500, 0.510, 0.505, 0.502, 0.5, 0.5],
                     "he": [0.5005, 0.5095, 0.5052, 0.5018, 0.5, 0.5],
                     "trial-001": [0.4998, 0.5103, 0.5049, 0.5021, 0.5, 0.5]})
    assert flat.kind == "equivalent" and flat.recommended.name == "pytorch_default"
    assert flat.text.startswith("equivalent: no recipe beats PyTorch's default by more than 1.0 pp")
    noisy = _verdict({"pytorch_default": [0.40, 0.46, 0.43, 0.41, 0.47, 0.42],
                      "he": [0.45, 0.41, 0.44, 0.47, 0.40, 0.43]})
    assert noisy.kind == "undecided" and noisy.recommended is None
    assert noisy.text.startswith("undecided after 6 seeds: ")
    assert "cannot be ruled out (95% CIs against he span [" in noisy.text and "more seeds" in noisy.text


def test_a_default_that_does_not_train_gets_a_recommendation_not_silence():
    v = _verdict({"pytorch_default": [0.10, 0.10, 0.10, 0.10, 0.10, 0.10],
                  "gradinit": [0.12, 0.35, 0.10, 0.30, 0.33, 0.31],   # leaves seed 3 at chance
                  "lsuv": [0.20, 0.22, 0.21, 0.19, 0.20, 0.22]})
    assert v.kind == "recommend" and v.recommended.name == "lsuv"
    row = {r.name: r for r in v.rows}
    assert row["gradinit"].status.startswith("dropped at look 1: stayed at chance on seed 3")


def test_a_failed_seed_drops_the_recipe():
    v = _verdict({"pytorch_default": [0.30, 0.31, 0.29, 0.30, 0.32, 0.30],
                  "risotto": [0.60, 0.61, 0.62, 0.60, 0.61, 0.63],
                  "he": [0.40, 0.41, 0.42, 0.40, 0.41, 0.43]}, failed={"risotto": {2}})
    assert v.recommended.name == "he"
    assert {r.name: r for r in v.rows}["risotto"].status == (
        "dropped at look 1: failed on seed 2: diverged at epoch 2: train_loss nan")


def test_a_claims_race_compares_a_recipe_that_always_fails_as_untrained():
    """``untrained`` rules (claims): the failing recipe stays in the race, its paired
    differences count its failures as untrained networks, and an undecided verdict still says
    what it cannot rule out (it crashed on the missing comparison before)."""
    from initsearch.race import RaceRules

    rules = RaceRules(min_seeds=3, max_seeds=6, min_effect=0.01, chance=0.112, untrained=0.10)
    v = _verdict({"emergence": [0.0] * 6, "he": [0.13, 0.10, 0.25, 0.11, 0.10, 0.24]}, rules,
                 failed={"emergence": set(range(1, 7))})
    assert v.outcome.stop == "budget" and v.outcome.seeds == 6 and not v.outcome.dropped
    assert "cannot be ruled out" in v.text and "span [" in v.text


def test_a_failed_confirmation_job_is_recorded_as_failed(tmp_path):
    """A job that raised is a FAIL record with no score (never a complete one)."""
    from initsearch.confirm import REFERENCE, ConfirmDriver, ConfirmJob, Entry, records, scores
    from initsearch.protocol import load_protocol
    from initsearch.tracking import Tracker

    study = optuna.create_study(direction="maximize")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "t", tmp_path / "artifacts")
    tracker.start_search("s", {}, {}, {})
    p = load_protocol("smoke").for_confirmation()
    entry = Entry(REFERENCE, Recipe({}, REFERENCE), REFERENCE, None)
    ok, bad = ConfirmJob(entry, 1), ConfirmJob(entry, 2)
    driver = ConfirmDriver(study, [ok, bad], p, tracker, lambda r: [])
    for job, error in ((ok, None), (bad, "RuntimeError: boom")):
        config = driver.ask()
        for epoch in range(1, p.epochs + 1):
            last = {"confirm_acc": 0.4, "test_acc": 0.4} if epoch == p.epochs else {}
            driver.report(config.number, {"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0,
                                          "val_acc": 0.4, **last})
        driver.finish(config.number, error)
    got = records(study, [entry], [1, 2])[REFERENCE]
    assert got[1]["state"] == "COMPLETE" and got[1]["confirm_acc"] == 0.4
    assert got[2]["state"] == "FAIL" and got[2]["confirm_acc"] is None
    assert scores({REFERENCE: got})[REFERENCE] == {1: 0.4, 2: "RuntimeError: boom"}


@pytest.mark.slow
def test_confirm_races_recipe_files_and_a_finished_study_under_another_protocol(
        data_dir, home, tmp_path, capsys):
    """`initsearch confirm` races a recipe file against the default and every baseline at
    another size and length, and a finished study's race again; bad input is one line."""
    from initsearch.recipe import RoleInit

    mine = Recipe({"linear": RoleInit("xavier"), "classifier": RoleInit("xavier")}, "mine",
                  meta={"search_val_acc": 0.31})
    path = mine.save(tmp_path / "mine.yaml")
    common = ["--arch", "mlp", "--profile", "smoke", "--backend", "local", "--home", str(home),
              "--data", str(data_dir), "--no-progress"]
    code = main(["confirm", str(path), "--arch-opt", "depth=4", "--confirm-epochs", "2",
                 "--study", "c1", *common])
    out = capsys.readouterr().out
    assert code == 0 and "verdict: " in out and "race: 3..4 fresh seeds" in out
    study = _study(home, "c1")
    plan = study.user_attrs["confirm"]
    assert plan["epochs"] == 2 and "mine" in {e["name"] for e in plan["entries"]}
    assert study.user_attrs["arch_options"] == {"depth": 4, "width": 64}
    assert not [t for t in study.trials]  # no search: only the race
    # the same study's race, confirmed again with another length: scores carried for Kendall tau
    code = main(["confirm", "--from-study", "c1", "--confirm-epochs", "3", "--study", "c2", *common])
    assert code == 0
    entries = {e["name"]: e for e in _study(home, "c2").user_attrs["confirm"]["entries"]}
    assert entries["mine"]["search_val_acc"] == 0.31
    assert main(["report", "c2", "--home", str(home), "--out", str(tmp_path / "r")]) == 0
    assert "race.png" in {p.name for p in (tmp_path / "r").iterdir()}
    capsys.readouterr()
    assert main(["confirm", *common]) == 2
    assert capsys.readouterr().err.strip().startswith("initsearch: error: nothing to confirm")
    assert main(["confirm", "--from-study", "nope", *common]) == 2
    assert "no raced study 'nope'" in capsys.readouterr().err
