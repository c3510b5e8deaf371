"""Faults, injected for real: killed drivers and Ray workers, a tracking server that goes away,
damaged journals, two drivers on one study, and a two-node Ray cluster with the study in
PostgreSQL and tracking on an MLflow server. Real processes, no mocks.

Each test checks what the issue promises: trials finished before the fault are kept and never
re-run, trials cut off are queued again, no MLflow run is left RUNNING, and an infrastructure
fault never counts as a recipe's failure."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from initsearch import ConfirmConfig, RunConfig
from initsearch.study import search

OFF = ConfirmConfig(seeds=0)
CLI = [sys.executable, "-m", "initsearch.cli", "run", "--profile", "smoke", "--no-progress",
       "--confirm-seeds", "0"]
pytestmark = pytest.mark.slow  # real drivers, servers and clusters: minutes


def _start(home: Path, data_dir: Path, *args: str, cwd: Path | None = None,
           env: dict | None = None) -> subprocess.Popen:
    """A driver in its own process group (so its Ray daemons can be cleaned up after a kill)."""
    return subprocess.Popen([*CLI, "--home", str(home), "--data", str(data_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def _journal(home: Path, name: str) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(home / "mlruns" / "optuna" / f"{name}.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def _settled(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials() if "epochs" in t.user_attrs and not t.user_attrs.get("infrastructure")]


def _wait_until(predicate, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # the study may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _row(*cells) -> None:
    """One row of BENCHMARKS.md's fault table (``pytest -s tests/test_faults.py | grep FAULT``)."""
    print("\nFAULT | " + " | ".join(map(str, cells)) + " |")


def _runs(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], "", max_results=1000)


def test_kill_9_of_the_driver_under_ray_then_resume(data_dir, home):
    """kill -9 of the driver mid-search (Ray backend), then --resume: every trial finished
    before the kill is still there and not re-run, the cut-off ones are queued again, the budget
    completes, and no MLflow run is left RUNNING."""
    proc = _start(home, data_dir, "--arch", "resnet_ds", "--budget", "8", "--study", "k9")

    def mid_search():
        trials = _journal(home, "k9").get_trials()
        running = [t for t in trials if t.state == TrialState.RUNNING and "run_id" in t.user_attrs]
        return len(_settled(_journal(home, "k9"))) >= 3 and running

    try:
        _wait_until(mid_search, what="3 finished trials and one in flight")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        _kill_group(proc)  # the orphaned Ray daemons of the killed driver
    before = {t.number: (t.state, t.value) for t in _settled(_journal(home, "k9"))}
    running = [t for t in _journal(home, "k9").get_trials() if t.state == TrialState.RUNNING]
    cut = [t.number for t in running]
    opened = sum("run_id" in t.user_attrs for t in running)  # a kill may fall before the run opens
    assert len(before) >= 3 and cut

    result = search("resnet_ds", data_dir=data_dir, budget=8, profile="smoke", confirm=OFF,
                    run=RunConfig(name="k9", resume=True, backend="ray", home=home))
    study = _journal(home, "k9")
    settled = _settled(study)
    assert len(settled) == 8 and len(result.table) == 8
    assert {t.number: (t.state, t.value) for t in settled if t.number in before} == before
    requeued = {t.user_attrs.get("requeued") for t in settled}
    assert set(cut) <= requeued  # each cut-off trial ran again, as a new trial
    params = [tuple(sorted(t.params.items())) for t in settled]
    assert len(set(params)) == len(params)  # nothing that finished ran twice
    client, runs = _runs(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}", "initsearch-resnet_ds")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) >= opened >= 1
    finished = [r for r in runs if r.data.tags.get("stage") == "search" and r.info.status == "FINISHED"]
    assert len(finished) == 8
    _row("kill -9 of the driver (Ray backend), then --resume", "resume finished the budget",
         len(before), 0, f"0 (cut off: {len(cut)}, queued again)")


FAULT_MODELS = '''
"""A model factory whose Ray worker dies once (kill -9 of itself) in the middle of a trial."""
import os
from pathlib import Path

import torch
from torch import nn

from initsearch.archs import build_model

EVALS = [0]


class DiesOnce(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.net = build_model("mlp", options={"depth": 3, "width": 64})

    def forward(self, x):
        mark = Path(os.environ["INITSEARCH_TEST_MARK"])
        if not self.training and "RAY_RAYLET_PID" in os.environ and not mark.exists():
            EVALS[0] += 1
            if EVALS[0] == 2:  # the second evaluation in this worker: epoch 1 is already reported
                mark.write_text(str(os.getpid()))
                os.kill(os.getpid(), 9)
        return self.net(x)


def dies_once(num_classes=10):
    return DiesOnce(num_classes)
'''


def test_a_killed_ray_worker_is_retried_not_failed(data_dir, home, tmp_path):
    """A Ray worker killed mid-trial: Tune restarts the trial, the driver keeps the epochs it
    already has, and the trial ends as its recipe earns (COMPLETE or PRUNED), never FAIL. The
    model comes from the user's own module, which reaches the workers through Ray's runtime
    environment."""
    (tmp_path / "faultmodels.py").write_text(FAULT_MODELS)
    mark = tmp_path / "killed"
    proc = _start(home, data_dir, "--model", "faultmodels:dies_once", "--budget", "4",
                  "--study", "worker", cwd=tmp_path, env={"INITSEARCH_TEST_MARK": str(mark)})
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, err[-2000:]
    assert mark.exists()  # a worker did die
    trials = _journal(home, "worker").get_trials()
    assert len(trials) == 4 and all(t.state != TrialState.FAIL for t in trials)
    _row("kill -9 of a Ray worker mid-trial", "nothing: Tune restarted the trial", "-", 0,
         "1 (the killed trial, from epoch 1; its logged epochs kept once)")
    client, runs = _runs(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}", "initsearch-dies_once")
    for run in runs:
        if run.data.tags.get("stage") != "search":
            continue
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, int(run.data.tags["epochs"]) + 1))  # no epoch twice


def test_initsearch_works_without_ray(data_dir, home, tmp_path):
    """`import initsearch`, Recipe.apply and a local-backend search on a machine without Ray
    (the GPU machine has none): Ray is imported only by the Ray backend."""
    script = f'''
import sys
class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray' (blocked by the test)")
sys.meta_path.insert(0, NoRay())
import initsearch
from initsearch.archs import build_model
model = build_model("resnet_ds", options={{"depth": 8, "width": 8}})
initsearch.BASELINES["lion_dg"].apply(model)
result = initsearch.search("mlp", data_dir={str(data_dir)!r}, budget=2, profile="smoke",
                           run=initsearch.RunConfig(backend="local", home={str(home)!r}),
                           confirm=initsearch.ConfirmConfig(seeds=0))
assert len(result.table) == 2
assert not any(m == "ray" or m.startswith("ray.") for m in sys.modules)
print("ok without ray")
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok without ray" in done.stdout, done.stderr[-2000:]


def test_a_second_driver_on_a_journal_study_is_refused(data_dir, home):
    """One study on a journal file has one driver: a second `--resume` while the first runs
    stops with one line naming the holder's PID and host, exit 2, and touches nothing; the
    first finishes as if alone."""
    first = _start(home, data_dir, "--backend", "local", "--arch", "resnet_ds", "--budget", "12",
                   "--study", "one")
    try:
        _wait_until(lambda: len(_settled(_journal(home, "one"))) >= 1, what="the first trial")
        journal = home / "mlruns" / "optuna" / "one.journal"
        size = journal.stat().st_size
        second = subprocess.run([*CLI, "--home", str(home), "--data", str(data_dir), "--backend",
                                 "local", "--arch", "resnet_ds", "--budget", "12", "--study", "one",
                                 "--resume"], capture_output=True, text=True, timeout=300)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(lines) == 1 and "Traceback" not in second.stderr
        assert f"pid {first.pid}" in lines[0] and os.uname().nodename in lines[0]
        assert journal.stat().st_size >= size  # only the first driver writes
        out, err = first.communicate(timeout=600)
    finally:
        _kill_group(first)
    assert first.returncode == 0, err[-2000:]
    assert first.poll() is not None and len(_settled(_journal(home, "one"))) == 12


def test_a_torn_and_a_corrupt_journal_are_repaired_on_resume(data_dir, home):
    """A journal cut mid-record (a killed write) and one with a garbage line: --resume backs the
    file up, cuts it back to the last complete record, says how many records it dropped, and
    completes the budget. A journal with nothing sensible left: one line, exit 2."""
    def run(*extra):
        return subprocess.run([*CLI, "--home", str(home), "--data", str(data_dir), "--backend",
                               "local", "--arch", "mlp", "--study", "torn", *extra],
                              capture_output=True, text=True, timeout=600)

    assert run("--budget", "3").returncode == 0
    journal = home / "mlruns" / "optuna" / "torn.journal"
    data = journal.read_bytes()
    journal.write_bytes(data[:-25])  # the last record torn
    done = run("--budget", "4", "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dropped 1 damaged record" in done.stderr
    assert list(journal.parent.glob("torn.journal.bak-*"))
    assert len(_settled(_journal(home, "torn"))) == 4
    rerun = sum("requeued" in t.user_attrs for t in _settled(_journal(home, "torn")))
    _row("journal's last record torn, then --resume", "dropped 1 damaged record(s) (backup at ...)",
         3, 0, rerun)

    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-3]) + b"{not json\n" + b"".join(lines[-3:]))
    done = run("--budget", "5", "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dropped 4 damaged record" in done.stderr  # the garbage line and the 3 after it
    assert len(_settled(_journal(home, "torn"))) == 5

    journal.write_bytes(b"garbage\n" + journal.read_bytes())
    done = run("--budget", "6", "--resume")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and "new --study" in done.stderr


def test_two_drivers_share_one_postgresql_study(data_dir, home, postgres):
    """Two drivers on one study in PostgreSQL (Optuna's way to scale out): every trial number
    unique, the budget met, none lost, neither driver touching the other's trials; the study
    raced once, by one driver, after both drivers' trials ended."""
    args = ["--backend", "local", "--arch", "mlp", "--budget", "10", "--study", "shared",
            "--storage", postgres, "--confirm-seeds", "3", "--confirm-max-seeds", "3",
            "--confirm-top", "1"]
    first = _start(home, data_dir, *args)
    try:
        def started():
            return "shared" in optuna.study.get_all_study_names(postgres)
        _wait_until(started, what="the study in PostgreSQL")
        second = _start(home / "second", data_dir, *args, "--resume")
        outs = [p.communicate(timeout=900) for p in (first, second)]
    finally:
        _kill_group(first)
    assert first.returncode == 0 and second.returncode == 0, [o[1][-1500:] for o in outs]
    # the driver done first waited for the other's trials; then one of them raced the study
    assert sum("runs on driver" in out for out, _ in outs) == 1, [o[0][-800:] for o in outs]
    assert sum("\nrace: " in out for out, _ in outs) == 1  # the race's table, from its driver
    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = study.get_trials()
    settled = _settled(study)
    assert len(settled) >= 10 and all(t.state != TrialState.RUNNING for t in trials)
    assert len({t.number for t in trials}) == len(trials)
    # a FAIL is a recipe's own (diverged, say), told by the driver that ran it: never a live
    # trial that the other driver took for a dead driver's (those lack "epochs")
    assert all("epochs" in t.user_attrs for t in trials if t.state == TrialState.FAIL)
    both = [MlflowClient(f"sqlite:///{h / 'mlruns' / 'mlflow.db'}") for h in (home, home / "second")]
    ran = [sum(r.data.tags.get("stage") == "search" for r in c.search_runs(
        [c.get_experiment_by_name("initsearch-mlp").experiment_id], "", max_results=1000))
           for c in both]
    assert all(n >= 1 for n in ran) and sum(ran) == len(settled)  # both drivers ran trials


def test_the_tracking_server_goes_down_mid_search(data_dir, home, mlflow_server):
    """A real `mlflow server` stopped mid-search and started again: the search goes on (one
    line says the server is unreachable, one that it is back), no trial fails for it, and every
    trial's run lands in the store with all its epochs, none left RUNNING."""
    proc = _start(home, data_dir, "--backend", "local", "--arch", "resnet_ds", "--budget", "8",
                  "--study", "outage", "--tracking-uri", mlflow_server.uri)
    try:
        _wait_until(lambda: len(_settled(_journal(home, "outage"))) >= 2, what="2 trials")
        mlflow_server.stop()
        _wait_until(lambda: len(_settled(_journal(home, "outage"))) >= 4, what="2 trials more")
        mlflow_server.start()
        out, err = proc.communicate(timeout=900)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, err[-2000:]
    assert "unreachable" in err and "reachable again" in err and "Traceback" not in err
    assert f"review: {mlflow_server.uri}/#/experiments/" in out  # the server's own UI
    _row("MLflow server stopped mid-search, restarted", " / ".join(
        line.split("(")[0].strip() for line in err.splitlines() if "reachable" in line), ">= 2", 0, 0)
    assert not [t for t in _journal(home, "outage").get_trials() if t.state == TrialState.FAIL]
    client, runs = _runs(mlflow_server.uri, "initsearch-resnet_ds")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trials = [r for r in runs if r.data.tags.get("stage") == "search"]
    assert len(trials) == 8 and all(r.info.status == "FINISHED" for r in trials)
    for run in trials:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(1, int(run.data.tags["epochs"]) + 1))


def test_a_search_on_a_two_node_ray_cluster(data_dir, home, postgres, mlflow_server):
    """A head and a second node (Ray's own cluster utilities, on this machine), the study in
    PostgreSQL, tracking on an MLflow server: trials land on both nodes, each tagged with its
    node; a trial running alone takes its node's CPUs (1), not the cluster's (2)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        proc = _start(home, data_dir, "--arch", "resnet_ds", "--budget", "6", "--study", "cluster",
                      "--ray-address", cluster.address, "--storage", postgres,
                      "--tracking-uri", mlflow_server.uri,
                      "--no-cache")  # the server holds other tests' runs: train, on the nodes
        try:
            out, err = proc.communicate(timeout=900)
        finally:
            _kill_group(proc)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="cluster", storage=postgres)
    assert len(_settled(study)) == 6
    _, runs = _runs(mlflow_server.uri, "initsearch-resnet_ds")
    nodes = {r.data.tags.get("node_id") for r in runs if r.data.tags.get("study") == "cluster"
             and r.data.tags.get("stage") == "search"}
    assert len(nodes) == 2 and None not in nodes


def test_resume_refuses_another_protocol_or_space(data_dir, home, tmp_path):
    """A study records the content of its protocol and bound space; --resume with a file of
    the same name but other content is refused with one line saying what differs, and nothing
    is written."""
    from initsearch import UsageError
    from initsearch.protocol import TRIALS_DIR
    from initsearch.space import SPACES_DIR

    search("mlp", data_dir=data_dir, budget=1, profile="smoke", confirm=OFF,
           run=RunConfig(name="same", backend="local", home=home))
    journal = home / "mlruns" / "optuna" / "same.journal"
    size = journal.stat().st_size
    (tmp_path / "smoke.yaml").write_text((TRIALS_DIR / "smoke.yaml").read_text()
                                         .replace("\nepochs: 3", "\nepochs: 2"))
    (tmp_path / "mlp.yaml").write_text((SPACES_DIR / "mlp.yaml").read_text()
                                       .replace("gradinit_fast, gradinit]", "gradinit_fast]"))
    resume = RunConfig(name="same", resume=True, backend="local", home=home)
    with pytest.raises(UsageError, match=r"another protocol content \(epochs"):
        search("mlp", data_dir=data_dir, budget=2, profile=str(tmp_path / "smoke.yaml"),
               confirm=OFF, run=resume)
    with pytest.raises(UsageError, match=r"another space content \(baselines, steps") as err:
        search("mlp", data_dir=data_dir, budget=2, profile="smoke", space=str(tmp_path / "mlp.yaml"),
               confirm=OFF, run=resume)
    assert "\n" not in str(err.value) and journal.stat().st_size == size


def test_out_of_memory_fails_the_trial_and_the_search_goes_on(data_dir, home):
    """A trial that runs out of memory (torch's own OutOfMemoryError, raised in the model's
    forward as the CUDA allocator raises it) is FAIL with reason `out of memory`; the search
    goes on and the other trials complete."""
    import torch
    from torch import nn

    from initsearch.archs import build_model

    built = []

    class Greedy(nn.Module):  # the third model built (the second trial's) runs out of memory
        def __init__(self):
            super().__init__()
            built.append(self)
            self.oom = len(built) == 3
            self.net = build_model("mlp", options={"depth": 2, "width": 32})

        def forward(self, x):
            if self.oom and self.training:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            return self.net(x)

    def greedy():
        return Greedy()

    result = search(model_fn=greedy, data_dir=data_dir, budget=3, profile="smoke", confirm=OFF,
                    run=RunConfig(name="oom", backend="local", home=home))
    states = sorted((row["state"], row["note"]) for row in result.table)
    assert [s for s, _ in states] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert states[-1][1].startswith("out of memory: CUDA out of memory")
