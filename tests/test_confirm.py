"""The confirmation stage and the verdict: statistics checked against known values, then real
searches (local backend, a deep MLP on real CIFAR-10) where the default does not train, where
nothing differs, and where everything diverges."""
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
    assert paired([0.5, 0.6], [0.5, 0.6]).p == 1.0  # identical: no difference, certainly
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) -> 0.03, 0.04, 0.04 (monotone)
    family = holm([paired(a, b).__class__(d.diff, p, p) for p in (0.04, 0.01, 0.02)])
    assert [round(c.p_holm, 6) for c in family] == [0.04, 0.03, 0.04]
    assert math.isclose(chance_level(10, 2000), 0.1 + 3 * math.sqrt(0.09 / 2000))
    with pytest.raises(ValueError):
        paired([0.5], [0.4])


def test_deep_mlp_verdict_beats_the_default_with_evidence(data_dir, home, tmp_path):
    """PyTorch's default does not train an 8-layer ReLU MLP; the confirmed verdict recommends
    a recipe whose 95% CI against it excludes 0, and the recipe file carries that evidence."""
    run = RunConfig(name="deep", backend="local", home=home)
    result = search("mlp", arch_options=DEEP, data_dir=data_dir, budget=6, profile=PROTOCOL,
                    run=run, confirm=ConfirmConfig(top=1, seeds=3))
    verdict = result.verdict
    assert verdict.seeds == [1, 2, 3] and verdict.recommended is not None
    chosen = next(r for r in verdict.rows if r.name == verdict.recommended.name)
    assert chosen.kind != "reference" and chosen.vs_reference.diff.lo > 0
    assert verdict.text.startswith(("recommend", "no candidate beats baseline"))
    assert "vs PyTorch default (95% CI [+" in verdict.text
    # the recipe file carries its evidence, and round-trips
    path = result.best.save(tmp_path / "best.yaml")
    loaded = Recipe.load(path)
    assert loaded == result.best and loaded.evidence["verdict"] == verdict.text
    ev = loaded.evidence
    assert ev["study"] == "deep" and ev["arch"] == "mlp" and ev["arch_options"] == DEEP
    assert ev["profile"] == "mlp_confirm" and len(ev["protocol_sha256"]) == 64
    assert ev["seeds"] == [1, 2, 3] and set(ev["confirmed"]) == {r.name for r in verdict.rows}
    lo, hi = ev["confirmed"][chosen.name]["val_acc"]["ci95"]
    assert lo <= ev["confirmed"][chosen.name]["val_acc"]["mean"] <= hi
    # every confirmation job is a child run tagged stage=confirm, with its seed
    client, children = _children(home, result, "initsearch-mlp")
    confirm = [c for c in children if c.data.tags["stage"] == "confirm"]
    assert len(confirm) == 3 * len(verdict.rows)
    assert sorted({c.data.tags["seed"] for c in confirm}) == ["1", "2", "3"]
    # resuming a confirmed study re-runs nothing and reaches the same verdict
    again = search("mlp", arch_options=DEEP, data_dir=data_dir, budget=6, profile=PROTOCOL,
                   run=RunConfig(name="deep", backend="local", home=home, resume=True),
                   confirm=ConfirmConfig(top=1, seeds=3))
    assert again.verdict.text == verdict.text
    assert len(_children(home, result, "initsearch-mlp")[1]) == len(children)
    # the report prints the verdict and writes the plots; the parent run holds them too
    out = tmp_path / "report"
    assert main(["report", "deep", "--home", str(home), "--out", str(out)]) == 0
    pngs = {"val_acc_curves.png", "optimization_history.png", "param_importances.png",
            "score_by_scheme.png"}
    assert {p.name for p in out.iterdir()} == pngs
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in out.iterdir())
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert logged == {f"plots/{p}" for p in pngs}


def test_nothing_differs_says_so(data_dir, home, tmp_path):
    """Candidates restricted to PyTorch's default (scales within 0.1% of 1): confirmed, and the
    verdict says that nothing beats the default."""
    space = tmp_path / "default_only.yaml"
    space.write_text("format: initsearch.space\nversion: 1\nroles:\n" + "".join(
        f"  {role}: {{init: [default], scale: [0.999, 1.001]}}\n"
        for role in ("stem", "linear", "classifier")))
    result = search("mlp", arch_options={"depth": 3, "width": 128}, data_dir=data_dir, budget=4,
                    profile=PROTOCOL, space=str(space),
                    run=RunConfig(name="same", backend="local", home=home),
                    confirm=ConfirmConfig(top=2, seeds=3))
    kinds = [r.kind for r in result.verdict.rows]
    assert kinds.count("candidate") == 2 and kinds.count("reference") == 1
    assert result.verdict.text.startswith("nothing beats PyTorch's default on this protocol")
    assert result.best.name == "pytorch_default"


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
                 "--data", str(data_dir), "--no-progress", "--confirm-seeds", "2",
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


def test_a_significant_baseline_is_recommended_over_a_higher_noisy_one():
    """The case seen on transformer_postln: the baseline with the best mean (noisy) does not beat
    the default, another one does, on every seed -- the verdict must not say nothing beats it."""
    from initsearch.confirm import REFERENCE, Entry
    from initsearch.recommend import judge

    accs = {REFERENCE: [0.250, 0.262, 0.256], "noisy": [0.330, 0.240, 0.300],
            "steady": [0.270, 0.285, 0.278]}
    entries = [Entry(name, Recipe({}, name), name, None) for name in accs]
    records = {name: {s: {"state": "COMPLETE", "val_acc": a, "test_acc": a} for s, a in
                      zip((1, 2, 3), values)} for name, values in accs.items()}
    verdict = judge(entries, records, [1, 2, 3], chance=0.128)
    assert verdict.recommended.name == "steady"
    assert verdict.text.startswith("no candidate beats baseline steady on 3 seeds: recommend steady")
    assert "noisy has a higher mean but no significant difference" in verdict.text
