"""Real searches on a small CIFAR-10 subset, through Ray Tune and through the local backend,
checked against what the Optuna journal and the MLflow store actually hold."""
from __future__ import annotations

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from initsearch.archs import build_model
from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.recipe import Recipe
from initsearch.schemes import InitData
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.study import search

EPOCHS = load_protocol("smoke").epochs
OFF = ConfirmConfig(seeds=0)  # tests of the search alone (test_confirm.py tests the stage)
pytestmark = pytest.mark.slow  # whole searches: the fast lane tests their parts alone


def _run(home, name, backend="local", resume=False) -> RunConfig:
    return RunConfig(name=name, resume=resume, backend=backend, home=home)


def _study(home, name):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(home / "mlruns" / "optuna" / f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _check_store(home, result, n_trials, n_confirm=0, confirm_epochs=EPOCHS):
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("initsearch-resnet_ds")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["budget"] == str(n_trials)
    assert parent.data.params["space"] == "resnet_ds"  # the arch's own space, not the generic one
    assert "compute_seconds" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"comparison.txt", "trials.csv", "best_recipe.yaml", "verdict.txt"} <= artifacts
    children = client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == n_trials + n_confirm
    assert sum(c.data.tags["stage"] == "confirm" for c in children) == n_confirm
    for child in children:
        if child.data.tags["stage"] == "confirm":  # its own length, never pruned
            assert child.data.tags["state"] == "COMPLETE"
            assert int(child.data.tags["epochs"]) == confirm_epochs
            continue
        assert "stem.init" in child.data.params
        assert {"recipe.json", "layers.json"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
        history = client.get_metric_history(child.info.run_id, "val_acc")
        epochs = int(child.data.tags["epochs"])
        assert [m.step for m in history] == list(range(1, epochs + 1))  # one point per epoch
        for key in ("train_loss", "val_loss"):
            assert len(client.get_metric_history(child.info.run_id, key)) == epochs
        assert child.data.tags["state"] in ("COMPLETE", "PRUNED")
        assert (epochs == EPOCHS) == (child.data.tags["state"] == "COMPLETE")
    return children


def _check_study(home, result, n_trials):
    study = _study(home, result.study_name)
    trials = study.get_trials()
    assert len(trials) == n_trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned, "the smoke protocol's successive halving should prune some trials"
    for t in pruned:  # recorded as PRUNED (Optuna keeps its last intermediate value), stopped early
        assert len(t.intermediate_values) < EPOCHS
    for t in complete:
        assert len(t.intermediate_values) == EPOCHS and t.value == t.intermediate_values[EPOCHS]
    baselines = {t.user_attrs.get("baseline") for t in complete}
    assert {"pytorch_default", "he", "lion_dg"} <= baselines  # never pruned
    assert [t.user_attrs.get("baseline") for t in trials[:3]] == ["pytorch_default", "he", "lion_dg"]
    assert {"lsuv", "lsuv_lion_dg", "gradinit", "emergence", "zerO", "risotto"} <= baselines
    return study


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_real_search(backend, data_dir, home, tmp_path, cifar_batch):
    """A real search, raced through the same backend under Ray (1 candidate, PyTorch's default
    and every baseline, from 3 fresh seeds) and unconfirmed under the local backend."""
    n = 12  # the 9 baselines that apply to resnet_ds with BN, then 3 sampled trials
    # the race at 1 epoch and 3 seeds: the path through Ray is the point, not the verdict
    confirm = ConfirmConfig(top=1, seeds=3, max_seeds=3, epochs=1) if backend == "ray" else OFF
    result = search("resnet_ds", data_dir=data_dir, budget=n, profile="smoke", seed=1,
                    run=_run(home, f"t-{backend}", backend), confirm=confirm)
    jobs = sum(len(r.runs) for r in result.verdict.rows)
    _check_store(home, result, n, n_confirm=jobs, confirm_epochs=1)
    study = _check_study(home, result, n)
    assert {r["trial"] for r in result.table} == {t.number for t in study.trials}
    if backend == "local":  # unconfirmed: the search's best, and the verdict says so
        best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        assert result.best.meta["trial"] == best.number and "NOT confirmed" in result.verdict.text
    else:  # raced from seeds 2, 3, 4 (the search trained with seed 1), every job recorded
        assert result.verdict.seeds[:3] == [2, 3, 4] and len(result.verdict.rows) == 10
        assert {r.kind for r in result.verdict.rows} == {"candidate", "reference", "baseline"}
        assert all(sorted(r.runs)[:3] == [2, 3, 4] for r in result.verdict.rows)
        if result.best is None:  # undecided on 512 images: nothing to apply, but said so
            assert result.verdict.kind in ("undecided", "nothing")
            return
        assert result.best.evidence["verdict"] == result.verdict.text

    # the recommended recipe round-trips through its file and applies identically
    path = result.best.save(tmp_path / "best.yaml")
    a, b = build_model("resnet_ds", options={"depth": 8}), build_model("resnet_ds", options={"depth": 8})
    Recipe.load(path).apply(a, data=InitData(*cifar_batch), seed=3)  # LSUV/GradInit need data
    result.best.apply(b, data=InitData(*cifar_batch), seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_continues_the_study(data_dir, home):
    first = search("resnet_ds", data_dir=data_dir, budget=4, profile="smoke", run=_run(home, "r"),
                   confirm=OFF)
    assert len(first.table) == 4
    again = search("resnet_ds", data_dir=data_dir, budget=6, profile="smoke", confirm=OFF,
                   run=_run(home, "r", "ray", resume=True))  # a study may change backend on resume
    assert again.parent_run_id == first.parent_run_id  # one parent run per search
    trials = _study(home, "r").trials
    assert [t.number for t in trials] == list(range(6))
    # the larger budget runs the baselines the first one had no room for
    assert [t.user_attrs["baseline"] for t in trials] == ["pytorch_default", "he", "lion_dg", "lsuv",
                                                          "lsuv_lion_dg", "gradinit"]
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("initsearch-resnet_ds")
    assert len(client.search_runs([exp.experiment_id],
                                  f"tags.mlflow.parentRunId = '{first.parent_run_id}'")) == 6
    done = search("resnet_ds", data_dir=data_dir, budget=6, profile="smoke", confirm=OFF,
                  run=_run(home, "r", "ray", resume=True))  # budget already reached: runs nothing
    assert len(done.table) == 6 and done.best == again.best


class _Broken(torch.nn.Module):
    """Builds and evaluates fine (so validation and the baseline checks pass) but raises in
    training: every trial must FAIL. (A model that cannot even evaluate a batch is refused in
    one line when the space binds it: tests/test_space.py.)"""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3)
        self.classifier = torch.nn.Linear(4, 10)

    def forward(self, x):
        if self.training:
            raise ValueError("boom in forward")
        return self.classifier(self.stem(x).mean((2, 3)))


@pytest.mark.parametrize("backend", ["ray", "local"])
def test_failing_trials_are_recorded_as_fail(backend, data_dir, home):
    result = search(model_fn=_Broken, data_dir=data_dir, budget=2, profile="smoke",
                    run=_run(home, "broken", backend), confirm=OFF)
    ran = [t for t in _study(home, "broken").trials if t.state != TrialState.WAITING]
    assert [t.state for t in ran] == [TrialState.FAIL] * 2  # only as many baselines as budget
    assert all("boom in forward" in t.user_attrs["error"] for t in ran)
    assert result.best is None
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    children = client.search_runs([client.get_experiment_by_name("initsearch-_Broken").experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.info.status for c in children) == ["FAILED", "FAILED"]


def test_interrupt_then_resume_loses_nothing(data_dir, home):
    """Ctrl-C mid-search: exit 130, finished trials kept, the trial in flight re-queued;
    --resume then completes the budget with new draws (no replay of the first session's)."""
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "initsearch.cli", "run", "--profile", "smoke", "--budget", "9",
           "--backend", "local", "--study", "intr", "--home", str(home), "--data", str(data_dir),
           "--no-progress", "--confirm-seeds", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = home / "mlruns" / "optuna" / "intr.journal"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if journal.exists():
            try:
                trials = _study(home, "intr").trials
            except KeyError:  # the journal is opened before the study is created in it
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING]  # baselines wait queued
            if sum("epochs" in t.user_attrs for t in trials) >= 4 and running and all(
                    "run_id" in t.user_attrs for t in running):  # its MLflow run is open
                break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "--resume" in err and "Traceback" not in err
    before = {t.number: (t.state, t.value) for t in _study(home, "intr").trials if "epochs" in t.user_attrs}
    assert len(before) >= 4

    result = search("resnet_ds", data_dir=data_dir, budget=9, profile="smoke",
                    run=_run(home, "intr", resume=True), confirm=OFF)
    trials = _study(home, "intr").trials
    settled = [t for t in trials if "epochs" in t.user_attrs]
    assert len(settled) == 9 and len(result.table) == 9
    assert {t.number: (t.state, t.value) for t in settled if t.number in before} == before
    params = [tuple(sorted(t.params.items())) for t in settled]
    assert len(set(params)) == len(params)  # no recipe evaluated twice
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    children = client.search_runs([client.get_experiment_by_name("initsearch-resnet_ds").experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.info.status for c in children).count("KILLED") >= 1  # the cut-off trial
    assert sum(c.info.status == "FINISHED" for c in children) == 9


def test_arch_options_are_recorded_and_bind_the_space(data_dir, home):
    search("resnet_ds", data_dir=data_dir, budget=1, profile="smoke", arch_options={"norm": "none"},
           run=_run(home, "nf"), confirm=OFF)
    study = _study(home, "nf")
    assert study.user_attrs["arch_options"]["norm"] == "none"
    params = study.trials[0].params  # the space bound to the normalization-free model
    assert "norm.init" not in params and "branch_scale.init" in params
    with pytest.raises(UsageError, match="arch_options"):  # resume refuses other options
        search("resnet_ds", data_dir=data_dir, budget=2, profile="smoke", confirm=OFF,
               run=_run(home, "nf", resume=True))


def test_real_search_on_vit_through_ray(data_dir, home):
    """A transformer end to end: the vit space bound to the model (T-Fixup dropped: the model
    has LayerNorm), its transformer baselines first, AdamW from the protocol, through Ray."""
    result = search("vit", data_dir=data_dir, budget=9, profile="smoke",
                    run=_run(home, "vit", "ray"), confirm=OFF)
    study = _study(home, "vit")
    baselines = [t.user_attrs.get("baseline") for t in study.trials]
    assert baselines[:7] == ["pytorch_default", "he", "lsuv", "gradinit", "emergence", "gpt2",
                             "mimetic"]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    sampled = [t for t in study.trials if not t.user_attrs.get("baseline")]
    assert len(sampled) == 2 and all("steps.static" in t.params for t in sampled)
    assert all("tfixup" not in str(t.params.get("steps.static")) for t in study.trials)
    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("initsearch-vit")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 9 and {c.data.tags["state"] for c in children} <= {"COMPLETE", "PRUNED"}
    gradinit = next(c for c in children if c.data.tags["baseline"] == "gradinit")
    assert gradinit.data.metrics["init_passes"] > 0  # GradInit ran (its Adam setting) in the trial
    import yaml
    from mlflow.artifacts import download_artifacts

    protocol = yaml.safe_load(open(download_artifacts(run_id=result.parent_run_id,
                                                      artifact_path="protocol.yaml",
                                                      tracking_uri=client.tracking_uri)))
    assert protocol["optimizer"]["name"] == "adamw"
