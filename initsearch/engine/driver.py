"""The study driver: Optuna samples, prunes and records; the backends only execute.

Ray's stock ``OptunaSearch`` runs the study with a ``NopPruner`` and tells a trial that a Tune
scheduler stopped early as COMPLETE with its partial score, so TPE mistakes a 1-epoch score for
a final one. Here the driver owns the study (ask/tell): the pruner sees every intermediate
value, a pruned trial is told as PRUNED (TPE then uses its intermediate values as such), and
only a trial that trained all epochs is COMPLETE. Both backends call the same three methods:
:meth:`StudyDriver.ask`, :meth:`StudyDriver.report` and :meth:`StudyDriver.finish`.

Baselines are enqueued as the first trials and are never pruned, so they train on exactly the
same protocol and seeds as the candidates and always reach the final table.
"""
from __future__ import annotations

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
from initsearch.trial import METRICS, TrialConfig



class Attr:
    """Names of the user attributes the driver writes on each Optuna trial (read by recommend)."""

    BASELINE = "baseline"  # the baseline's name, on enqueued baseline trials
    RECIPE = "recipe"      # the recipe as a dict
    RUN_ID = "run_id"      # the trial's MLflow child run
    EPOCHS = "epochs"      # epochs trained; set when the trial ends (absent: cut off mid-trial)
    TEST_ACC = "test_acc"  # final test accuracy, completed trials only
    ERROR = "error"        # why a FAIL failed


@dataclass
class _Live:
    trial: optuna.Trial
    run_id: str
    baseline: str | None
    last: dict[str, Any] = field(default_factory=dict)
    pruned: bool = False


def _timed(method: Callable) -> Callable:
    """Add the call's duration to ``bookkeeping_seconds`` (Optuna + MLflow work per trial)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.bookkeeping_seconds += time.perf_counter() - t0
    return wrapper


class StudyDriver:
    """Owns one Optuna study for one search; thread-compatible with Tune's single event loop."""

    def __init__(self, study: optuna.Study, space: Space, protocol: Protocol, tracker: Tracker,
                 plan_for: Any, budget: int, progress: Progress | None = None) -> None:
        self.study, self.space, self.protocol, self.tracker = study, space, protocol, tracker
        self.plan_for = plan_for  # Recipe -> per-layer plan, for the child run's recipe.json
        self.budget = budget
        self.progress = progress or Progress(budget, enabled=False)
        self._live: dict[int, _Live] = {}
        self.compute_seconds = 0.0  # time inside training and evaluation steps, all trials
        self.bookkeeping_seconds = 0.0  # time in ask/report/finish: Optuna and MLflow
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

    # -- the three calls the backends make -----------------------------------------------------
    @property
    def remaining(self) -> int:
        return max(0, self.budget - self._asked)

    @property
    def in_flight(self) -> int:
        return len(self._live)

    @_timed
    def ask(self) -> TrialConfig:
        trial = self.study.ask()
        baseline = trial.user_attrs.get(Attr.BASELINE)
        recipe = self.space.sample(trial, name=baseline)
        trial.set_user_attr(Attr.RECIPE, recipe.to_dict())
        run_id = self.tracker.start_trial(trial.number, recipe, baseline, trial.params,
                                          self.plan_for(recipe))
        trial.set_user_attr(Attr.RUN_ID, run_id)
        self._live[trial.number] = _Live(trial, run_id, baseline)
        self._asked += 1
        return TrialConfig(trial.number, recipe.to_dict(), self.protocol.to_dict())

    @_timed
    def report(self, number: int, metrics: dict[str, Any]) -> bool:
        """Record one epoch; True means the pruner stopped this trial."""
        live = self._live[number]
        metrics = {k: metrics[k] for k in METRICS if k in metrics}  # Ray adds its own keys
        epoch = int(metrics["epoch"])
        if epoch <= live.last.get("epoch", 0):
            return False  # a restarted worker re-sent an epoch the study already has
        live.last = dict(metrics)
        self.compute_seconds += sum(float(metrics.get(k, 0.0))
                                    for k in ("init_seconds", "train_seconds", "eval_seconds"))
        self.tracker.log_epoch(live.run_id, metrics, epoch)
        live.trial.report(float(metrics["val_acc"]), step=epoch)
        if live.baseline is None and epoch < self.protocol.epochs and live.trial.should_prune():
            live.pruned = True
        return live.pruned

    @_timed
    def finish(self, number: int, error: str | None = None) -> None:
        live = self._live.pop(number)
        epochs = int(live.last.get("epoch", 0))
        live.trial.set_user_attr(Attr.EPOCHS, epochs)
        if "test_acc" in live.last:
            live.trial.set_user_attr(Attr.TEST_ACC, float(live.last["test_acc"]))
        if error is None and live.pruned:
            state = TrialState.PRUNED
            self.study.tell(live.trial, state=state)
        elif error is None and epochs == self.protocol.epochs:
            state = TrialState.COMPLETE
            self.study.tell(live.trial, float(live.last["val_acc"]))
        else:
            state = TrialState.FAIL
            live.trial.set_user_attr(Attr.ERROR, error or f"stopped after {epochs} epochs")
            self.study.tell(live.trial, state=state)
        self.tracker.end_trial(live.run_id, "FAILED" if state == TrialState.FAIL else "FINISHED",
                               {"state": state.name, "epochs": str(epochs)})
        self.progress.update(state, self._best_value())

    def abandon_running(self) -> None:
        """On interrupt: close the child runs of trials in flight (the study keeps them RUNNING
        so that ``--resume`` re-queues them)."""
        for live in self._live.values():
            self.tracker.end_trial(live.run_id, "KILLED", {"state": "INTERRUPTED"})
        self._live.clear()

    # -- helpers -------------------------------------------------------------------------------
    def _settled_trials(self) -> list[optuna.trial.FrozenTrial]:
        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        # Attr.EPOCHS is set by finish(): trials cut off by an interrupt lack it and do not count
        return [t for t in self.study.get_trials(deepcopy=False, states=done) if Attr.EPOCHS in t.user_attrs]

    def _best_value(self) -> float | None:
        values = [t.value for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        return max(values) if values else None
