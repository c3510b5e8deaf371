"""The confirmation stage: which recipes are trained again, on which seeds, and what came back.

A search ranks its trials on one seed and reports the maximum of many noisy scores, which
overstates the winner. So every search ends by training again, on the full protocol and on
``S`` fresh seeds the search never used, the ``K`` best *distinct* candidates, PyTorch's
default (the reference every verdict is stated against) and the two best baselines. Seed ``s``
fixes data order, augmentation and init RNG for every recipe (common random numbers), so the
differences are paired (:mod:`initsearch.stats`).

Each finished job is one record in the study (an Optuna user attribute ``confirm/<recipe
key>/<seed>``), so an interrupted confirmation resumes where it stopped and ``initsearch
report`` reads everything from the study alone. The recipe key hashes the recipe's content
(roles, scales, steps, overrides), not its name: the same recipe found twice is one candidate.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from initsearch.cache import ResultCache
from initsearch.engine.driver import Attr, Driver, LiveTrial, timed, reason
from initsearch.engine.progress import Progress
from initsearch.protocol import Protocol
from initsearch.recipe import BASELINES, Recipe
from initsearch.tracking import Tracker
from initsearch.trial import TrialConfig

REFERENCE = "pytorch_default"  #: the recipe every verdict is stated against
N_BASELINES = 2                #: best baselines confirmed besides the reference
_PREFIX = "confirm/"


def recipe_key(recipe: Recipe) -> str:
    """12 hex digits of the recipe's content (name, meta and evidence left out)."""
    d = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "meta", "evidence")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Entry:
    """One recipe of a confirmation: a search candidate or a baseline."""

    name: str
    recipe: Recipe
    baseline: str | None
    source_trial: int | None            # the search trial it came from (None: not run there)
    params: dict[str, Any] = field(default_factory=dict)  # that trial's Optuna params
    search_val_acc: float | None = None

    @property
    def key(self) -> str:
        return recipe_key(self.recipe)


@dataclass(frozen=True)
class ConfirmJob:
    """One (recipe, seed) training of the confirmation."""

    entry: Entry
    seed: int

    @property
    def record_name(self) -> str:
        return f"{_PREFIX}{self.entry.key}/{self.seed}"


def fresh_seeds(search_seeds: tuple[int, ...], n: int) -> list[int]:
    """``n`` seeds after every seed the search trained with."""
    start = max(search_seeds) + 1
    return list(range(start, start + n))


def select(study: optuna.Study, top: int, chance: float) -> list[Entry]:
    """The recipes to confirm: the ``top`` best distinct candidates, the reference and the
    two best baselines -- each only if it finished the search above ``chance`` (the
    reference always). Candidates whose content equals a baseline's are that baseline."""
    complete = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                       if Attr.RECIPE in t.user_attrs and t.value > chance),
                      key=lambda t: -t.value)
    entries: dict[str, Entry] = {}

    def add(t: optuna.trial.FrozenTrial) -> None:
        recipe = Recipe.from_dict(t.user_attrs[Attr.RECIPE])
        entry = Entry(recipe.name, recipe, t.user_attrs.get(Attr.BASELINE), t.number,
                      dict(t.params), t.value)
        entries.setdefault(entry.key, entry)

    ran = {t.user_attrs.get(Attr.BASELINE): t for t in study.get_trials(deepcopy=False)
           if Attr.RECIPE in t.user_attrs and t.user_attrs.get(Attr.BASELINE)}
    if REFERENCE in ran:
        add(ran[REFERENCE])
    else:  # the space could not express it: it is still the reference
        reference = BASELINES[REFERENCE]
        entries[recipe_key(reference)] = Entry(REFERENCE, reference, REFERENCE, None)
    others = [t for t in complete if t.user_attrs.get(Attr.BASELINE) not in (None, REFERENCE)]
    for t in others[:N_BASELINES]:
        add(t)
    baseline_keys = set(entries)
    candidates = [t for t in complete if t.user_attrs.get(Attr.BASELINE) is None]
    for t in candidates:
        if sum(e.baseline is None for e in entries.values()) == top:
            break
        key = recipe_key(Recipe.from_dict(t.user_attrs[Attr.RECIPE]))
        if key not in baseline_keys:
            add(t)
    return list(entries.values())


def write_record(study: optuna.Study, job: ConfirmJob, record: dict[str, Any]) -> None:
    study.set_user_attr(job.record_name, {"name": job.entry.name, "seed": job.seed, **record})


def records(study: optuna.Study, entries: list[Entry], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """``{entry name: {seed: record}}`` of the jobs of ``entries`` x ``seeds`` already run."""
    attrs = study.user_attrs
    return {e.name: {s: attrs[job.record_name] for s in seeds
                     if (job := ConfirmJob(e, s)).record_name in attrs} for e in entries}


def pending(study: optuna.Study, entries: list[Entry], seeds: list[int]) -> list[ConfirmJob]:
    """The jobs not recorded yet, seed-major (every recipe's first seed, then the second, ...),
    so an interrupted confirmation leaves complete pairs behind."""
    attrs = study.user_attrs
    return [ConfirmJob(e, s) for s in seeds for e in entries
            if ConfirmJob(e, s).record_name not in attrs]


class ConfirmDriver(Driver):
    """Runs fixed (recipe, seed) jobs on the full protocol, never pruned, and records each in
    the study; pass it only the jobs still :func:`pending`."""

    def __init__(self, study: optuna.Study, jobs: list[ConfirmJob], protocol: Protocol,
                 tracker: Tracker, plan_for: Any, progress: Progress | None = None,
                 cache: ResultCache | None = None) -> None:
        super().__init__(protocol, tracker, plan_for, progress, cache)
        self.study = study
        self._queue = list(jobs)
        self._next = 0

    @property
    def remaining(self) -> int:
        return len(self._queue) - self._next

    @timed
    def ask(self) -> TrialConfig:
        number, job = self._next, self._queue[self._next]
        self._next += 1
        e = job.entry
        return self._open(number, job, f"confirm-{e.name}-seed{job.seed}", e.recipe, e.params,
                          {"stage": "confirm", "seed": str(job.seed), "baseline": e.baseline or "",
                           "trial": "" if e.source_trial is None else str(e.source_trial)},
                          {**self.protocol.to_dict(), "seeds": [job.seed]})

    def _settle(self, number: int, live: LiveTrial, error: str | None,
                infrastructure: bool) -> TrialState:
        state = TrialState.FAIL if error is not None else TrialState.COMPLETE
        if infrastructure:  # not the recipe's result: left unrecorded, so --resume runs it again
            return state
        write_record(self.study, live.handle, {
            "state": state.name, "epochs": int(live.last.get("epoch", 0)), "curve": live.curve,
            "val_acc": None if error else live.last.get("val_acc"),
            "test_acc": None if error else live.last.get("test_acc"),
            "error": reason(error) if error else None, "run_id": live.run_id,
            "cached_from": live.cached_from})
        return state
