"""Local backend: the same trial function, in this process, one trial at a time (no Ray)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from torch import nn

from initsearch.data import Splits
from initsearch.roles import Roles
from initsearch.trial import failure_text, run_trial

if TYPE_CHECKING:  # a backend only calls a driver: no Optuna or MLflow where trials run
    from initsearch.engine.driver import Driver


class LocalBackend:
    """Runs a driver's trials one after another in this process (torch uses every core)."""

    def __init__(self, splits: Splits, model_fn: Callable[[], nn.Module],
                 roles: Roles | None = None) -> None:
        self.splits, self.model_fn, self.roles = splits, model_fn, roles

    def __enter__(self) -> "LocalBackend":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def run(self, driver: Driver, name: str) -> int:
        """Run every trial ``driver`` still has; returns the number of slots (1)."""
        while driver.remaining:
            config = driver.ask()
            error = None
            try:
                for metrics in run_trial(config, self.splits, self.model_fn, self.roles):
                    if driver.report(config.number, metrics):
                        break  # pruned or diverged: leaving the generator ends the trial
            except KeyboardInterrupt:
                driver.abandon_running()
                raise
            except Exception as exc:  # a failing recipe is a result to record, not a reason to stop
                error = failure_text(exc)
            driver.finish(config.number, error)
        return 1
