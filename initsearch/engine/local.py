"""Local backend: the same trial function, in this process, one trial at a time (no Ray)."""
from __future__ import annotations

import traceback
from typing import Callable

from torch import nn

from initsearch.data import Splits
from initsearch.engine.driver import StudyDriver
from initsearch.trial import run_trial


def run_local(driver: StudyDriver, splits: Splits, model_fn: Callable[[], nn.Module]) -> int:
    """Run the driver's remaining trials one after another (torch uses every core); returns the
    number of slots (1)."""
    while driver.remaining:
        config = driver.ask()
        error = None
        try:
            for metrics in run_trial(config, splits, model_fn):
                if driver.report(config.number, metrics):
                    break  # pruned: leaving the generator ends the trial
        except KeyboardInterrupt:
            driver.abandon_running()
            raise
        except Exception:  # a failing recipe is a result to record, not a reason to stop
            error = traceback.format_exc(limit=3)
        driver.finish(config.number, error)
    return 1
