"""One study end to end (:func:`search`, exported as ``initsearch.search``): validate everything,
search, confirm the best on fresh seeds, recommend. The module is not called ``search`` so that
importing it never shadows the function on the package.

One backend session (one Ray start) serves both stages: the :class:`StudyDriver` runs the search,
then a :class:`~initsearch.confirm.ConfirmDriver` the confirmation; the verdict is read from what
the study recorded (:func:`~initsearch.recommend.verdict_of`), the same way ``initsearch report``
reads it later.

All input is checked before anything is written: a bad arch, dataset, profile, space, budget,
data directory or tracking store raises :class:`~initsearch.errors.UsageError` with nothing
recorded. State lives under ``<home>/mlruns/`` (``home`` defaults to ``$INITSEARCH_HOME`` or the
current directory): the MLflow store, ``optuna/<study>.journal`` (Optuna's journal storage, so
``resume`` continues a study) and ``ray/`` (Tune's experiment folders).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Callable

import optuna
import torch
from torch import nn

from initsearch.archs import build_model
from initsearch.cache import ResultCache, model_fingerprint
from initsearch.confirm import (ConfirmDriver, Entry, fresh_seeds, load_plan, merge, run_race,
                                save_plan, select)
from initsearch.data import load_splits
from initsearch.engine.driver import StudyDriver
from initsearch.engine.progress import Progress
from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.recipe import Recipe
from initsearch.recommend import SearchResult, build_table, recommended_recipe, verdict_of
from initsearch.report import close_figures, plots
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.space import available_spaces, load_space
from initsearch.stats import chance_level
from initsearch.storage import StudyStorage
from initsearch.tracking import Tracker, check_tracking_uri, default_tracking_uri
from initsearch.trial import resolve_device, resolve_precision


def search(arch: str = "resnet_ds", *, model_fn: Callable[[], nn.Module] | None = None,
           arch_options: dict | None = None, dataset: str = "cifar10",
           data_dir: str | os.PathLike | None = None, budget: int = 50, profile: str | None = None,
           space: str | None = None, seed: int = 0, run: RunConfig | None = None,
           confirm: ConfirmConfig | None = None) -> SearchResult:
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
        run: how and where it runs (:class:`~initsearch.settings.RunConfig`: study name,
            resume, backend, GPU share, home, tracking store, progress bars).
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
    return _run_study(arch, model_fn=model_fn, arch_options=arch_options, dataset=dataset,
                      data_dir=data_dir, budget=budget, profile=profile, space=space, seed=seed,
                      run=run, confirm=confirm)


def confirm_recipes(recipes: list[Recipe] | None = None, arch: str = "resnet_ds", *,
                    from_study: str | None = None, model_fn: Callable[[], nn.Module] | None = None,
                    arch_options: dict | None = None, dataset: str = "cifar10",
                    data_dir: str | os.PathLike | None = None, profile: str | None = None,
                    space: str | None = None, seed: int = 0, run: RunConfig | None = None,
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
    return _run_study(arch, model_fn=model_fn, arch_options=arch_options, dataset=dataset,
                      data_dir=data_dir, budget=0, profile=profile, space=space, seed=seed,
                      run=run, confirm=confirm or ConfirmConfig(), candidates=entries)


def _race_entries(name: str, run: RunConfig) -> list[Entry]:
    """The entries of study ``name``'s race (its candidates and baselines with their scores)."""
    store = StudyStorage(run.storage, resolve_home(run.home) / "mlruns" / "optuna")
    study = store.peek(name) if name in store.study_names() else None
    plan = load_plan(study) if study is not None else None
    if plan is None:
        raise UsageError(f"no raced study {name!r} in {store.display}; check --from-study, "
                         "--home or --storage")
    return plan[0]


def _run_study(arch: str, *, model_fn, arch_options, dataset, data_dir, budget: int, profile,
               space, seed: int, run: RunConfig | None, confirm: ConfirmConfig | None,
               candidates: list[Entry] = ()) -> SearchResult:
    """:func:`search` (``budget`` >= 1) or :func:`confirm_recipes` (``budget`` 0, the
    ``candidates`` racing besides the baselines)."""
    t_start = time.perf_counter()
    run = run or RunConfig()
    confirm = confirm or ConfirmConfig()
    # -- 1. validate every input; nothing is written before this block ends ----------------------
    builtin = arch if model_fn is None and ":" not in arch else None
    protocol, arch_opts = load_protocol(profile).for_arch(builtin)
    protocol = dataclasses.replace(protocol, seeds=tuple(s + seed for s in protocol.seeds))
    if run.gpus_per_trial is not None:
        protocol = dataclasses.replace(protocol, gpus_per_trial=run.gpus_per_trial)
    if protocol.device == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"profile {protocol.name!r} trains on CUDA but no GPU is visible; "
                         "use --profile cpu")
    # what will run is what is hashed and recorded: the cache and resume tell bf16 from fp32
    auto = protocol.precision == "auto"
    protocol = dataclasses.replace(protocol, precision=resolve_precision(
        protocol.precision, resolve_device(protocol.device)))
    if protocol.gpus_per_trial > 0 and not torch.cuda.is_available():
        raise UsageError(f"gpus_per_trial={protocol.gpus_per_trial} but no CUDA GPU is visible; "
                         "use --gpus-per-trial 0 or a machine with a GPU")
    if model_fn is not None and arch_options:
        raise UsageError("arch_options apply to a built-in arch or a 'module:function' factory; "
                         "with model_fn, bind them into it (functools.partial(factory, ...))")
    protocol = confirm.over(protocol)
    if not budget and not protocol.confirm_seeds:  # before the model and the data are loaded
        raise UsageError("a confirmation without seeds confirms nothing; drop --confirm-seeds 0")
    label = _label(model_fn) if model_fn else arch.rpartition(":")[2]
    named_space = arch if model_fn is None and arch in available_spaces() else "default"
    if model_fn is None:
        arch_opts.update(arch_options or {})
        model_fn = functools.partial(build_model, arch, options=arch_opts)
    probe = _build_probe(model_fn)
    space_obj = load_space(space or named_space).bind(probe)  # labels every layer, or fails clearly
    roles = space_obj.model_roles  # discovered once, when the space was bound to the model
    plan_for = functools.partial(_plan, probe, roles)
    splits = load_splits(dataset, data_dir, **protocol.split_sizes())
    chance = chance_level(splits.num_classes, len(splits.val))
    rules = (protocol.race_rules(chance_level(splits.num_classes, len(splits.confirm)))
             if protocol.confirm_seeds else None)
    state = resolve_home(run.home) / "mlruns"
    store = StudyStorage(run.storage, state / "optuna")
    study_name = _study_name(run.name, run.resume, store, label if budget else f"confirm-{label}",
                             dataset)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {"arch": label, "dataset": dataset, "profile": protocol.name,
                "space": space_obj.name, "seed": seed, "arch_options": arch_opts}
    tracking_uri = run.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(state.parent)
    check_tracking_uri(tracking_uri)
    # The study's lock (a journal has one driver) is held from its first read to the very end.
    storage = store.open(study_name)
    try:
        if run.resume:  # a study must not mix protocols or spaces
            stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs
            if auto:  # a study goes on in the precision it began in, wherever it is resumed
                protocol = dataclasses.replace(protocol, precision=stored.get(
                    "protocol", {}).get("precision", protocol.precision))
            _check_same_study(study_name, stored, settings, protocol, space_obj)
        twin = None if run.resume or not run.cache else _twin(store, study_name, settings,
                                                               protocol, space_obj)
        return _search(study_name, storage, store.multi_driver, settings, protocol, space_obj,
                       splits, model_fn, roles, plan_for, chance, state, tracking_uri, label,
                       arch_opts, budget, seed, rules, run, confirm, t_start,
                       model_fingerprint(probe), twin, list(candidates))
    finally:
        store.close()


def _search(study_name: str, storage, shared: bool, settings: dict, protocol, space_obj, splits,
            model_fn, roles, plan_for, chance: float, state: Path, tracking_uri: str, label: str,
            arch_opts: dict, budget: int, seed: int, rules, run: RunConfig,
            confirm: ConfirmConfig, t_start: float, model_key: str,
            twin: optuna.Study | None, candidates: list[Entry]) -> SearchResult:

    # -- 2. open the tracking runs and the study ---------------------------------------------------
    # writes the store cannot take now wait in a spool file; a resumed search writes them first
    tracker = Tracker(tracking_uri, f"initsearch-{label}", state / "artifacts",
                      spool=state / "tracking-pending" / f"{study_name}.jsonl")
    study_obj = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                    pruner=protocol.make_pruner(), load_if_exists=run.resume)
    # A resumed study continues the sampler's stream instead of replaying its first draws.
    study_obj.sampler = optuna.samplers.TPESampler(seed=seed + len(study_obj.trials))
    parent = tracker.start_search(
        study_name, {**settings, "backend": run.backend, "budget": budget,
                     "epochs": protocol.epochs, "gpus_per_trial": protocol.gpus_per_trial,
                     "confirm_top": confirm.top, "confirm_seeds": protocol.confirm_seeds,
                     "confirm_max_seeds": protocol.confirm_max_seeds,
                     "min_effect": protocol.min_effect, "confirm_rank": protocol.confirm_rank},
        protocol.to_dict(), {"arch": label, "arch_options": json.dumps(arch_opts, sort_keys=True)})
    bar = Progress(budget, enabled=run.progress)
    cache = ResultCache(tracker, model_key, splits.fingerprint, reuse=run.cache)
    driver = StudyDriver(study_obj, space_obj, protocol, tracker, plan_for, budget, bar,
                         shared=shared, cache=cache)
    if run.resume:
        tracker.replay_spool()
        driver.recover_interrupted()
        if not shared:  # alone on the study: any run still RUNNING is a dead driver's
            tracker.end_abandoned(study_name)
    else:
        for key, value in {**settings, **_content(protocol, space_obj)}.items():
            study_obj.set_user_attr(key, value)
        study_obj.set_user_attr("chance_acc", chance)
    driver.enqueue_baselines()
    replayed = driver.replay(twin) if twin is not None else 0
    if replayed:
        study_obj.set_user_attr("replays", twin.study_name)

    # -- 3. search, confirm, recommend --------------------------------------------------------------
    status, verdict, drivers, slots = "KILLED", None, [driver], 1
    setup = time.perf_counter() - t_start
    confirm_seconds = 0.0
    if run.backend == "ray":
        from initsearch.engine.ray_backend import RayBackend

        backend = RayBackend(splits, model_fn, roles, threads=protocol.threads_per_trial,
                             gpus_per_trial=protocol.gpus_per_trial, flags=state / "ray",
                             address=run.ray_address, storage=run.ray_storage)
    else:
        from initsearch.engine.local import LocalBackend

        backend = LocalBackend(splits, model_fn, roles)
    try:
        with backend:
            if driver.remaining:
                slots = backend.run(driver, study_name)
            if driver.halted:
                raise UsageError(f"search stopped: {driver.halted}; fix the cluster or the "
                                 f"machine, then continue with --resume --study {study_name}")
            bar.close()
            t_confirm = time.perf_counter()
            if rules is not None:  # the race: entries, seeds and rules recorded before any result
                fidelity = protocol.for_confirmation()
                entries = merge(select(study_obj, space_obj.baselines(), confirm.top, chance),
                                candidates)
                seeds = fresh_seeds(protocol.seeds, rules.max_seeds)
                save_plan(study_obj, entries, seeds, rules, fidelity)
                confirm_bar = Progress(0, enabled=run.progress, stage="confirm")

                def train(jobs: list) -> None:  # one round of the race, every job at once
                    nonlocal slots
                    confirm_bar.extend(len(jobs), f"({len({j.entry.name for j in jobs})} racing)")
                    drivers.append(ConfirmDriver(study_obj, jobs, fidelity, tracker, plan_for,
                                                 confirm_bar, cache))
                    slots = max(slots, backend.run(drivers[-1],  # one Tune experiment a round
                                                   f"{study_name}-confirm{len(drivers) - 1}"))

                try:
                    run_race(study_obj, entries, seeds, rules, train)
                finally:
                    confirm_bar.close()
            else:
                study_obj.set_user_attr("confirm", {})
            verdict = verdict_of(study_obj)
            confirm_seconds = time.perf_counter() - t_confirm
        status = "FINISHED"
    finally:
        driver.close()
        bar.close()
        table = build_table(study_obj)
        evidence = {"study": study_name, **settings, "protocol_sha256": protocol.content_hash(),
                    "precision": protocol.precision,
                    "search": {s.lower(): sum(r["state"] == s for r in table)
                               for s in ("COMPLETE", "PRUNED", "FAIL")}}
        best = recommended_recipe(verdict, evidence) if verdict else None
        result = SearchResult(best, table, study_name, tracker.resolve(parent), verdict,
                              tracker.ui_url())
        texts, figures = {"comparison.txt": result.comparison(), "trials.csv": result.to_csv()}, {}
        if status == "FINISHED":
            wall = time.perf_counter() - t_start
            compute = sum(d.compute_seconds for d in drivers)
            result.stats = {"wall_seconds": wall, "setup_seconds": setup, "compute_seconds": compute,
                            "bookkeeping_seconds": sum(d.bookkeeping_seconds for d in drivers),
                            "confirm_seconds": confirm_seconds, "slots": slots,
                            "outside_compute_share": 1 - compute / (wall * slots),
                            "cached_trials": cache.hits,
                            "replayed_draws": replayed,
                            **{f"n_{s}": n for s, n in evidence["search"].items()}}
            texts["verdict.txt"] = "\n\n".join(filter(None, [verdict.table(), verdict.text]))
            figures = {f"plots/{name}": fig for name, fig in plots(study_obj, verdict).items()}
        if best is not None:
            texts["best_recipe.yaml"] = best.dumps()
        tracker.end_search(result.stats, texts, status, figures)
        close_figures(figures.values())
    return result


def _content(protocol, space) -> dict:
    """What a resumed study must share with the one it continues: how trials train and are scored
    (the protocol, as applied to the model) and what they draw from (the bound space)."""
    return {"protocol_sha256": protocol.content_hash(), "protocol": protocol.to_dict(),
            "space_sha256": space.content_hash(), "space_content": space.content()}


def _twin(store: StudyStorage, name: str, settings: dict, protocol, space) -> optuna.Study | None:
    """The newest other study run with the same settings (seed included), protocol and space:
    its draws are this study's to replay from the cache (:meth:`StudyDriver.replay`). A study
    that did not record its space content is nobody's twin."""
    for other in reversed(store.study_names()):
        study = store.peek(other) if other != name else None
        if (study is not None and "space_sha256" in study.user_attrs
                and not _differences(study.user_attrs, settings, protocol, space)):
            return study
    return None


def _differences(stored: dict, settings: dict, protocol, space) -> list[str]:
    """How a study's recorded attributes differ from these settings, protocol and space, one
    phrase each (empty: the same study set-up)."""
    differ = [f"{k} {stored.get(k)!r} (now {v!r})" for k, v in settings.items() if stored.get(k) != v]
    now = _content(protocol, space)
    for what, sha, body in (("protocol", "protocol_sha256", "protocol"),
                            ("space", "space_sha256", "space_content")):
        if sha in stored and stored[sha] != now[sha]:  # older studies did not record the space
            keys = sorted(k for k in {*stored.get(body, {}), *now[body]}
                          if stored.get(body, {}).get(k) != now[body].get(k))
            differ.append(f"another {what} content ({', '.join(keys) or 'sha256'} differ)")
    return differ


def _check_same_study(name: str, stored: dict, settings: dict, protocol, space) -> None:
    """Refuse to resume a study with other settings, another protocol or another space: its
    trials would not be comparable. One line says what differs."""
    differ = _differences(stored, settings, protocol, space)
    if differ:
        raise UsageError(f"study {name!r} was run with {'; '.join(differ)}; resume it with the "
                         "same settings and files, or start a new --study")


def resolve_home(home: str | os.PathLike | None) -> Path:
    """The folder holding ``mlruns/``: the argument, else ``$INITSEARCH_HOME``, else the cwd."""
    return Path(home or os.environ.get("INITSEARCH_HOME") or Path.cwd()).resolve()


def _label(model_fn: Callable[[], nn.Module]) -> str:
    """A name for studies and experiments: the factory's name (through partials), lambdas and
    odd characters dropped."""
    while isinstance(model_fn, functools.partial):
        model_fn = model_fn.func
    name = re.sub(r"[^A-Za-z0-9._-]", "", getattr(model_fn, "__name__", ""))
    return name or "model"


def _build_probe(model_fn: Callable[[], nn.Module]) -> nn.Module:
    try:
        model = model_fn()
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"building the model failed ({type(exc).__name__}: {exc}); "
                         "check the architecture options or the model factory") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"the model factory returned {type(model).__name__}, not an nn.Module")
    return model


def _plan(probe: nn.Module, roles, recipe) -> list[dict]:
    return recipe.plan(probe, roles)


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