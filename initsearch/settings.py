"""Settings of a search, grouped the way Ray Tune groups them (``TuneConfig``, ``RunConfig``):
what the search is stays in :func:`initsearch.search`'s arguments; *how it runs* is a
:class:`RunConfig`, *how its answer is confirmed* a :class:`ConfirmConfig`. Each validates itself
when built, so the CLI and the API refuse the same bad values with the same one-line message.

Example:
    >>> import initsearch
    >>> run = initsearch.RunConfig(backend="local", home="/tmp/is", progress=True)
    >>> confirm = initsearch.ConfirmConfig(top=2, seeds=5)
    >>> initsearch.search("resnet_ds", budget=20, run=run, confirm=confirm)  # doctest: +SKIP
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from initsearch.errors import UsageError

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

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UsageError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise UsageError(f"study name {self.name!r} may hold only letters, digits, '.', '_' and '-'")
        if self.gpus_per_trial is not None and not self.gpus_per_trial >= 0:
            raise UsageError(f"gpus_per_trial must be >= 0, not {self.gpus_per_trial}")


@dataclass(frozen=True)
class ConfirmConfig:
    """The confirmation stage that ends every search.

    The ``top`` best distinct candidates of the search, PyTorch's default and the two best
    baselines are trained again on ``seeds`` fresh seeds (never used by the search), on the full
    protocol, and compared seed by seed (see :mod:`initsearch.stats`).

    Attributes:
        top: candidates to confirm (>= 1); ``--confirm-top``.
        seeds: fresh seeds per recipe (>= 2 for an interval), ``0`` turns the stage off;
            ``None`` takes the profile's ``confirm_seeds`` (3 on ``cpu``, 5 on ``gpu``).
    """

    top: int = 3
    seeds: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 1:
            raise UsageError(f"confirm top must be a whole number >= 1, not {self.top!r}; "
                             "turn the confirmation off with --confirm-seeds 0")
        if self.seeds is not None and (isinstance(self.seeds, bool) or not isinstance(self.seeds, int)
                                       or self.seeds < 0 or self.seeds == 1):
            raise UsageError(f"confirm seeds must be 0 (off) or a whole number >= 2 (a confidence "
                             f"interval needs two seeds), not {self.seeds!r}")
