"""The engine by itself: the study driver's ask / report / finish contract (budget, pruning,
divergence, failures, infrastructure retries), the local backend driving it through real
training, and the Ray adapters' hooks -- each without a whole search. Real Optuna (in memory),
real MLflow (SQLite in a temporary folder), a real model."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from initsearch.archs import build_model
from initsearch.engine.driver import StudyDriver
from initsearch.engine.progress import Progress
from initsearch.protocol import load_protocol
from initsearch.record import Attr
from initsearch.space import load_space
from initsearch.tracking import Tracker

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Tracker:
    """One MLflow store for the module (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", "engine", root / "artifacts")


@pytest.fixture
def setup(tracker):
    """A smoke-sized MLP, its bound space, the smoke protocol, a search run and a fresh study."""
    protocol, options = load_protocol("smoke").for_arch("mlp")
    model_fn = lambda: build_model("mlp", options=options)  # noqa: E731
    space = load_space("mlp").bind(model_fn())
    tracker.start_search("s", {}, {}, {})
    study = optuna.create_study(direction="maximize", pruner=protocol.make_pruner())
    return SimpleNamespace(protocol=protocol, model_fn=model_fn, space=space, tracker=tracker,
                           study=study)


def _driver(s, budget: int, **kw) -> StudyDriver:
    return StudyDriver(s.study, s.space, s.protocol, s.tracker, lambda recipe: [], budget, **kw)


def _epochs(driver: StudyDriver, number: int, scores: list[float]) -> bool:
    """Report one epoch per score; True as soon as the driver says stop."""
    for epoch, acc in enumerate(scores, 1):
        if driver.report(number, {"epoch": epoch, "train_loss": 1.0, "val_loss": 1.0,
                                  "val_acc": acc}):
            return True
    return False


def test_baselines_come_first_and_the_budget_counts_every_settled_trial(setup):
    driver = _driver(setup, budget=3)
    driver.enqueue_baselines()
    assert driver.remaining == 3
    first = driver.ask()
    assert setup.study.trials[0].user_attrs[Attr.BASELINE]  # the first queued baseline
    assert driver.in_flight == 1 and driver.remaining == 2  # a running trial counts
    assert not _epochs(driver, first.number, [0.2, 0.3, 0.4])  # a baseline is never pruned
    driver.finish(first.number)
    t = setup.study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == 0.4 and t.user_attrs[Attr.EPOCHS] == 3
    assert driver.remaining == 2 and len(driver.settled_trials()) == 1


def test_a_diverged_trial_fails_with_its_reason_and_a_short_one_fails_as_stopped(setup):
    driver = _driver(setup, budget=4)
    config = driver.ask()
    assert driver.report(config.number, {"epoch": 1, "train_loss": float("nan"), "val_loss": 1.0,
                                         "val_acc": 0.1})  # stop it at once
    driver.finish(config.number)
    t = setup.study.trials[config.number]
    assert t.state == TrialState.FAIL and "train_loss" in t.user_attrs[Attr.ERROR]
    config = driver.ask()
    _epochs(driver, config.number, [0.3])  # the worker ended after one of three epochs
    driver.finish(config.number)
    assert setup.study.trials[config.number].user_attrs[Attr.ERROR] == "stopped after 1 epochs"


def test_the_pruner_stops_a_candidate_far_behind(setup):
    """Successive halving at epoch 1 (reduction 2): among finished peers at 0.5, a candidate
    at 0.1 is pruned and told as PRUNED, with the epochs it trained."""
    driver = _driver(setup, budget=6)
    for _ in range(3):
        config = driver.ask()
        _epochs(driver, config.number, [0.5, 0.5, 0.5])
        driver.finish(config.number)
    config = driver.ask()
    assert _epochs(driver, config.number, [0.1, 0.1, 0.1])
    driver.finish(config.number)
    t = setup.study.trials[config.number]
    assert t.state == TrialState.PRUNED and t.user_attrs[Attr.EPOCHS] == 1


def test_an_infrastructure_failure_is_queued_again_once_and_three_in_a_row_halt(setup):
    driver = _driver(setup, budget=10)
    for i in range(StudyDriver.MAX_INFRA_STREAK):
        config = driver.ask()
        driver.finish(config.number, "worker died", infrastructure=True)
        assert setup.study.trials[config.number].user_attrs[Attr.INFRA] is True
    # trial 0 was queued again as trial 1, whose own failure is not queued again (once), and
    # trial 2 as a trial waiting for the next driver
    assert setup.study.trials[1].user_attrs[Attr.REQUEUED] == 0
    waiting = setup.study.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs[Attr.REQUEUED] for t in waiting] == [2]
    assert driver.halted and driver.remaining == 0  # infra failures never spend the budget
    assert len(driver.settled_trials()) == 0


def test_the_local_backend_trains_a_driver_s_trials_for_real(setup, data_dir):
    from initsearch.data import load_splits
    from initsearch.engine.local import LocalBackend

    protocol = dataclasses.replace(setup.protocol, epochs=1)
    splits = load_splits("cifar10", data_dir, **protocol.split_sizes())
    bar = Progress(2, enabled=False)
    driver = StudyDriver(setup.study, setup.space, protocol, setup.tracker, lambda r: [], 2, bar)
    with LocalBackend(splits, setup.model_fn, setup.space.model_roles) as backend:
        assert backend.run(driver, "local") == 1
    assert driver.remaining == 0 and driver.compute_seconds > 0
    assert [t.state for t in setup.study.trials] == [TrialState.COMPLETE] * 2
    assert bar.counts[TrialState.COMPLETE] == 2


def test_the_ray_adapters_turn_tune_hooks_into_driver_calls(setup, tmp_path):
    """Tune's searcher and scheduler hooks, called as Tune calls them: a suggestion is the
    driver's next trial; a result the pruner rejects is Tune's STOP; a final worker error is
    an infrastructure failure with the error the scheduler kept."""
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search import Searcher

    from initsearch.engine.ray_backend import DriverPruningScheduler, DriverSearcher

    driver, errors = _driver(setup, budget=5), {}
    searcher = DriverSearcher(driver, tmp_path / "solo", errors)
    scheduler = DriverPruningScheduler(driver, errors)
    for i in range(3):
        config = searcher.suggest(f"t{i}")["trial"]
        tune_trial = SimpleNamespace(config={"trial": config}, error_file=None)
        for epoch in (1, 2, 3):
            decision = scheduler.on_trial_result(None, tune_trial, {
                "epoch": epoch, "train_loss": 1.0, "val_loss": 1.0, "val_acc": 0.5})
            assert decision == TrialScheduler.CONTINUE
        searcher.on_trial_complete(f"t{i}")
    config = searcher.suggest("t3")["trial"]
    tune_trial = SimpleNamespace(config={"trial": config}, error_file=None)
    assert scheduler.on_trial_result(None, tune_trial, {"epoch": 1, "train_loss": 1.0,
                                                        "val_loss": 1.0, "val_acc": 0.05}) == TrialScheduler.STOP
    searcher.on_trial_complete("t3")
    config = searcher.suggest("t4")["trial"]
    error = tmp_path / "error.txt"
    error.write_text("Traceback ...\nRayActorError: the actor died\n")
    scheduler.on_trial_error(None, SimpleNamespace(config={"trial": config}, error_file=str(error)))
    searcher.on_trial_complete("t4", error=True)
    t = setup.study.trials[config["number"]]
    assert t.user_attrs[Attr.INFRA] and "RayActorError: the actor died" in t.user_attrs[Attr.ERROR]
    assert searcher.suggest("t5") is not Searcher.FINISHED  # the failed trial's budget is back


def test_what_a_ray_worker_imports_loads_no_optuna_mlflow_or_plotting():
    """A worker unpickles the trial function from ``ray_backend`` and runs ``trial``: neither
    may pull in the driver's libraries (seconds and memory per worker, for nothing)."""
    import subprocess
    import sys

    code = ("import sys, initsearch.engine.ray_backend, initsearch.trial; "
            "print(' '.join(m for m in ('optuna', 'mlflow', 'matplotlib', 'scipy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""
