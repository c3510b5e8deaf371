"""Ray Tune backend: Tune launches and places trials; the driver decides everything else.

Two thin adapters plug the driver into Tune's extension points:

* :class:`DriverSearcher` (a Tune ``Searcher``): ``suggest`` asks the driver for the next
  recipe; ``on_trial_complete`` tells the driver that a trial ended (finished or stopped).
* :class:`DriverPruningScheduler` (a Tune ``FIFOScheduler``): every epoch report goes to the
  driver, which feeds the Optuna pruner; a prune decision becomes Tune's ``STOP``. A trial that
  raised is reported from here too, because only the scheduler is handed the error.

Trials are function trainables reporting with ``ray.tune.report``; ``reuse_actors=True`` keeps
worker processes (and their imported torch) alive across trials; the data split is put in the
object store once via ``tune.with_parameters``; resources per trial include fractional GPUs.

:class:`RayBackend` keeps one Ray session for every driver of a search (the search, then its
confirmation). When a driver has no trial left to give and one is still running, the other
slots would idle until it ends; a flag file tells that trial to take every CPU thread from its
next epoch on.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from initsearch.data import Splits
from initsearch.engine.driver import Driver
from initsearch.roles import Roles
from initsearch.trial import TrialConfig, run_trial

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune status tables: we draw our own bar
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from ray import tune  # noqa: E402  (after the environment above)
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402


def _finish(driver: Driver, number: int, solo_flag: Path, error: str | None = None) -> None:
    driver.finish(number, error)
    if not driver.remaining and driver.in_flight == 1:
        solo_flag.touch()


class DriverSearcher(Searcher):
    def __init__(self, driver: Driver, solo_flag: Path) -> None:
        super().__init__(metric="val_acc", mode="max")
        self.driver, self.solo_flag = driver, solo_flag
        self._numbers: dict[str, int] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space lives in the driver; Tune's metric/mode match ours

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.driver.remaining:
            return Searcher.FINISHED
        config = self.driver.ask()
        self._numbers[trial_id] = config.number
        return {"trial": config.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        number = self._numbers.pop(trial_id, None)
        if number is not None and not error:  # errors: DriverPruningScheduler.on_trial_error
            _finish(self.driver, number, self.solo_flag)


class DriverPruningScheduler(FIFOScheduler):
    def __init__(self, driver: Driver, solo_flag: Path) -> None:
        super().__init__()
        self.driver, self.solo_flag = driver, solo_flag

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        stop = self.driver.report(trial.config["trial"]["number"], result)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial) -> None:
        path = trial.error_file  # written locally before this call; storage sync comes later
        lines = Path(path).read_text().strip().splitlines() if path and Path(path).exists() else []
        text = lines[-1] if lines else "trial raised in its Ray worker"
        _finish(self.driver, trial.config["trial"]["number"], self.solo_flag, text)


def _ray_trial(config: dict, splits: Splits, model_fn: Callable[[], nn.Module], roles: Roles | None,
               threads: int, solo_flag: Path, all_threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    for metrics in run_trial(TrialConfig.from_dict(config["trial"]), splits, model_fn, roles):
        tune.report(metrics)
        if solo_flag.exists():  # the last trial runs alone: use the threads the others freed
            torch.set_num_threads(all_threads)


def _trial_name(trial) -> str:
    return f"trial-{trial.config['trial']['number']:04d}"


class RayBackend:
    """Runs drivers' trials through Ray Tune; one Ray session serves every driver of a search
    (the search, then its confirmation), started on entry and shut down on exit."""

    def __init__(self, splits: Splits, model_fn: Callable[[], nn.Module], roles: Roles | None, *,
                 threads: int, gpus_per_trial: float, storage: Path) -> None:
        self.splits, self.model_fn, self.roles = splits, model_fn, roles
        self.threads, self.gpus_per_trial, self.storage = threads, gpus_per_trial, storage.resolve()
        self._started = False

    def __enter__(self) -> "RayBackend":
        import ray

        self._started = not ray.is_initialized()
        if self._started:
            # Workers must import what the driver imports (a user's --model module, this package).
            path = os.pathsep.join([os.getcwd(), *sys.path])
            ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path, "RAY_AIR_NEW_OUTPUT": "0"}})
        # Trial errors are recorded (study FAIL, MLflow FAILED, the progress bar); Tune's own
        # traceback dump of them would only bury the bar.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self._started:
            ray.shutdown()

    def run(self, driver: Driver, name: str) -> int:
        """Run every trial ``driver`` still has as Tune experiment ``name``; returns how many
        ran at once."""
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = ray.cluster_resources().get("GPU", 0)
        concurrency = max(1, cpus // self.threads)
        if self.gpus_per_trial:
            concurrency = min(concurrency, max(1, int(gpus / self.gpus_per_trial)))
        solo_flag = self.storage / f"{name}.solo"
        solo_flag.parent.mkdir(parents=True, exist_ok=True)
        solo_flag.unlink(missing_ok=True)  # left by an earlier session of a resumed study
        trainable = tune.with_resources(
            tune.with_parameters(_ray_trial, splits=self.splits, model_fn=self.model_fn,
                                 roles=self.roles, threads=self.threads, solo_flag=solo_flag,
                                 all_threads=cpus),
            {"cpu": self.threads, "gpu": self.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=DriverSearcher(driver, solo_flag),
                                        scheduler=DriverPruningScheduler(driver, solo_flag),
                                        metric="val_acc", mode="max",
                                        num_samples=driver.remaining,
                                        max_concurrent_trials=concurrency, reuse_actors=True,
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=name, storage_path=str(self.storage), verbose=0))
        try:
            tuner.fit()
        except KeyboardInterrupt:
            driver.abandon_running()
            raise
        if driver.in_flight or driver.remaining:  # Tune caught SIGINT and stopped early
            driver.abandon_running()
            raise KeyboardInterrupt
        return concurrency
