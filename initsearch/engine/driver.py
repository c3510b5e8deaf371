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
is recorded as failed with the reason, never scored.
"""
from __future__ import annotations

import abc
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from initsearch.engine.progress import Progress
from initsearch.protocol import Protocol
from initsearch.space import Space
from initsearch.tracking import Tracker
from initsearch.trial import METRICS, TrialConfig, diverged


class Attr:
    """Names of the user attributes the driver writes on each Optuna trial (read by recommend)."""

    BASELINE = "baseline"  # the baseline's name, on enqueued baseline trials
    RECIPE = "recipe"      # the recipe as a dict
    RUN_ID = "run_id"      # the trial's MLflow child run
    EPOCHS = "epochs"      # epochs trained; set when the trial ends (absent: cut off mid-trial)
    TEST_ACC = "test_acc"  # final test accuracy, completed trials only
    ERROR = "error"        # why a FAIL failed ("diverged at epoch 3: train_loss nan", a traceback)


@dataclass
class LiveTrial:
    """A trial in flight: its MLflow run, what it reported so far, and how it is to end."""

    run_id: str
    handle: Any  # the driver's own record of it: an Optuna trial, a confirmation job
    never_prune: bool = False
    last: dict[str, Any] = field(default_factory=dict)
    curve: list[float] = field(default_factory=list)
    pruned: bool = False
    diverged: str | None = None


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


def reason(error: str) -> str:
    """One line for a table or a tag: the last line of a traceback, at most 300 characters."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else error)[:300]


class Driver(abc.ABC):
    """The three calls a backend makes (plus ``remaining``, ``in_flight`` and
    ``abandon_running`` on interrupt); epoch logging and divergence are shared here."""

    def __init__(self, protocol: Protocol, tracker: Tracker, progress: Progress | None) -> None:
        self.protocol, self.tracker = protocol, tracker
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

    @abc.abstractmethod
    def _settle(self, number: int, live: LiveTrial, error: str | None) -> TrialState:
        """Record how the trial ended; return its state."""

    @timed
    def report(self, number: int, metrics: dict[str, Any]) -> bool:
        """Record one epoch; True means stop this trial (pruned, or diverged)."""
        live = self._live[number]
        metrics = {k: metrics[k] for k in METRICS if k in metrics}  # Ray adds its own keys
        epoch = int(metrics["epoch"])
        if epoch <= live.last.get("epoch", 0):
            return False  # a restarted worker re-sent an epoch the study already has
        live.last = dict(metrics)
        live.curve.append(float(metrics["val_acc"]))
        self.compute_seconds += sum(float(metrics.get(k, 0.0))
                                    for k in ("init_seconds", "train_seconds", "eval_seconds"))
        self.tracker.log_epoch(live.run_id, metrics, epoch)
        live.diverged = diverged(metrics)
        return bool(live.diverged) or self._observe(live, epoch, float(metrics["val_acc"]))

    def _observe(self, live: LiveTrial, epoch: int, val_acc: float) -> bool:
        """A finite epoch's score: True to stop the trial early (prune). Never, by default."""
        return False

    @timed
    def finish(self, number: int, error: str | None = None) -> None:
        """The trial ended: finished, stopped by :meth:`report`, or raised (``error``)."""
        live = self._live.pop(number)
        error = live.diverged or error
        epochs = int(live.last.get("epoch", 0))
        if error is None and not live.pruned and epochs != self.protocol.epochs:
            error = f"stopped after {epochs} epochs"
        state = self._settle(number, live, error)
        tags = {"state": state.name, "epochs": str(epochs)}
        if error is not None:
            tags["error"] = reason(error)
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
    """Owns one Optuna study for one search; thread-compatible with Tune's single event loop."""

    def __init__(self, study: optuna.Study, space: Space, protocol: Protocol, tracker: Tracker,
                 plan_for: Any, budget: int, progress: Progress | None = None) -> None:
        super().__init__(protocol, tracker, progress)
        self.study, self.space = study, space
        self.plan_for = plan_for  # Recipe -> per-layer plan, for the child run's recipe.json
        self.budget = budget
        settled = self._settled_trials()
        self._asked = len(settled)
        self.progress.restore(settled)

    # -- setup ---------------------------------------------------------------------------------
    def enqueue_baselines(self) -> None:
        """Queue the baselines the study has not run yet, as many as the budget has room for
        (a resumed study with a larger budget gets the ones a small first budget left out)."""
        trials = self.study.get_trials(deepcopy=False)
        seen = {t.user_attrs.get(Attr.BASELINE) for t in trials}
        room = self.remaining - sum(t.state == TrialState.WAITING for t in trials)
        for name, recipe in self.space.baselines().items():
            if room <= 0:
                break
            if name not in seen:
                self.study.enqueue_trial(self.space.params_for(recipe),
                                         user_attrs={Attr.BASELINE: name})
                room -= 1

    def recover_interrupted(self) -> int:
        """Trials left RUNNING by a killed search: mark them FAIL and queue their params again."""
        stale = [t for t in self.study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        for t in stale:
            self.study.tell(t.number, state=TrialState.FAIL)
            baseline = t.user_attrs.get(Attr.BASELINE)
            self.study.enqueue_trial(t.params,
                                     user_attrs={Attr.BASELINE: baseline} if baseline else None)
            if t.user_attrs.get(Attr.RUN_ID):
                self.tracker.end_trial(t.user_attrs[Attr.RUN_ID], "KILLED", {"state": "INTERRUPTED"})
        self._asked = len(self._settled_trials())
        return len(stale)

    # -- the driver interface ------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return max(0, self.budget - self._asked)

    @timed
    def ask(self) -> TrialConfig:
        trial = self.study.ask()
        baseline = trial.user_attrs.get(Attr.BASELINE)
        recipe = self.space.sample(trial, name=baseline)
        trial.set_user_attr(Attr.RECIPE, recipe.to_dict())
        run_id = self.tracker.start_trial(
            baseline or f"trial-{trial.number:03d}", recipe, trial.params, self.plan_for(recipe),
            {"stage": "search", "trial": str(trial.number), "baseline": baseline or ""})
        trial.set_user_attr(Attr.RUN_ID, run_id)
        self._live[trial.number] = LiveTrial(run_id, trial, never_prune=baseline is not None)
        self._asked += 1
        return TrialConfig(trial.number, recipe.to_dict(), self.protocol.to_dict())

    def _observe(self, live: LiveTrial, epoch: int, val_acc: float) -> bool:
        live.handle.report(val_acc, step=epoch)
        if not live.never_prune and epoch < self.protocol.epochs and live.handle.should_prune():
            live.pruned = True
        return live.pruned

    def _settle(self, number: int, live: LiveTrial, error: str | None) -> TrialState:
        trial = live.handle
        trial.set_user_attr(Attr.EPOCHS, int(live.last.get("epoch", 0)))
        if "test_acc" in live.last:
            trial.set_user_attr(Attr.TEST_ACC, float(live.last["test_acc"]))
        if error is not None:
            trial.set_user_attr(Attr.ERROR, error)
            self.study.tell(trial, state=TrialState.FAIL)
            return TrialState.FAIL
        if live.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            return TrialState.PRUNED
        self.study.tell(trial, float(live.last["val_acc"]))
        return TrialState.COMPLETE

    # -- helpers -------------------------------------------------------------------------------
    def _settled_trials(self) -> list[optuna.trial.FrozenTrial]:
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        # Attr.EPOCHS is set by finish(): trials cut off by an interrupt lack it and do not count
        return [t for t in self.study.get_trials(deepcopy=False, states=done) if Attr.EPOCHS in t.user_attrs]

    def _best_value(self) -> float | None:
        values = [t.value for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return max(values) if values else None
