"""Ray Tune backend: Tune launches and places trials; the driver decides everything else.

Two thin adapters plug the driver into Tune's extension points:

* :class:`DriverSearcher` (a Tune ``Searcher``): ``suggest`` asks the driver for the next
  recipe; ``on_trial_complete`` tells the driver that a trial ended (finished or stopped).
* :class:`DriverPruningScheduler` (a Tune ``FIFOScheduler``): every epoch report goes to the
  driver, which feeds the Optuna pruner; a prune decision becomes Tune's ``STOP``. A worker's
  failure is noted here (only the scheduler is handed the error file) and settled by the
  searcher once Tune stops restarting the trial.

Trials are function trainables reporting with ``ray.tune.report``; ``reuse_actors=True`` keeps
worker processes (and their imported torch) alive across trials; the data split is put in the
object store once via ``tune.with_parameters``; resources per trial include fractional GPUs.

:class:`RayBackend` keeps one Ray session for every driver of a search (the search, then its
confirmation). When a driver has no trial left to give and one is still running, the other
slots would idle until it ends; a flag file tells that trial to take every CPU thread from its
next epoch on.

Faults are sorted by cause. A recipe that raises (or runs out of memory) is reported by the
trial itself as its result (``error``), so Tune never retries it: it is the recipe's FAIL. A
worker that dies (killed, node lost) raises in Tune instead; Tune restarts the trial
(``FailureConfig(max_failures=2)``, from epoch 1: the driver ignores epochs it already has),
and only when the retries are spent is the trial recorded as an *infrastructure* failure,
which never counts as the recipe's.

Without an address, the Ray started here listens on loopback only and leaves no process behind
its driver, ``kill -9`` included (:mod:`initsearch.engine.ray_session`). On a cluster
(``address``, or ``$RAY_ADDRESS``), the package and the user's model module reach
the workers through Ray's runtime environment (``py_modules``), a trial running alone takes the
CPUs of *its* node, and Tune's storage may be any path or URI the nodes share.
"""
from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from torch import nn

from initsearch.data import Splits
from initsearch.engine.ray_session import start_local_ray, stop_reaper
from initsearch.errors import UsageError
from initsearch.roles import Roles
from initsearch.trial import TrialConfig, failure_text, run_trial

if TYPE_CHECKING:  # workers unpickle this module's trial function: no Optuna or MLflow there
    from initsearch.engine.driver import Driver

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no Tune status tables: we draw our own bar
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from ray import tune  # noqa: E402  (after the environment above)
from ray.tune.schedulers import FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402


MAX_FAILURES = 2  # restarts of a trial whose worker died, before it counts as an infrastructure FAIL


class _LeavesDriverBehind:
    """Tune pickles its searcher and scheduler into the experiment state (for Tune's own
    restore, which initsearch does not use: the Optuna study is the state). The driver holds
    storage connections, locks and threads, which do not pickle; leave it out."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "driver": None}


def _finish(driver: Driver, number: int, solo_flag: Path, error: str | None = None,
            infrastructure: bool = False) -> None:
    driver.finish(number, error, infrastructure=infrastructure)
    if not driver.remaining and driver.in_flight == 1:
        solo_flag.touch()


class DriverSearcher(_LeavesDriverBehind, Searcher):
    def __init__(self, driver: Driver, solo_flag: Path, errors: dict[int, str]) -> None:
        super().__init__(metric="val_acc", mode="max")
        self.driver, self.solo_flag, self.errors = driver, solo_flag, errors
        self._numbers: dict[str, int] = {}
        self.asked = 0  # trials handed to Tune

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space lives in the driver; Tune's metric/mode match ours

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.driver.remaining:
            return Searcher.FINISHED
        config = self.driver.ask()
        self._numbers[trial_id] = config.number
        self.asked += 1
        return {"trial": config.to_dict()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        number = self._numbers.pop(trial_id, None)
        if number is None:
            return
        if error:  # Tune gave up restarting it: recipes report their own errors (_ray_trial), so
            # what reaches Tune is a worker's death
            text = self.errors.pop(number, "the trial's Ray worker failed")
            _finish(self.driver, number, self.solo_flag,
                    f"worker failed {MAX_FAILURES + 1} times: {text}", infrastructure=True)
        else:
            _finish(self.driver, number, self.solo_flag)


class DriverPruningScheduler(_LeavesDriverBehind, FIFOScheduler):
    def __init__(self, driver: Driver, errors: dict[int, str]) -> None:
        super().__init__()
        self.driver, self.errors = driver, errors

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        stop = self.driver.report(trial.config["trial"]["number"], result)
        return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

    def on_trial_error(self, tune_controller, trial) -> None:
        """Called on every failure, restarted or final; only the searcher hears of the final
        one, so the error is kept for it here."""
        path = trial.error_file  # written locally before this call; storage sync comes later
        lines = Path(path).read_text().strip().splitlines() if path and Path(path).exists() else []
        self.errors[trial.config["trial"]["number"]] = lines[-1] if lines else "the worker died"


def _ray_trial(config: dict, splits: Splits, model_fn: Callable[[], nn.Module], roles: Roles | None,
               threads: int, solo_flag: Path) -> None:
    import ray
    import torch

    torch.set_num_threads(threads)
    node = ray.get_runtime_context().get_node_id()
    epochs = run_trial(TrialConfig.from_dict(config["trial"]), splits, model_fn, roles)
    while True:
        try:
            metrics = next(epochs)
        except StopIteration:
            return
        except Exception as exc:  # the recipe's failure: a result, so Tune does not retry it
            # (Tune insists on the metric in every result: NaN, which the driver never reads)
            tune.report({"error": failure_text(exc), "val_acc": float("nan"), "node_id": node})
            return
        tune.report({**metrics, "node_id": node})  # outside the try: Tune's own stop signals pass
        if solo_flag.exists():  # the last trial runs alone: use the threads the others freed
            torch.set_num_threads(_node_cpus(node))


@functools.lru_cache(maxsize=None)
def _node_cpus(node: str) -> int:
    """The CPUs Ray gives the node this trial runs on (not the whole cluster's)."""
    import ray

    return next((int(n["Resources"].get("CPU", 1)) for n in ray.nodes() if n["NodeID"] == node), 1)


def _shipped_modules(model_fn: Callable[[], nn.Module]) -> list[str]:
    """What workers must import: this package, and the top-level module or package that defines
    the model factory when it is the user's own (not installed in site-packages: the cluster's
    environment has those)."""
    package = Path(__file__).resolve().parents[1]  # initsearch/
    paths = [str(package)]
    while isinstance(model_fn, functools.partial):
        model_fn = model_fn.func
    top = sys.modules.get(getattr(model_fn, "__module__", "").partition(".")[0])
    if isinstance(top, ModuleType) and top.__name__ != package.name and getattr(top, "__file__", None):
        where = Path(top.__file__)
        where = where.parent if where.name == "__init__.py" else where
        if "site-packages" not in where.parts and "dist-packages" not in where.parts:
            paths.append(str(where))
    return paths


def _trial_name(trial) -> str:
    return f"trial-{trial.config['trial']['number']:04d}"


class RayBackend:
    """Runs drivers' trials through Ray Tune; one Ray session serves every driver of a search
    (the search, then its confirmation), started on entry and shut down on exit."""

    def __init__(self, splits: Splits, model_fn: Callable[[], nn.Module], roles: Roles | None, *,
                 threads: int, gpus_per_trial: float, flags: Path, address: str | None = None,
                 storage: str | None = None) -> None:
        """``flags``: a local folder for the driver's flag files; ``address``: a Ray cluster
        (None: ``$RAY_ADDRESS``, else start one here); ``storage``: Tune's storage path or
        URI (None: ``flags``)."""
        self.splits, self.model_fn, self.roles = splits, model_fn, roles
        self.threads, self.gpus_per_trial = threads, gpus_per_trial
        self.flags = flags.resolve()
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.storage = storage if storage and "://" in storage else str(Path(storage or flags).resolve())
        self._started = False
        self._reaper: subprocess.Popen | None = None

    def __enter__(self) -> "RayBackend":
        import ray

        self._started = not ray.is_initialized()
        if self._started:
            runtime_env = {"py_modules": _shipped_modules(self.model_fn),
                           "env_vars": {"RAY_AIR_NEW_OUTPUT": "0"}}
            try:
                if self.address:
                    ray.init(address=self.address, logging_level=logging.ERROR,
                             log_to_driver=False, runtime_env=runtime_env)
                else:
                    self._reaper = start_local_ray(logging_level=logging.ERROR, log_to_driver=False,
                                                   runtime_env=runtime_env, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
                why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                if not self.address:
                    raise UsageError(f"starting Ray on this machine failed ({why}); check "
                                     "`ray status` and free memory, or use --backend local") from None
                raise UsageError(f"cannot connect to the Ray cluster at {self.address} ({why}); "
                                 "check --ray-address (or RAY_ADDRESS) and that `ray status` "
                                 "shows the cluster") from None
        # Trial errors are recorded (study FAIL, MLflow FAILED, the progress bar); Tune's own
        # traceback dump of them would only bury the bar.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        if self._started:
            ray.shutdown()
        if self._reaper is not None:
            stop_reaper(self._reaper)
            self._reaper = None

    def run(self, driver: Driver, name: str) -> int:
        """Run every trial ``driver`` still has as Tune experiment ``name``; returns how many
        ran at once."""
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        gpus = ray.cluster_resources().get("GPU", 0)
        concurrency = max(1, cpus // self.threads)
        if self.gpus_per_trial:
            concurrency = min(concurrency, max(1, int(gpus / self.gpus_per_trial)))
        solo_flag = self.flags / f"{name}.solo"
        solo_flag.parent.mkdir(parents=True, exist_ok=True)
        solo_flag.unlink(missing_ok=True)  # left by an earlier session of a resumed study
        errors: dict[int, str] = {}  # trial number -> its worker's last failure
        searcher = DriverSearcher(driver, solo_flag, errors)
        samples = driver.remaining
        trainable = tune.with_resources(
            tune.with_parameters(_ray_trial, splits=self.splits, model_fn=self.model_fn,
                                 roles=self.roles, threads=self.threads, solo_flag=solo_flag),
            {"cpu": self.threads, "gpu": self.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher,
                                        scheduler=DriverPruningScheduler(driver, errors),
                                        metric="val_acc", mode="max",
                                        num_samples=samples,
                                        max_concurrent_trials=concurrency, reuse_actors=True,
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=name, storage_path=self.storage, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)))
        try:
            tuner.fit()
        except KeyboardInterrupt:
            driver.abandon_running()
            raise
        # Tune caught SIGINT and stopped early: trials cut off, or fewer asked than it was
        # given while the driver had more (the driver's ``remaining`` may also grow during a
        # run -- a dead driver's trials recovered -- which the caller runs next)
        if driver.in_flight or (searcher.asked < samples and driver.remaining):
            driver.abandon_running()
            raise KeyboardInterrupt
        return concurrency
