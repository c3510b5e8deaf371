"""Drivers: what a backend drives. Optuna samples, prunes and records; backends only execute.

A backend (Ray Tune or the local loop) knows nothing of studies or recipes: it calls a driver's
:meth:`~Driver.ask` for the next trial, :meth:`~Driver.report` after each epoch (True: stop it)
and :meth:`~Driver.finish` when the trial ends. Two drivers implement that interface:

* :class:`StudyDriver` -- the search. Ray's stock ``OptunaSearch`` runs the study with a
  ``NopPruner`` and tells a trial that a Tune scheduler stopped early as COMPLETE with its
  partial score, so TPE mistakes a 1-epoch score for a final one. Here the driver owns the study
  (ask/tell): the pruner sees every intermediate value, a pruned trial is told as PRUNED (TPE
  then uses its intermediate values as such), and only a trial that trained all epochs is
  COMPLETE. Baselines are enqueued as the first trials and never pruned, so they train on
  exactly the same protocol and seeds as the candidates and always reach the final table.
* :class:`initsearch.confirm.ConfirmDriver` -- the confirmation stage: a fixed list of (recipe,
  fresh seed) jobs, never pruned, each result recorded in the study.

Both stop a trial whose training or validation loss is no longer finite (:func:`diverged`): it
is recorded as failed with the reason, never scored. A trial that failed for an *infrastructure*
reason (its worker died, again and again) is recorded as such and never counts as the recipe's
failure: the search queues its parameters again (once), a baseline is queued again on
``--resume``, and a confirmation job stays pending.

Before a trial starts, a driver with a :class:`~initsearch.cache.ResultCache` looks its result
up (the same recipe trained before under the same model, protocol, data and code, in any
study): the trial then replays those epochs instead of training them, and its run is marked
``cached_from`` the run that trained it. A new study also replays the cached draws of an
earlier study run with the same settings (:meth:`StudyDriver.replay`), so the same command asks
the same candidates even though asynchronous TPE would not.

Several drivers may share one study in a database storage (Optuna's way to scale out): the
budget counts the study's trials, whoever runs them, and a driver only tells its own trials.
"""
from __future__ import annotations

import abc
import functools
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from initsearch.cache import KEY_TAG, SOURCE_TAG, ResultCache
from initsearch.engine.progress import Progress
from initsearch.protocol import Protocol
from initsearch.record import Attr, reason
from initsearch.storage import HEARTBEAT_INTERVAL
from initsearch.space import Space
from initsearch.tracking import Tracker
from initsearch.trial import GRADINIT_METRICS, METRICS, SECONDS, TrialConfig, diverged


# Optuna warns on every ask that heartbeats are meant for Study.optimize; _Heartbeat beats for us.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


@dataclass
class LiveTrial:
    """A trial in flight: its MLflow run, what it reported so far, and how it is to end."""

    run_id: str
    handle: Any  # the driver's own record of it: an Optuna trial, a confirmation job
    never_prune: bool = False
    last: dict[str, Any] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)  # select-split accuracy per epoch
    confirm_curve: list[float] = field(default_factory=list)  # confirm-split, where measured
    init: dict[str, float] = field(default_factory=dict)  # how far GradInit moved the init
    seconds: float = 0.0  # init + training + evaluation, where it was trained (cache: the source's)
    pruned: bool = False
    diverged: str | None = None
    error: str | None = None  # the recipe's error, as the trial reported it (Ray)
    node: str | None = None  # the Ray node the trial ran on
    cached_from: str | None = None  # the run whose epochs it replays (result cache)


def timed(method: Callable) -> Callable:
    """Add the call's duration to ``bookkeeping_seconds`` (Optuna + MLflow work per trial)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.bookkeeping_seconds += time.perf_counter() - t0
    return wrapper


class Driver(abc.ABC):
    """The three calls a backend makes (plus ``remaining``, ``in_flight`` and
    ``abandon_running`` on interrupt); epoch logging and divergence are shared here."""

    def __init__(self, protocol: Protocol, tracker: Tracker, plan_for: Callable,
                 progress: Progress | None, cache: ResultCache | None = None) -> None:
        self.protocol, self.tracker, self.cache = protocol, tracker, cache
        self.plan_for = plan_for  # Recipe -> per-layer plan, for the child run's layers.json
        self.progress = progress or Progress(0, enabled=False)
        self._live: dict[int, LiveTrial] = {}
        self.compute_seconds = 0.0  # time inside init, training and evaluation, all trials
        self.bookkeeping_seconds = 0.0  # time in ask/report/finish: Optuna and MLflow

    @property
    @abc.abstractmethod
    def remaining(self) -> int:
        """Trials still to ask for."""

    @property
    def in_flight(self) -> int:
        return len(self._live)

    @abc.abstractmethod
    def ask(self) -> TrialConfig:
        """The next trial to run (opens its MLflow run)."""

    def _open(self, number: int, handle: Any, run_name: str, recipe, params: dict, tags: dict,
              protocol: dict, never_prune: bool = False) -> TrialConfig:
        """Start trial ``number``: look its result up in the cache, open its MLflow run (tagged
        with its cache key, and the source run on a hit) and make its :class:`TrialConfig`."""
        hit = None
        if self.cache is not None:
            key = self.cache.key(recipe.to_dict(), protocol)
            hit = self.cache.lookup(key)
            tags = {**tags, KEY_TAG: key, **({SOURCE_TAG: hit[0]} if hit else {})}
        run_id = self.tracker.start_trial(run_name, recipe, params, self.plan_for(recipe), tags)
        self._live[number] = LiveTrial(run_id, handle, never_prune=never_prune,
                                       cached_from=hit[0] if hit else None)
        return TrialConfig(number, recipe.to_dict(), protocol, tuple(hit[1]) if hit else ())

    @abc.abstractmethod
    def _settle(self, number: int, live: LiveTrial, error: str | None,
                infrastructure: bool) -> TrialState:
        """Record how the trial ended; return its state."""

    @timed
    def report(self, number: int, metrics: dict[str, Any]) -> bool:
        """Record one epoch; True means stop this trial (pruned, or diverged)."""
        live = self._live.get(number)
        if live is None:  # a result after the trial ended (a restarted worker's): stop it
            return True
        live.node = metrics.get("node_id") or live.node
        if metrics.get("error"):  # the trial reports its recipe's exception as its last result
            live.error = str(metrics["error"])
            return True
        cached = bool(metrics.get("cached"))
        metrics = {k: metrics[k] for k in METRICS if k in metrics}  # Ray adds its own keys
        epoch = int(metrics["epoch"])
        if epoch <= live.last.get("epoch", 0):
            return False  # a restarted worker re-sent an epoch the study already has
        live.last = dict(metrics)
        if epoch == 1:
            live.init = {k: metrics[k] for k in GRADINIT_METRICS if k in metrics}
        live.curve.append(float(metrics["val_acc"]))
        if "confirm_acc" in metrics:
            live.confirm_curve.append(float(metrics["confirm_acc"]))
        seconds = sum(float(metrics.get(k, 0.0)) for k in SECONDS)
        live.seconds += seconds
        if not cached:  # a replayed epoch's seconds were spent by the run that trained it
            self.compute_seconds += seconds
        self.tracker.log_epoch(live.run_id, metrics, epoch)
        live.diverged = diverged(metrics)
        return bool(live.diverged) or self._observe(live, epoch, self.protocol.score(live.curve))

    def _observe(self, live: LiveTrial, epoch: int, score: float) -> bool:
        """A finite epoch's objective so far (:meth:`Protocol.score` of the curve): True to stop
        the trial early (prune). Never, by default."""
        return False

    @timed
    def finish(self, number: int, error: str | None = None, infrastructure: bool = False) -> None:
        """The trial ended: finished, stopped by :meth:`report`, or raised (``error``);
        ``infrastructure``: it failed for a reason that is not its recipe's."""
        live = self._live.pop(number)
        error = live.diverged or live.error or error
        epochs = int(live.last.get("epoch", 0))
        if error is None and not live.pruned and epochs != self.protocol.epochs:
            error = f"stopped after {epochs} epochs"
        infrastructure = infrastructure and error is not None and not (live.diverged or live.error)
        state = self._settle(number, live, error, infrastructure)
        tags = {"state": state.name, "epochs": str(epochs)}
        if live.node:
            tags["node_id"] = live.node
        if error is not None:
            tags["error"] = reason(error)
            tags[Attr.INFRA] = str(infrastructure).lower()
        self.tracker.end_trial(live.run_id, "FAILED" if state == TrialState.FAIL else "FINISHED", tags)
        self.progress.update(state, self._best_value())

    def abandon_running(self) -> None:
        """On interrupt: close the MLflow runs of trials in flight (a study keeps them RUNNING so
        that ``--resume`` re-queues them; a confirmation runs them again)."""
        for live in self._live.values():
            self.tracker.end_trial(live.run_id, "KILLED", {"state": "INTERRUPTED"})
        self._live.clear()

    def _best_value(self) -> float | None:
        return None


class StudyDriver(Driver):
    """Owns one Optuna study for one search; thread-compatible with Tune's single event loop.

    ``shared``: the study lives in a database other drivers may use at the same time (Optuna's
    heartbeat tells their live trials from those of a dead driver); otherwise this driver holds
    the study alone (a lock), so any trial left RUNNING was cut off."""

    #: Infrastructure failures in a row after which the driver stops asking for trials.
    MAX_INFRA_STREAK = 3

    def __init__(self, study: optuna.Study, space: Space, protocol: Protocol, tracker: Tracker,
                 plan_for: Any, budget: int, progress: Progress | None = None,
                 shared: bool = False, cache: ResultCache | None = None) -> None:
        super().__init__(protocol, tracker, plan_for, progress, cache)
        self.study, self.space = study, space
        self.budget, self.shared = budget, shared
        self.halted: str | None = None  # why the driver stopped asking (the infrastructure failed)
        self._infra_streak = 0
        self._heartbeat = _Heartbeat(study, self._live) if shared else None
        self.progress.restore(self.settled_trials())

    # -- setup ---------------------------------------------------------------------------------
    def enqueue_baselines(self) -> None:
        """Queue the baselines the study has not run yet, as many as the budget has room for
        (a resumed study with a larger budget gets the ones a small first budget left out; a
        baseline whose trial failed for an infrastructure reason runs again)."""
        trials = self.study.get_trials(deepcopy=False)
        seen = {t.user_attrs.get(Attr.BASELINE) for t in trials if not t.user_attrs.get(Attr.INFRA)}
        room = self._room()
        for name, recipe in self.space.baselines().items():
            if room <= 0:
                break
            if name not in seen:
                self.study.enqueue_trial(self.space.params_for(recipe),
                                         user_attrs={Attr.BASELINE: name})
                room -= 1

    def replay(self, earlier: optuna.Study) -> int:
        """Queue the draws of ``earlier`` -- another study of the same settings, protocol,
        space and seed -- whose results the cache holds, in their order, as far as the budget
        has room; returns how many.

        Why: TPE is seeded, but with several trials at a time each draw depends on which trial
        finished first, so running the same command again would draw other candidates and train
        them, although the first run's are in the cache. Replayed, the same command gives the
        same candidates, read back in seconds; the pruner still decides for every trial (a
        trial it keeps longer than its source ran trains), and TPE draws on from there.
        """
        if self.cache is None or not self.cache.reuse:
            return 0
        room, queued = self._room(), 0
        protocol = self.protocol.to_dict()
        for t in earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if queued >= room:
                break
            recipe = t.user_attrs.get(Attr.RECIPE)
            if t.user_attrs.get(Attr.BASELINE) or recipe is None:
                continue  # baselines are queued by enqueue_baselines
            if self.cache.find(self.cache.key(recipe, protocol)) is None:
                continue
            self.study.enqueue_trial(t.params, user_attrs={Attr.REPLAYS: f"{earlier.study_name}/{t.number}"})
            queued += 1
        return queued

    def recover_interrupted(self) -> int:
        """Trials of a dead driver: mark them FAIL, queue their params again and end their MLflow
        runs as KILLED. Alone on the study, every RUNNING trial is one; on a shared database,
        only those whose heartbeat stopped (Optuna's :func:`~optuna.storages.fail_stale_trials`)."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        mine = {live.handle.number for live in self._live.values()}
        if self.shared:
            optuna.storages.fail_stale_trials(self.study)
            failed = {t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
            stale = [t for t in running if t.number in failed and t.number not in mine]
        else:
            stale = [t for t in running if t.number not in mine]
            for t in stale:
                self.study.tell(t.number, state=TrialState.FAIL)
        for t in stale:
            self._requeue(t)
            if t.user_attrs.get(Attr.RUN_ID):
                self.tracker.end_trial(t.user_attrs[Attr.RUN_ID], "KILLED", {"state": "INTERRUPTED"})
        return len(stale)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between two heartbeats of a live trial on a shared study."""
        return self._heartbeat.interval if self._heartbeat else float(HEARTBEAT_INTERVAL)

    def others_in_flight(self) -> int:
        """Trials of the study running on other drivers (a dead driver's are recovered once
        their heartbeat stops: :attr:`remaining` grows by them)."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return sum(t.number not in self._live for t in running)

    def close(self) -> None:
        """Stop the heartbeat (the search is over or interrupted)."""
        if self._heartbeat:
            self._heartbeat.stop()

    # -- the driver interface ------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        """Trials still to ask for: the budget less the study's settled and running trials (of
        every driver on a shared study); 0 once the infrastructure has failed too often."""
        if self.halted:
            return 0
        if self._heartbeat and self._heartbeat.due_for_recovery():
            self.recover_interrupted()
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return max(0, self.budget - len(self.settled_trials()) - len(running))

    @timed
    def ask(self) -> TrialConfig:
        trial = self.study.ask()
        if self._heartbeat:
            self._heartbeat.beat(trial)
        baseline = trial.user_attrs.get(Attr.BASELINE)
        recipe = self.space.sample(trial, name=baseline)
        trial.set_user_attr(Attr.RECIPE, recipe.to_dict())
        config = self._open(trial.number, trial, baseline or f"trial-{trial.number:03d}", recipe,
                            trial.params, {"stage": "search", "trial": str(trial.number),
                                           "baseline": baseline or ""},
                            self.protocol.to_dict(), never_prune=baseline is not None)
        live = self._live[trial.number]
        trial.set_user_attr(Attr.RUN_ID, live.run_id)
        if live.cached_from:
            trial.set_user_attr(Attr.CACHED, live.cached_from)
        return config

    def _observe(self, live: LiveTrial, epoch: int, score: float) -> bool:
        live.handle.report(score, step=epoch)
        if not live.never_prune and epoch < self.protocol.epochs and live.handle.should_prune():
            live.pruned = True
        return live.pruned

    def _settle(self, number: int, live: LiveTrial, error: str | None,
                infrastructure: bool) -> TrialState:
        trial = live.handle
        trial.set_user_attr(Attr.EPOCHS, int(live.last.get("epoch", 0)))
        if "test_acc" in live.last:
            trial.set_user_attr(Attr.TEST_ACC, float(live.last["test_acc"]))
        self._infra_streak = self._infra_streak + 1 if infrastructure else 0
        if error is not None:
            trial.set_user_attr(Attr.ERROR, error)
            if infrastructure:
                trial.set_user_attr(Attr.INFRA, True)
            self.study.tell(trial, state=TrialState.FAIL)
            if infrastructure:
                if Attr.REQUEUED not in trial.user_attrs:  # once (the value is a number: 0 too)
                    self._requeue(self.study.get_trials(deepcopy=False)[number])
                if self._infra_streak >= self.MAX_INFRA_STREAK:
                    self.halted = (f"{self._infra_streak} trials in a row failed for reasons that "
                                   f"are not their recipe's (last: {reason(error)})")
            return TrialState.FAIL
        if live.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        self.study.tell(trial, self.protocol.score(live.curve))
        return TrialState.COMPLETE

    # -- helpers -------------------------------------------------------------------------------
    def _room(self) -> int:
        """Trials the budget still has room to queue: those to ask for less those waiting."""
        waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        return self.remaining - len(waiting)

    def _requeue(self, t: optuna.trial.FrozenTrial) -> None:
        """Queue a trial's params again, as the same baseline if it was one."""
        attrs = {Attr.REQUEUED: t.number}
        if t.user_attrs.get(Attr.BASELINE):
            attrs[Attr.BASELINE] = t.user_attrs[Attr.BASELINE]
        self.study.enqueue_trial(t.params, user_attrs=attrs)

    def settled_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Trials that count against the budget: finished, not cut off by an interrupt (those
        lack Attr.EPOCHS, set by finish()) and not failed by the infrastructure."""
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        return [t for t in self.study.get_trials(deepcopy=False, states=done)
                if Attr.EPOCHS in t.user_attrs and not t.user_attrs.get(Attr.INFRA)]

    def _best_value(self) -> float | None:
        values = [t.value for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return max(values) if values else None


class _Heartbeat:
    """Optuna's trial heartbeat for ask-and-tell (``study.optimize`` keeps one per trial; a
    driver asking by hand must beat itself): a daemon thread records a heartbeat for every live
    trial each interval, so other drivers on the database can tell them from a dead driver's."""

    def __init__(self, study: optuna.Study, live: dict[int, LiveTrial]) -> None:
        self.storage, self.live = study._storage, live
        self.interval = float(self.storage.get_heartbeat_interval() or HEARTBEAT_INTERVAL)
        self._last_recovery = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="initsearch-heartbeat", daemon=True)
        self._thread.start()

    def beat(self, trial: optuna.Trial) -> None:
        self.storage.record_heartbeat(trial._trial_id)

    def due_for_recovery(self) -> bool:
        """True at most once per interval: time to look for a dead driver's trials."""
        if time.monotonic() - self._last_recovery < self.interval:
            return False
        self._last_recovery = time.monotonic()
        return True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)  # before the caller closes the storage under it

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for live in list(self.live.values()):
                self.storage.record_heartbeat(live.handle._trial_id)
