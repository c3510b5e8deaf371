"""Settings of a search, grouped the way Ray Tune groups them (``TuneConfig``, ``RunConfig``):
what the search is stays in :func:`initsearch.search`'s arguments; *how it runs* is a
:class:`RunConfig`, *how its answer is confirmed* a :class:`ConfirmConfig`. Each validates itself
when built, so the CLI and the API refuse the same bad values with the same one-line message.

Example:
    >>> import initsearch
    >>> run = initsearch.RunConfig(backend="local", home="/tmp/is", progress=True)
    >>> confirm = initsearch.ConfirmConfig(top=2, seeds=3, max_seeds=12, min_effect=0.01)
    >>> initsearch.search("resnet_ds", budget=20, run=run, confirm=confirm)  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from initsearch.errors import UsageError

if TYPE_CHECKING:  # only for annotations: settings are plain values
    from initsearch.protocol import Protocol

BACKENDS = ("ray", "local")


@dataclass(frozen=True)
class RunConfig:
    """How a search runs and where it writes.

    Attributes:
        name: the study name (``None``: ``<arch>-<dataset>-<time>``); ``--study``.
        resume: continue ``name`` (or the newest study of the arch) up to the budget.
        backend: ``"ray"`` (Ray Tune launches trials) or ``"local"`` (in this process).
        gpus_per_trial: GPU share per trial under Ray (fractions allowed); ``None``: the
            profile's.
        home: the folder holding ``mlruns/`` (``None``: ``$INITSEARCH_HOME`` or the cwd).
        tracking_uri: the MLflow store (``None``: ``$MLFLOW_TRACKING_URI``, else
            ``sqlite:///<home>/mlruns/mlflow.db``); ``http://host:port`` for a tracking server.
        progress: draw progress bars on stderr.
        storage: where the Optuna study lives (``None``: the journal file
            ``<home>/mlruns/optuna/<study>.journal``, one driver at a time); an RDB URL
            (``postgresql://user:pw@host/db``) lets several drivers share one study.
        ray_address: the Ray cluster to run trials on (``None``: ``$RAY_ADDRESS``, else a Ray
            started for this search on this machine).
        ray_storage: Tune's experiment storage, a path or URI every node can reach on a
            cluster (``None``: ``<home>/mlruns/ray``).
        experiment: the MLflow experiment of the study's runs (``None``:
            ``initsearch-<arch>``; ``initsearch claims`` uses ``initsearch-claims``).
        wait_for_others: on a study shared with other drivers (a database ``storage``), how
            many seconds a driver whose share is done waits for the others' trials in flight
            before it reports the study as partial (no race, no recommendation);
            ``--wait-for-others``.
        cache: reuse the result of a trial already trained under the same model, recipe,
            protocol, data and code, from any study in the tracking store
            (:mod:`initsearch.cache`), and ask first the cached draws of an earlier study with
            the same settings (:meth:`~initsearch.engine.driver.StudyDriver.replay`); False
            (``--no-cache``) trains every trial and replays nothing.
    """

    name: str | None = None
    resume: bool = False
    backend: str = "ray"
    gpus_per_trial: float | None = None
    home: str | os.PathLike | None = None
    tracking_uri: str | None = None
    progress: bool = False
    storage: str | None = None
    ray_address: str | None = None
    ray_storage: str | None = None
    cache: bool = True
    wait_for_others: float = 3600.0
    experiment: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise UsageError(f"study name {self.name!r} may hold only letters, digits, '.', '_' and '-'")
        if self.gpus_per_trial is not None and not self.gpus_per_trial >= 0:
            raise UsageError(f"gpus_per_trial must be >= 0, not {self.gpus_per_trial}")
        if not (isinstance(self.wait_for_others, (int, float)) and self.wait_for_others >= 0):
            raise UsageError(f"wait for others must be a number of seconds >= 0, not "
                             f"{self.wait_for_others!r}")

    @property
    def state(self) -> Path:
        """``<home>/mlruns``: the MLflow store, the Optuna journals and Tune's folders."""
        return resolve_home(self.home) / "mlruns"


def resolve_home(home: str | os.PathLike | None) -> Path:
    """The folder holding ``mlruns/``: the argument, else ``$INITSEARCH_HOME``, else the cwd."""
    return Path(home or os.environ.get("INITSEARCH_HOME") or Path.cwd()).resolve()


@dataclass(frozen=True)
class ConfirmConfig:
    """The racing confirmation that ends every search (:mod:`initsearch.race`).

    PyTorch's default, every baseline that applies to the model and the ``top`` best distinct
    candidates of the search start a race on ``seeds`` fresh seeds (never used by the search),
    at the confirmation's fidelity, scored on the confirm split; after each look the entries
    significantly worse than the leader are dropped and the survivors train one more seed, up
    to ``max_seeds``. Every field left None takes the profile's key (in brackets).

    Attributes:
        top: candidates to race (>= 1); ``--confirm-top``.
        seeds: seeds every entry starts with, >= 3 (no test runs on fewer), or ``0`` to turn
            the stage off [``confirm_seeds``: 3]; ``--confirm-seeds``.
        max_seeds: the race's budget, seeds per recipe at most [``confirm_max_seeds``: 10 on
            ``cpu``]; ``--confirm-max-seeds``.
        min_effect: the smallest accuracy difference worth acting on, as a fraction (0.01 is
            1 pp) [``min_effect``]; ``--min-effect``.
        rank: who leads a look: ``"mean"`` or ``"lcb"`` (the lower 95 % bound of the mean, which
            a dead seed pulls down) [``confirm_rank``]; ``--confirm-rank``.
        epochs: the confirmation's training length [``confirm_epochs``, else ``epochs``];
            ``--confirm-epochs``.
        train_size: the confirmation's training images [``confirm_train_size``, else
            ``train_size``]; ``--confirm-train-size``.
        cost_ratio: a recipe that does not lead a look and whose jobs cost more than this many
            times the median recipe's retires there (0: never) [``confirm_cost_ratio``: 4 on
            ``cpu`` and ``gpu``]; ``--confirm-cost-ratio``.
    """

    top: int = 3
    seeds: int | None = None
    max_seeds: int | None = None
    min_effect: float | None = None
    rank: str | None = None
    epochs: int | None = None
    train_size: int | None = None
    cost_ratio: float | None = None

    def __post_init__(self) -> None:
        def whole(v) -> bool:
            return not isinstance(v, bool) and isinstance(v, int)

        if not whole(self.top) or self.top < 1:
            raise UsageError(f"confirm top must be a whole number >= 1, not {self.top!r}; "
                             "turn the confirmation off with --confirm-seeds 0")
        if self.seeds is not None and (not whole(self.seeds) or self.seeds in (1, 2) or self.seeds < 0):
            raise UsageError(f"confirm seeds must be 0 (off) or a whole number >= 3 (no test runs "
                             f"on fewer paired seeds), not {self.seeds!r}")
        if self.max_seeds is not None and (not whole(self.max_seeds) or self.max_seeds < 3):
            raise UsageError(f"confirm max seeds must be a whole number >= 3, not {self.max_seeds!r}")
        if self.min_effect is not None and not (isinstance(self.min_effect, (int, float))
                                                and 0 < self.min_effect < 1):
            raise UsageError(f"min effect must be an accuracy difference in (0, 1), e.g. 0.01 for "
                             f"1 pp, not {self.min_effect!r}")
        if self.rank is not None and self.rank not in ("mean", "lcb"):
            raise UsageError(f"confirm rank must be mean or lcb, not {self.rank!r}")
        if self.cost_ratio is not None and (isinstance(self.cost_ratio, bool) or not isinstance(
                self.cost_ratio, (int, float)) or not (self.cost_ratio == 0 or self.cost_ratio > 1)):
            raise UsageError(f"confirm cost ratio must be 0 (never retire) or above 1, e.g. 4, "
                             f"not {self.cost_ratio!r}")
        for what, v in (("epochs", self.epochs), ("train size", self.train_size)):
            if v is not None and (not whole(v) or v < 1):
                raise UsageError(f"confirm {what} must be a whole number >= 1, not {v!r}")

    def over(self, protocol: Protocol) -> Protocol:
        """``protocol`` with the fields set here in place of its ``confirm_*`` keys.

        Raises:
            UsageError: the race would start with more seeds than its budget.
        """
        keys = {"confirm_seeds": self.seeds, "confirm_max_seeds": self.max_seeds,
                "min_effect": self.min_effect, "confirm_rank": self.rank,
                "confirm_epochs": self.epochs, "confirm_train_size": self.train_size,
                "confirm_cost_ratio": self.cost_ratio}
        out = replace(protocol, **{k: v for k, v in keys.items() if v is not None})
        if out.confirm_seeds and out.confirm_max_seeds < out.confirm_seeds:
            raise UsageError(f"the race starts with {out.confirm_seeds} seeds but may use only "
                             f"{out.confirm_max_seeds}; raise --confirm-max-seeds")
        if (out.confirm_train_size or 0) > 0 and out.confirm_train_size < out.batch_size:
            raise UsageError(f"confirm train size {out.confirm_train_size} is below the batch size "
                             f"{out.batch_size}; raise it")
        return out
