"""One study end to end (:func:`search`, exported as ``initsearch.search``): plan, search,
confirm the best on fresh seeds, recommend. The module is not called ``search`` so that
importing it never shadows the function on the package.

Every input is checked before anything is written (:func:`~initsearch.plan.plan_study` raises
:class:`~initsearch.errors.UsageError` with nothing recorded). One backend session (one Ray
start) serves both stages: the :class:`StudyDriver` runs the search, then a
:class:`~initsearch.confirm.ConfirmDriver` per round of the race; the verdict is read from what
the study recorded (:func:`~initsearch.recommend.verdict_of`), the same way ``initsearch report``
reads it later.

On a study shared with other drivers (a database storage), a driver whose share of the budget is
done waits for the others' trials in flight (``RunConfig.wait_for_others``), so that it judges
the whole study; if they are still running then, it reports the study as partial and recommends
nothing. One driver per study runs the race (:class:`~initsearch.confirm.RaceClaim`).

State lives under ``<home>/mlruns/`` (``home`` defaults to ``$INITSEARCH_HOME`` or the current
directory): the MLflow store, ``optuna/<study>.journal`` (Optuna's journal storage, so
``resume`` continues a study) and ``ray/`` (Tune's experiment folders).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import optuna
from torch import nn

from initsearch.cache import ResultCache, model_fingerprint
from initsearch.confirm import (ConfirmDriver, Entry, RaceClaim, fresh_seeds, load_plan, merge,
                                run_race, save_plan, select)
from initsearch.data import Splits, load_splits
from initsearch.engine.driver import StudyDriver
from initsearch.engine.progress import Progress
from initsearch.errors import UsageError
from initsearch.plan import StudyPlan, plan_study
from initsearch.race import RaceRules
from initsearch.recipe import Recipe
from initsearch.record import Attr, StudyAttr
from initsearch.recommend import SearchResult, Verdict, build_table, recommended_recipe, verdict_of
from initsearch.report import close_figures, plots
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.stats import chance_level
from initsearch.storage import StudyStorage
from initsearch.tracking import Tracker, review_hint


def search(arch: str = "resnet_ds", *, model_fn: Callable[[], nn.Module] | None = None,
           arch_options: dict | None = None, dataset: str = "cifar10",
           data_dir: str | os.PathLike | None = None, budget: int = 50, profile: str | None = None,
           space: str | None = None, seed: int = 0, objective: str | None = None,
           run: RunConfig | None = None, confirm: ConfirmConfig | None = None) -> SearchResult:
    """Search init recipes for a model, confirm the best on fresh seeds, and recommend one.

    Args:
        arch: a built-in architecture (``initsearch archs``), or ``"package.module:function"``.
        model_fn: instead of ``arch``, a callable returning a fresh ``nn.Module``.
        arch_options: architecture parameters (e.g. ``{"depth": 56}``), over the profile's.
        dataset: ``"cifar10"``.
        data_dir: where the data is (else ``$INITSEARCH_DATA``, else torchvision downloads it).
        budget: search trials in the study, baselines included (a resumed study counts what
            it has); the confirmation comes on top.
        profile: a trial protocol from ``trials/`` (or a path); None picks ``gpu`` or ``cpu``.
        space: a search space from ``spaces/`` (or a path); None picks ``<arch>`` or ``default``.
        seed: seeds the TPE sampler and offsets the protocol's training seeds.
        objective: what a trial scores, over the profile's ``objective``: ``"final"`` (the last
            epoch's accuracy), ``"auc"`` (the mean over the epochs: trains fastest and ends
            high) or ``"epochs_to:0.4"`` (how early it first reaches 40 %); the search, its
            pruner, the race and the evidence all read it
            (:meth:`~initsearch.protocol.Protocol.score`).
        run: how and where it runs (:class:`~initsearch.settings.RunConfig`: study name,
            resume, backend, GPU share, home, tracking store, progress bars, how long a driver
            of a shared study waits for the others).
        confirm: the confirmation stage (:class:`~initsearch.settings.ConfirmConfig`: top
            candidates, fresh seeds; ``seeds=0`` turns it off).

    Returns:
        A :class:`~initsearch.recommend.SearchResult`: ``best`` (the recommended recipe with
        its evidence, possibly a baseline, or None), ``verdict``, the search ``table``.

    Example:
        >>> result = initsearch.search("resnet_ds", data_dir="data/cifar10", budget=20,
        ...                            run=initsearch.RunConfig(backend="local"))  # doctest: +SKIP
        >>> print(result.verdict.text)                                        # doctest: +SKIP
        >>> result.best.apply(my_model)                                       # doctest: +SKIP
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise UsageError(f"budget must be a whole number >= 1, not {budget!r}")
    run, confirm = run or RunConfig(), confirm or ConfirmConfig()
    plan = plan_study(arch, model_fn=model_fn, arch_options=arch_options, dataset=dataset,
                      data_dir=data_dir, budget=budget, profile=profile, space=space, seed=seed,
                      objective=objective, run=run, confirm=confirm)
    return run_study(plan, run, confirm)


def confirm_recipes(recipes: list[Recipe] | None = None, arch: str = "resnet_ds", *,
                    from_study: str | None = None, model_fn: Callable[[], nn.Module] | None = None,
                    arch_options: dict | None = None, dataset: str = "cifar10",
                    data_dir: str | os.PathLike | None = None, profile: str | None = None,
                    space: str | None = None, seed: int = 0, objective: str | None = None,
                    run: RunConfig | None = None,
                    confirm: ConfirmConfig | None = None) -> SearchResult:
    """Race recipes against PyTorch's default and every applicable baseline under another
    protocol -- the size and length the user will train -- with no search.

    A user who searched a small proxy on a CPU confirms at the target size: ``arch_options``
    (e.g. ``{"depth": 20}``), ``profile`` (``"gpu"``), ``confirm.epochs`` and
    ``confirm.train_size`` set the confirmation's fidelity. The verdict is the search's
    (:mod:`initsearch.recommend`), and reports the rank agreement (Kendall tau) between the
    scores the recipes came with (their search score, ``meta.search_val_acc``) and the means
    measured here.

    Args:
        recipes: recipe files' contents (:meth:`Recipe.load`) to race as candidates.
        from_study: instead of (or besides) ``recipes``, the entries of a finished study's race
            (its candidates and baselines, with their search scores), read from ``run.home`` /
            ``run.storage``.
        Others as for :func:`search`; ``run.name`` names this confirmation's own study.

    Returns:
        A :class:`~initsearch.recommend.SearchResult` with an empty search ``table``.

    Example:
        >>> best = initsearch.Recipe.load("best-resnet_ds-cifar10-20261207.yaml")  # doctest: +SKIP
        >>> r = initsearch.confirm_recipes([best], "resnet_ds", arch_options={"depth": 20},
        ...                                confirm=initsearch.ConfirmConfig(epochs=12))  # doctest: +SKIP
        >>> print(r.verdict.text)                                            # doctest: +SKIP
    """
    run = run or RunConfig()
    entries = [Entry(r.name or f"recipe-{i + 1}", r, None, r.meta.get("trial"), {},
                     r.meta.get("search_val_acc")) for i, r in enumerate(recipes or [])]
    if from_study is not None:
        entries += _race_entries(from_study, run)
    if not entries:
        raise UsageError("nothing to confirm: pass recipe files or --from-study STUDY")
    confirm = confirm or ConfirmConfig()
    plan = plan_study(arch, model_fn=model_fn, arch_options=arch_options, dataset=dataset,
                      data_dir=data_dir, budget=0, profile=profile, space=space, seed=seed,
                      objective=objective, run=run, confirm=confirm)
    return run_study(plan, run, confirm, entries)


def _race_entries(name: str, run: RunConfig) -> list[Entry]:
    """The entries of study ``name``'s race (its candidates and baselines with their scores)."""
    store = StudyStorage(run.storage, run.state / "optuna")
    study = store.peek(name) if name in store.study_names() else None
    plan = load_plan(study) if study is not None else None
    if plan is None:
        raise UsageError(f"no raced study {name!r} in {store.display}; check --from-study, "
                         "--home or --storage")
    return plan[0]


def run_study(plan: StudyPlan, run: RunConfig, confirm: ConfirmConfig,
              candidates: list[Entry] = (), race_baselines: bool = True) -> SearchResult:
    """Run a planned study: :func:`search` (``plan.budget`` >= 1) or :func:`confirm_recipes`
    (``budget`` 0, the ``candidates`` racing besides PyTorch's default and every applicable
    baseline; with ``race_baselines=False`` the candidates race alone, as a claim's recipe
    and its control do). Loads the data, names and opens the study."""
    t_start = time.perf_counter()
    splits = load_splits(plan.dataset, plan.data_dir, **plan.protocol.split_sizes())
    store = StudyStorage(run.storage, plan.state / "optuna")
    label = plan.model.label if plan.budget else f"confirm-{plan.model.label}"
    name = _study_name(run.name, run.resume, store, label, plan.dataset)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # The study's lock (a journal has one driver) is held from its first read to the very end.
    storage = store.open(name)
    try:
        if run.resume:  # a study must not mix protocols or spaces
            plan = plan.resumed(name, optuna.load_study(study_name=name, storage=storage).user_attrs)
        twin = None if run.resume or not run.cache else _twin(store, name, plan)
        session = _Session(plan, splits, run, confirm, t_start, race_baselines)
        return session.execute(name, storage, store.multi_driver, twin, list(candidates))
    finally:
        store.close()


@dataclass(frozen=True)
class _Open:
    """An opened study: its name, the Optuna study, its driver, the MLflow parent run."""

    name: str
    study: optuna.Study
    driver: StudyDriver
    parent: str


class _Session:
    """One run of a planned study: open it, search, wait for other drivers, race, record."""

    def __init__(self, plan: StudyPlan, splits: Splits, run: RunConfig, confirm: ConfirmConfig,
                 t_start: float, race_baselines: bool = True) -> None:
        self.plan, self.splits, self.run, self.confirm, self.t_start = plan, splits, run, confirm, t_start
        self.race_baselines = race_baselines
        self.chance = chance_level(splits.num_classes, len(splits.val))
        self.tracker: Tracker | None = None
        self.cache: ResultCache | None = None
        self.bar: Progress | None = None
        self.drivers: list = []
        self.slots = 1
        self.seconds = {"setup": 0.0, "confirm": 0.0}

    def execute(self, name: str, storage, shared: bool, twin: optuna.Study | None,
                candidates: list[Entry]) -> SearchResult:
        opened = self._open(name, storage, shared)
        status, verdict, replayed = "KILLED", None, 0
        try:  # from the parent run's start on, every way out ends it
            replayed = self._prepare(opened, twin)
            self.seconds["setup"] = time.perf_counter() - self.t_start
            with self._backend() as backend:
                others = self._search(opened, backend)
                self.bar.close()
                t_confirm = time.perf_counter()
                verdict = (self._partial(opened, others) if others else
                           self._confirm(opened, backend, candidates))
                self.seconds["confirm"] = time.perf_counter() - t_confirm
            status = "FINISHED"
        finally:
            opened.driver.close()
            self.bar.close()
            result = self._record(opened, status, verdict, replayed)
        return result

    # -- the stages --------------------------------------------------------------------------------
    def _open(self, name: str, storage, shared: bool) -> _Open:
        """Open the study, its MLflow parent run, the result cache and the search's driver."""
        plan, run, protocol = self.plan, self.run, self.plan.protocol
        # writes the store cannot take now wait in a spool file; a resumed search writes them first
        self.tracker = Tracker(plan.tracking_uri, plan.experiment, plan.state / "artifacts",
                               spool=plan.state / "tracking-pending" / f"{name}.jsonl")
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                    pruner=protocol.make_pruner(), load_if_exists=run.resume)
        # A resumed study continues the sampler's stream instead of replaying its first draws.
        study.sampler = optuna.samplers.TPESampler(seed=plan.seed + len(study.trials))
        parent = self.tracker.start_search(
            name, {**plan.settings, "backend": run.backend, "budget": plan.budget,
                   "epochs": protocol.epochs, "gpus_per_trial": protocol.gpus_per_trial,
                   "confirm_top": self.confirm.top, "confirm_seeds": protocol.confirm_seeds,
                   "confirm_max_seeds": protocol.confirm_max_seeds,
                   "min_effect": protocol.min_effect, "confirm_rank": protocol.confirm_rank,
                   "confirm_cost_ratio": protocol.confirm_cost_ratio,
                   "confirm_failures": protocol.confirm_failures},
            protocol.to_dict(), {"arch": plan.model.label,
                                 "arch_options": json.dumps(plan.model.options, sort_keys=True)})
        self.cache = ResultCache(self.tracker, model_fingerprint(plan.model.probe),
                                 self.splits.fingerprint, reuse=run.cache)
        self.bar = Progress(plan.budget, enabled=run.progress)
        driver = StudyDriver(study, plan.space, protocol, self.tracker, self._layers, plan.budget,
                             self.bar, shared=shared, cache=self.cache)
        self.drivers.append(driver)
        return _Open(name, study, driver, parent)

    def _prepare(self, opened: _Open, twin: optuna.Study | None) -> int:
        """A new study records its set-up; a resumed one recovers its interrupted trials. Then
        the baselines are queued, and the cached draws of an earlier ``twin`` study (returns
        how many)."""
        study, driver = opened.study, opened.driver
        if self.run.resume:
            self.tracker.replay_spool()
            driver.recover_interrupted()
            if not driver.shared:  # alone on the study: any run still RUNNING is a dead driver's
                self.tracker.end_abandoned(opened.name, _ended_runs(study))
        else:
            for key, value in {**self.plan.settings, **self.plan.content()}.items():
                study.set_user_attr(key, value)
            study.set_user_attr(StudyAttr.CHANCE, self.chance)
        driver.enqueue_baselines()
        replayed = driver.replay(twin) if twin is not None else 0
        if replayed:
            study.set_user_attr(StudyAttr.REPLAYS, twin.study_name)
        return replayed

    def _search(self, opened: _Open, backend) -> int:
        """Run the study's remaining trials; on a shared study, then wait up to
        ``wait_for_others`` seconds for the other drivers' trials in flight (running any that
        a dead driver left). Returns how many other drivers' trials are still in flight (0: the
        study is whole)."""
        driver, deadline = opened.driver, None
        while True:
            if driver.remaining:
                self.slots = max(self.slots, backend.run(driver, opened.name))
            if driver.halted:
                raise UsageError(f"search stopped: {driver.halted}; fix the cluster or the machine, "
                                 f"then continue with --resume --study {opened.name}")
            others = driver.others_in_flight() if driver.shared else 0
            if deadline is None and others:  # the wait starts when this driver's share is done
                deadline = time.monotonic() + self.run.wait_for_others
                print(f"initsearch: waiting up to {self.run.wait_for_others:.0f} s for {others} "
                      "trial(s) in flight on other drivers (--wait-for-others)", file=sys.stderr)
            if not others or time.monotonic() >= deadline:
                return others
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def _partial(self, opened: _Open, others: int) -> Verdict:
        finished = len(opened.driver.settled_trials())
        return Verdict(f"partial: {finished} of {self.plan.budget} trials finished, {others} still "
                       f"in flight on other drivers after waiting {self.run.wait_for_others:.0f} s; "
                       "no race and no recommendation from this driver. Once they end, "
                       f"`initsearch run --resume --study {opened.name}` (same options) races the "
                       f"whole study; `initsearch report {opened.name}` shows it so far", None,
                       "partial", chance=self.chance)

    def _confirm(self, opened: _Open, backend, candidates: list[Entry]) -> Verdict:
        """The race (entries, seeds and rules recorded before any result), then the verdict
        read from the study; on a shared study only the driver holding the claim races."""
        plan, study = self.plan, opened.study
        if not plan.protocol.confirm_seeds:
            study.set_user_attr(StudyAttr.RACE, {})
            return verdict_of(study)
        claim = None
        if opened.driver.shared:
            claim = RaceClaim(study, interval=opened.driver.heartbeat_interval,
                              stale_after=5 * opened.driver.heartbeat_interval)
            holder = claim.take()
            if holder is not None:
                return Verdict(f"partial: the race of study {opened.name} runs on driver {holder}; "
                               f"`initsearch report {opened.name}` shows its verdict", None,
                               "partial", chance=self.chance)
        try:
            fidelity = plan.protocol.for_confirmation()
            rules = RaceRules.of(plan.protocol, self.splits.num_classes, len(self.splits.confirm))
            entries = (merge(select(study, plan.space.baselines(), self.confirm.top, self.chance),
                             candidates) if self.race_baselines else candidates)
            seeds = fresh_seeds(plan.protocol.seeds, rules.max_seeds)
            save_plan(study, entries, seeds, rules, fidelity)
            confirm_bar = Progress(0, enabled=self.run.progress, stage="confirm")

            def train(jobs: list) -> None:  # one round of the race, every job at once
                confirm_bar.extend(len(jobs), f"({len({j.entry.name for j in jobs})} racing)")
                self.drivers.append(ConfirmDriver(study, jobs, fidelity, self.tracker, self._layers,
                                                  confirm_bar, self.cache))
                self.slots = max(self.slots, backend.run(  # one Tune experiment a round
                    self.drivers[-1], f"{opened.name}-confirm{len(self.drivers) - 1}"))

            try:
                run_race(study, entries, seeds, rules, train)
            finally:
                confirm_bar.close()
        finally:
            if claim is not None:
                claim.release()
        return verdict_of(study)

    def _record(self, opened: _Open, status: str, verdict: Verdict | None,
                replayed: int) -> SearchResult:
        """The result, and the search's MLflow run ended with its texts and figures."""
        plan, study = self.plan, opened.study
        table = build_table(study)
        evidence = {"study": opened.name, **plan.settings,
                    "objective": plan.protocol.objective_label(),
                    "protocol_sha256": plan.protocol.content_hash(),
                    "precision": plan.protocol.precision,
                    "search": {s.lower(): sum(r["state"] == s for r in table)
                               for s in ("COMPLETE", "PRUNED", "FAIL")}}
        best = recommended_recipe(verdict, evidence) if verdict else None
        url = self.tracker.ui_url()
        result = SearchResult(best, table, opened.name, self.tracker.resolve(opened.parent),
                              verdict, url, review_hint(plan.tracking_uri, url, plan.state.parent),
                              score_column=plan.protocol.score_column)
        texts, figures = {"comparison.txt": result.comparison(), "trials.csv": result.to_csv()}, {}
        if status == "FINISHED":
            wall = time.perf_counter() - self.t_start
            compute = sum(d.compute_seconds for d in self.drivers)
            result.stats = {"wall_seconds": wall, "setup_seconds": self.seconds["setup"],
                            "compute_seconds": compute,
                            "bookkeeping_seconds": sum(d.bookkeeping_seconds for d in self.drivers),
                            "confirm_seconds": self.seconds["confirm"], "slots": self.slots,
                            "outside_compute_share": 1 - compute / (wall * self.slots),
                            "cached_trials": self.cache.hits, "replayed_draws": replayed,
                            **{f"n_{s}": n for s, n in evidence["search"].items()}}
            texts["verdict.txt"] = "\n\n".join(filter(None, [verdict.table(), verdict.text]))
            figures = {f"plots/{name}": fig for name, fig in plots(study, verdict).items()}
        if best is not None:
            texts["best_recipe.yaml"] = best.dumps()
        self.tracker.end_search(result.stats, texts, status, figures)
        close_figures(figures.values())
        return result

    # -- helpers -----------------------------------------------------------------------------------
    def _backend(self):
        plan = self.plan
        if self.run.backend == "ray":
            from initsearch.engine.ray_backend import RayBackend

            return RayBackend(self.splits, plan.model.factory, plan.roles,
                              threads=plan.protocol.threads_per_trial,
                              gpus_per_trial=plan.protocol.gpus_per_trial, flags=plan.state / "ray",
                              address=self.run.ray_address, storage=self.run.ray_storage)
        from initsearch.engine.local import LocalBackend

        return LocalBackend(self.splits, plan.model.factory, plan.roles)

    def _layers(self, recipe: Recipe) -> list[dict]:
        """The recipe's per-layer plan on the model, for a trial's MLflow run."""
        return recipe.plan(self.plan.model.probe, self.plan.roles)


def _ended_runs(study: optuna.Study) -> dict[str, str]:
    """``{MLflow run id: state}`` of every trial and race job the study recorded as ended."""
    ended = {t.user_attrs[Attr.RUN_ID]: t.state.name for t in study.get_trials(deepcopy=False)
             if t.state.is_finished() and Attr.EPOCHS in t.user_attrs and Attr.RUN_ID in t.user_attrs}
    ended.update({r["run_id"]: r["state"] for k, r in study.user_attrs.items()
                  if k.startswith(StudyAttr.JOB) and r.get("run_id")})
    return ended


#: Seconds between two looks at the other drivers' trials while waiting for them.
_POLL_SECONDS = 5.0


def _twin(store: StudyStorage, name: str, plan: StudyPlan) -> optuna.Study | None:
    """The newest other study run with the same settings (seed included), protocol and space:
    its draws are this study's to replay from the cache (:meth:`StudyDriver.replay`). A study
    that did not record its space content is nobody's twin."""
    for other in reversed(store.study_names()):
        study = store.peek(other) if other != name else None
        if (study is not None and "space_sha256" in study.user_attrs
                and not plan.differences(study.user_attrs)):
            return study
    return None


def _study_name(study: str | None, resume: bool, store: StudyStorage, label: str, dataset: str) -> str:
    if resume:
        if study is None:
            found = [n for n in store.study_names() if n.startswith(f"{label}-{dataset}-")]
            if not found:
                raise UsageError(f"--resume found no earlier {label} study in {store.display}; "
                                 "drop --resume or pass --study NAME")
            return found[-1]
        if not store.exists(study):
            raise UsageError(f"no study {study!r} in {store.display} to resume; drop --resume to start it")
        return study
    if study is not None and store.exists(study):
        raise UsageError(f"study {study!r} already exists; pass --resume to continue it "
                         "(several drivers may share a study in a database --storage) "
                         "or choose another --study name")
    return study or f"{label}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"