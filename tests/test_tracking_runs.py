"""The runs a Tracker writes, on a real MLflow store (sqlite in a temporary folder, one for the
module: creating one costs seconds): parent and child runs, what each holds, a recipe file a
user downloads and applies, resuming, placeholders replayed from a spool, and the review link."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from initsearch.recipe import Recipe, RoleInit
from initsearch.tracking import PARENT_TAG, PLACEHOLDER, Tracker, review_hint, runs_url
from initsearch.tracking.runs import KEY_TAG
from initsearch.tracking.store import LOCAL_UI, is_server

RECIPE = Recipe({"stem": RoleInit("orthogonal", scale=0.5), "conv": RoleInit("he"),
                 "classifier": RoleInit("zero")}, "mine", layer_scales={"3": 1.5})
TRIAL_TAGS = {"arch": "tiny", "arch_options": "{}"}


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def tracker(uri, tmp_path, request) -> Tracker:
    """A Tracker on the module's store, in an experiment of the test's own."""
    return Tracker(uri, request.node.name, tmp_path / "artifacts")


def _runs(tracker: Tracker) -> list:
    return tracker.client.search_runs([tracker.experiment_id], run_view_type=ViewType.ALL)


def test_a_search_is_a_parent_run_with_a_child_run_per_trial(tracker):
    from matplotlib.figure import Figure

    client = tracker.client
    parent = tracker.start_search("s", {"budget": 2, "epochs": 2}, {"epochs": 2}, TRIAL_TAGS)
    trial = tracker.start_trial("trial-000", RECIPE, {"stem.init": "orthogonal", "stem.scale": 0.5123456},
                                RECIPE.plan(_model()), {"stage": "search", "trial": "0"})
    for epoch in (1, 2):
        tracker.log_epoch(trial, {"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.2 * epoch},
                          epoch)
    tracker.end_trial(trial, "FINISHED", {"state": "COMPLETE", "epochs": 2})
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    tracker.end_search({"wall_seconds": 3.5}, {"comparison.txt": "a | b\n"}, "FINISHED",
                       {"plots/curve.png": figure})
    assert tracker.pending == 0 and not parent.startswith(PLACEHOLDER)

    top = client.get_run(parent)
    assert top.info.status == "FINISHED" and top.info.run_name == "s"
    assert top.data.params == {"budget": "2", "epochs": "2"}
    assert top.data.tags["role"] == "search" and top.data.metrics == {"wall_seconds": 3.5}
    assert top.data.tags["mlflow.note.content"] == "initsearch study s: budget=2, epochs=2"
    assert {a.path for a in client.list_artifacts(parent)} == {"comparison.txt", "plots", "protocol.yaml"}
    assert [a.path for a in client.list_artifacts(parent, "plots")] == ["plots/curve.png"]

    child = client.get_run(trial)
    assert child.info.status == "FINISHED" and child.info.run_name == "trial-000"
    assert child.data.tags[PARENT_TAG] == parent and child.data.tags[KEY_TAG].startswith(PLACEHOLDER)
    assert {k: child.data.tags[k] for k in ("study", "arch", "stage", "trial", "state", "epochs")} == {
        "study": "s", "arch": "tiny", "stage": "search", "trial": "0", "state": "COMPLETE", "epochs": "2"}
    assert child.data.params == {"stem.init": "orthogonal", "stem.scale": "0.5123"}
    assert child.data.tags["recipe"] == RECIPE.summary()
    assert [(m.step, m.value) for m in client.get_metric_history(trial, "val_acc")] == [(1, 0.2), (2, 0.4)]
    assert "epoch" not in child.data.metrics
    assert {a.path for a in client.list_artifacts(trial)} == {"recipe.json", "layers.json"}


def test_a_recipe_downloaded_from_a_trial_run_loads_and_applies(tracker, tmp_path):
    """What a user finds in the UI is a recipe file: ``Recipe.load`` reads it as it is."""
    tracker.start_search("s", {}, {}, TRIAL_TAGS)
    plan = RECIPE.plan(_model())
    run = tracker.start_trial("trial-000", RECIPE, {}, plan, {"stage": "search"})

    path = MlflowClient(tracker.uri).download_artifacts(run, "recipe.json", str(tmp_path))
    recipe = Recipe.load(path)
    assert recipe == RECIPE
    model, expected = _model(), _model()
    assert recipe.apply(model, seed=0).plan == plan
    RECIPE.apply(expected, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  expected.state_dict().values()))
    stem = model[0].weight.flatten(1)  # orthogonal, gain sqrt(2) for ReLU, times 0.5
    assert torch.allclose(stem @ stem.T, 0.5 * torch.eye(8), atol=1e-5)
    assert not model[7].weight.any()  # the classifier: zero

    layers = MlflowClient(tracker.uri).download_artifacts(run, "layers.json", str(tmp_path))
    assert json.loads(open(layers).read()) == plan  # the per-layer table, beside the recipe


def test_a_resumed_search_reopens_its_parent_and_keeps_its_params(tracker, uri, request):
    parent = tracker.start_search("s", {"budget": 2}, {}, TRIAL_TAGS)
    tracker.end_search({}, {}, "KILLED")
    again = Tracker(uri, request.node.name)
    assert again.start_search("s", {"budget": 4}, {}, TRIAL_TAGS) == parent
    run = again.client.get_run(parent)
    assert run.info.status == "RUNNING" and run.data.params == {"budget": "2"}
    assert len(_runs(again)) == 1


def test_end_abandoned_ends_the_trials_a_killed_driver_left_running(tracker, uri, request):
    """A run cut off mid-trial ends KILLED; one whose trial the study had already told (the
    driver died before ending the run) ends as the study says."""
    parent = tracker.start_search("s", {}, {}, TRIAL_TAGS)
    left = tracker.start_trial("trial-000", RECIPE, {}, [], {"stage": "search"})
    done = tracker.start_trial("trial-001", RECIPE, {}, [], {"stage": "search"})
    told = tracker.start_trial("trial-002", RECIPE, {}, [], {"stage": "search"})
    tracker.end_trial(done, "FINISHED", {"state": "COMPLETE"})

    resumed = Tracker(uri, request.node.name)
    resumed.start_search("s", {}, {}, TRIAL_TAGS)
    assert resumed.end_abandoned("s", {told: "PRUNED", done: "COMPLETE"}) == 2
    runs = {r.info.run_id: r for r in _runs(resumed)}
    assert runs[left].info.status == "KILLED" and runs[left].data.tags["state"] == "INTERRUPTED"
    assert runs[told].info.status == "FINISHED" and runs[told].data.tags["state"] == "PRUNED"
    assert runs[done].info.status == "FINISHED" and runs[parent].info.status == "RUNNING"


def test_a_wrong_write_raises(tracker):
    tracker.start_search("s", {}, {}, TRIAL_TAGS)
    with pytest.raises(MlflowException):
        tracker.log_epoch("0" * 32, {"val_acc": 0.5}, 1)
    assert tracker.pending == 0


def test_placeholders_from_a_killed_drivers_spool_become_runs_once(uri, tmp_path, request):
    """Writes queued while the store was down (the outage declared through the policy, so no
    write reaches the store) are replayed by the next Tracker on the spool: the placeholder
    runs are created, later writes that name them land there, and a replay repeated after a
    kill before the spool was emptied creates nothing twice."""
    spool = tmp_path / "pending" / "s.jsonl"
    driver = Tracker(uri, request.node.name, spool=spool)
    parent = driver.start_search("s", {}, {}, TRIAL_TAGS)
    driver.outage.retry_seconds = 3600.0
    driver.outage.failed(ConnectionRefusedError(111, "Connection refused"), pending=0)
    trial = driver.start_trial("trial-000", RECIPE, {"conv": "he"}, [], {"stage": "search"})
    assert trial.startswith(PLACEHOLDER)
    driver.log_epoch(trial, {"val_acc": 0.5}, 1)
    assert driver.pending == 2
    left = spool.read_text()
    del driver

    for _ in range(2):  # the second time: killed after writing, before emptying the spool
        resumed = Tracker(uri, request.node.name, spool=spool)
        assert resumed.pending == 2 and resumed.replay_spool() == 0 and spool.read_text() == ""
        real = resumed.resolve(trial)
        assert real != trial
        spool.write_text(left)
    resumed.log_epoch(trial, {"val_acc": 0.6}, 2)  # the placeholder still names the run
    children = [r for r in _runs(resumed) if PARENT_TAG in r.data.tags]
    assert [r.info.run_id for r in children] == [real]
    assert children[0].data.tags[PARENT_TAG] == parent
    history = resumed.client.get_metric_history(real, "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.6)]


def test_the_review_link_of_a_local_store_is_the_local_ui(tracker):
    tracker.start_search("my study", {}, {}, TRIAL_TAGS)
    assert not is_server(tracker.uri)
    url = tracker.ui_url()
    assert url == runs_url(tracker.experiment_id, "my study", LOCAL_UI)
    assert url == (f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs"
                   "?workflowType=machine_learning&searchFilter=tags.study%20%3D%20%27my%20study%27")
    assert review_hint(tracker.uri, url, Path.cwd()).endswith(f"--tracking-uri {tracker.uri}, then {url}")
