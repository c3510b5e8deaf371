"""The Tracker against a real ``mlflow server`` that goes down mid-search: no write raises or
hangs, one line says so, and every write lands exactly once when the server is back -- also
after the driver was killed with writes still pending (the spool).

No mocks: a real server process on loopback over a sqlite store, stopped with SIGTERM and
started again on the same port and store. A server start takes ~10-20 s on a slow machine
(with job execution switched off, ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``, which saves
more than half of it); the two tests share one server and start it three times in all."""
from __future__ import annotations

import socket
import time

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from initsearch.recipe import Recipe, RoleInit
from initsearch.tracking import PARENT_TAG, PLACEHOLDER, Tracker
from initsearch.tracking.store import is_server

RECIPE = Recipe({"stem": RoleInit("he"), "conv": RoleInit("orthogonal"), "classifier": RoleInit("zero")})
PLAN = [{"path": "stem.0", "role": "stem", "init": "he"}]
TRIAL_TAGS = {"arch": "tiny", "arch_options": "{}"}


def _metrics(epoch: int) -> dict[str, float]:
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "val_loss": 2.1 / epoch, "val_acc": 0.1 * epoch}


def _runs(uri: str, experiment: str) -> tuple[list, list]:
    """The experiment's parent runs and child runs, seen by a fresh client."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    return ([r for r in runs if r.data.tags.get("role") == "search"],
            [r for r in runs if PARENT_TAG in r.data.tags])


def _steps(uri: str, run_id: str, key: str = "val_acc") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


def _artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in MlflowClient(uri).list_artifacts(run_id, path)}


@pytest.mark.slow
def test_server_outage_mid_search_loses_nothing(mlflow_server, tmp_path, capfd):
    from matplotlib.figure import Figure

    spool = tmp_path / "home" / "mlruns" / "tracking-pending" / "s1.jsonl"
    tracker = Tracker(mlflow_server.uri, "outage", spool=spool)
    parent = tracker.start_search("s1", {"budget": 3, "epochs": 2}, {"epochs": 2}, TRIAL_TAGS)
    trial_tags = {"stage": "search", "baseline": ""}
    first = tracker.start_trial("trial-000", RECIPE, {"conv": "orthogonal", "scale": 0.5}, PLAN,
                                {**trial_tags, "trial": "0"})
    assert not first.startswith(PLACEHOLDER)
    assert is_server(tracker.uri)  # the review link is the server's own UI
    assert tracker.ui_url().startswith(
        f"{mlflow_server.uri}/#/experiments/{tracker.experiment_id}/runs?")
    tracker.log_epoch(first, _metrics(1), 1)
    with pytest.raises(Exception, match="RESOURCE_DOES_NOT_EXIST|not found"):  # a wrong write still raises
        tracker.log_epoch("0" * 32, _metrics(1), 1)

    mlflow_server.stop()
    seconds: dict[str, float] = {}

    def timed(name, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        seconds[name] = time.perf_counter() - t0
        return out

    second = timed("start_trial", tracker.start_trial, "trial-001", RECIPE, {"conv": "he"}, PLAN,
                   {**trial_tags, "trial": "1"})
    failed_at = time.monotonic()  # the tracker's pause runs from the end of its failed try
    assert second.startswith(PLACEHOLDER)  # the run is created when the server is back
    timed("log_epoch 1", tracker.log_epoch, first, _metrics(2), 2)
    timed("log_epoch 2", tracker.log_epoch, second, _metrics(1), 1)
    timed("log_epoch 3", tracker.log_epoch, second, _metrics(2), 2)
    timed("end_trial 1", tracker.end_trial, first, "FINISHED", {"state": "COMPLETE", "epochs": "2"})
    timed("end_trial 2", tracker.end_trial, second, "FAILED", {"state": "FAIL", "error": "diverged"})
    with capfd.disabled():  # shown with pytest -s
        print("\nwrite seconds while the server was down: "
              + ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()))
    assert max(seconds.values()) < 15, seconds  # no multi-minute HTTP retry hang
    assert tracker.pending == 8  # open, 3 epochs, 2 x (tags + terminate)
    assert len(spool.read_text().splitlines()) == 8

    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "unreachable" in line]
    assert len(warnings) == 1, err
    assert mlflow_server.uri in warnings[0] and "keeping" in warnings[0] and "pending" in warnings[0]

    restart = mlflow_server.start()
    with capfd.disabled():
        print(f"server restart took {restart:.1f} s")
    time.sleep(max(0.0, failed_at + tracker.outage.retry_seconds + 0.5 - time.monotonic()))
    third = tracker.start_trial("trial-002", RECIPE, {"conv": "he", "scale": 2.0}, PLAN,
                                {**trial_tags, "trial": "2"})  # the next write writes the queue first
    assert tracker.pending == 0 and spool.read_text() == ""
    assert not third.startswith(PLACEHOLDER)
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if "reachable again" in line] == [
        f"initsearch: tracking server {mlflow_server.uri} reachable again; wrote 8 pending writes"], err
    assert "unreachable" not in err
    tracker.log_epoch(third, _metrics(1), 1)
    tracker.end_trial(third, "FINISHED", {"state": "PRUNED"})
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    tracker.end_search({"wall_seconds": 12.5}, {"comparison.txt": "a | b\n"}, "FINISHED",
                       {"plots/curve.png": figure})
    assert tracker.pending == 0

    parents, children = _runs(mlflow_server.uri, "outage")
    assert [p.info.run_id for p in parents] == [parent]
    assert parents[0].info.status == "FINISHED" and parents[0].data.metrics["wall_seconds"] == 12.5
    assert _artifacts(mlflow_server.uri, parent) >= {"comparison.txt", "protocol.yaml", "plots"}
    assert _artifacts(mlflow_server.uri, parent, "plots") == {"plots/curve.png"}
    by_name = {c.info.run_name: c for c in children}
    assert sorted(by_name) == ["trial-000", "trial-001", "trial-002"] and len(children) == 3
    assert all(c.data.tags[PARENT_TAG] == parent for c in children)
    assert {c.info.run_name: c.info.status for c in children} == {
        "trial-000": "FINISHED", "trial-001": "FAILED", "trial-002": "FINISHED"}
    late = by_name["trial-001"]
    assert late.info.run_id == tracker.resolve(second)
    assert late.data.tags["state"] == "FAIL" and late.data.tags["error"] == "diverged"
    assert late.data.tags["trial"] == "1" and late.data.tags["study"] == "s1"
    assert late.data.params == {"conv": "he"} and "recipe" in late.data.tags
    assert {"recipe.json", "layers.json"} <= _artifacts(mlflow_server.uri, late.info.run_id)
    for name, steps in (("trial-000", [1, 2]), ("trial-001", [1, 2]), ("trial-002", [1])):
        for key in ("train_loss", "val_loss", "val_acc"):
            assert _steps(mlflow_server.uri, by_name[name].info.run_id, key) == steps, (name, key)
    history = MlflowClient(mlflow_server.uri).get_metric_history(late.info.run_id, "val_acc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.1), (2, 0.2)]
    assert not [r for r in parents + children if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_spool_survives_a_killed_driver(mlflow_server, tmp_path, capfd):
    spool = tmp_path / "home" / "mlruns" / "tracking-pending" / "s2.jsonl"
    settings = {"budget": 2, "epochs": 2}
    driver = Tracker(mlflow_server.uri, "killed", spool=spool)
    parent = driver.start_search("s2", settings, {"epochs": 2}, TRIAL_TAGS)
    first = driver.start_trial("trial-000", RECIPE, {"conv": "he"}, PLAN, {"trial": "0"})
    driver.log_epoch(first, _metrics(1), 1)

    mlflow_server.stop()
    driver.log_epoch(first, _metrics(2), 2)
    second = driver.start_trial("trial-001", RECIPE, {"conv": "orthogonal"}, PLAN, {"trial": "1"})
    driver.log_epoch(second, _metrics(1), 1)
    driver.end_trial(first, "FINISHED", {"state": "COMPLETE"})
    assert second.startswith(PLACEHOLDER) and driver.pending == 5
    del driver  # the driver is killed: nothing flushed, the spool is all that is left
    left = spool.read_text()
    assert len(left.splitlines()) == 5

    mlflow_server.start()
    capfd.readouterr()
    resumed = Tracker(mlflow_server.uri, "killed", spool=spool)
    assert resumed.pending == 5
    assert resumed.replay_spool() == 0 and spool.read_text() == ""
    assert "wrote 5 writes left pending by an earlier run" in capfd.readouterr().err
    # the resumed driver ends the trial the study holds as RUNNING, under the id it was given
    resumed.end_trial(second, "KILLED", {"state": "INTERRUPTED"})
    real_second = resumed.resolve(second)
    assert real_second != second

    # worst case: killed after everything was written but before the spool was emptied
    spool.write_text(left)
    again = Tracker(mlflow_server.uri, "killed", spool=spool)
    assert again.replay_spool() == 0 and spool.read_text() == ""
    assert again.start_search("s2", {**settings, "budget": 4}, {"epochs": 2}, TRIAL_TAGS) == parent
    again.end_search({}, {}, "FINISHED")

    parents, children = _runs(mlflow_server.uri, "killed")
    assert [p.info.run_id for p in parents] == [parent]  # reopened, not created again
    assert sorted(c.info.run_name for c in children) == ["trial-000", "trial-001"]  # once each
    by_name = {c.info.run_name: c for c in children}
    assert by_name["trial-001"].info.run_id == real_second
    assert {c.info.run_name: c.info.status for c in children} == {
        "trial-000": "FINISHED", "trial-001": "KILLED"}
    assert by_name["trial-001"].data.tags[PARENT_TAG] == parent
    assert by_name["trial-001"].data.tags["state"] == "INTERRUPTED"
    assert by_name["trial-001"].data.params == {"conv": "orthogonal"}
    for key in ("train_loss", "val_loss", "val_acc"):  # each epoch exactly once
        assert _steps(mlflow_server.uri, first, key) == [1, 2]
        assert _steps(mlflow_server.uri, real_second, key) == [1]
    assert parents[0].data.params["budget"] == "2"  # a reopened parent keeps its params
    assert not [r for r in parents + children if r.info.status == "RUNNING"]


def test_what_counts_as_an_outage(tmp_path, monkeypatch):
    """Real failures, sorted: the store out of reach is an outage (queued); a wrong write or a
    programming error is not (raised)."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from initsearch.tracking.outage import classify, reason

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(MlflowException) as refused:
        MlflowClient(f"http://127.0.0.1:{port}").get_run("0" * 32)
    assert classify(refused.value) == "down" and reason(refused.value) == "connection refused"

    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError) as locked:
            sqlite3.connect(db, timeout=0).execute("create table t (x)")
    finally:
        holder.execute("ROLLBACK")
    try:  # as MLflow's sqlalchemy store reports it
        raise MlflowException(str(locked.value), error_code=TEMPORARILY_UNAVAILABLE) from locked.value
    except MlflowException as exc:
        assert classify(exc) == "down" and reason(exc) == "database is locked"

    assert classify(MlflowException.invalid_parameter_value("bad param")) is None
    try:
        None + 1
    except TypeError as exc:
        assert classify(exc) is None
        try:  # MLflow's HTTP client wraps whatever its request raised
            raise MlflowException(f"API request failed with exception {exc}")
        except MlflowException as wrapped:
            assert classify(wrapped) is None
