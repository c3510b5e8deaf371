"""The confirmation stage: which recipes race, on which seeds, what came back, and the loop.

A search ranks its trials on one seed and reports the maximum of many noisy scores, which
overstates the winner. So every search ends with a race (:mod:`initsearch.race`) on seeds the
search never used, at the confirmation's own fidelity (``confirm_epochs`` on
``confirm_train_size`` images, :meth:`~initsearch.protocol.Protocol.for_confirmation`), scored
on the confirm split the search never saw. Who races (:func:`select`): the ``K`` best *distinct*
candidates of the search, PyTorch's default (the reference every verdict is stated against)
and *every* baseline that applies to the model -- no baseline is pre-picked on one-seed scores.
Seed ``s`` fixes data order, augmentation and init RNG for every recipe (common random numbers),
so the differences are paired (:mod:`initsearch.stats`).

Each finished job is one record in the study (an Optuna user attribute ``confirm/<recipe
key>/<seed>``); the entries, seeds and rules are recorded before the first job (``confirm``), so
an interrupted race resumes where it stopped and ``initsearch report`` replays it from the study
alone. The recipe key hashes the recipe's content (roles, scales, steps, overrides), not its
name: the same recipe found twice is one candidate.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from initsearch.cache import ResultCache
from initsearch.engine.driver import Driver, LiveTrial, timed
from initsearch.engine.progress import Progress
from initsearch.errors import UsageError
from initsearch.protocol import Protocol
from initsearch.race import Outcome, RaceRules, Score, race
from initsearch.recipe import BASELINES, Recipe
from initsearch.record import Attr, StudyAttr, reason
from initsearch.tracking import Tracker
from initsearch.trial import TrialConfig

REFERENCE = "pytorch_default"  #: the recipe every verdict is stated against


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

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "recipe": self.recipe.to_dict(), "baseline": self.baseline,
                "source_trial": self.source_trial, "params": self.params,
                "search_val_acc": self.search_val_acc}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Entry":
        return cls(d["name"], Recipe.from_dict(d["recipe"]), d["baseline"], d["source_trial"],
                   dict(d["params"]), d["search_val_acc"])


@dataclass(frozen=True)
class ConfirmJob:
    """One (recipe, seed) training of the confirmation."""

    entry: Entry
    seed: int

    @property
    def record_name(self) -> str:
        return f"{StudyAttr.JOB}{self.entry.key}/{self.seed}"


def fresh_seeds(search_seeds: tuple[int, ...], n: int) -> list[int]:
    """``n`` seeds after every seed the search trained with."""
    start = max(search_seeds) + 1
    return list(range(start, start + n))


def select(study: optuna.Study, baselines: dict[str, Recipe], top: int, chance: float) -> list[Entry]:
    """Who races: PyTorch's default, every baseline in ``baselines`` (those that apply to the
    model, whatever their search score), and the ``top`` best distinct candidates that finished
    the search above ``chance``. A baseline the search ran carries its trial and score; a
    candidate whose content equals a baseline's is that baseline."""
    ran = {t.user_attrs[Attr.BASELINE]: t for t in study.get_trials(deepcopy=False)
           if Attr.RECIPE in t.user_attrs and t.user_attrs.get(Attr.BASELINE)
           and t.state == TrialState.COMPLETE}
    entries: dict[str, Entry] = {}

    def add(recipe: Recipe, baseline: str | None, t: optuna.trial.FrozenTrial | None) -> None:
        entry = (Entry(recipe.name, recipe, baseline, None) if t is None else
                 Entry(recipe.name, recipe, baseline, t.number, dict(t.params), t.value))
        entries.setdefault(entry.key, entry)

    for name in [REFERENCE] + [b for b in baselines if b != REFERENCE]:
        t = ran.get(name)
        recipe = Recipe.from_dict(t.user_attrs[Attr.RECIPE]) if t else baselines.get(name, BASELINES[name])
        add(recipe, name, t)
    candidates = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                         if Attr.RECIPE in t.user_attrs and not t.user_attrs.get(Attr.BASELINE)
                         and t.value > chance), key=lambda t: -t.value)
    picked = 0
    for t in candidates:
        if picked == top:
            break
        recipe = Recipe.from_dict(t.user_attrs[Attr.RECIPE])
        if recipe_key(recipe) not in entries:
            add(recipe, None, t)
            picked += 1
    return list(entries.values())


def merge(entries: list[Entry], extra: list[Entry]) -> list[Entry]:
    """``entries`` and then ``extra``, one entry per recipe content, per baseline and per name:
    an extra recipe already racing (the same content, or the same baseline as a study's trial
    spelled it) lends it its search score; one whose name is taken is renamed with its key."""
    out = {e.key: e for e in entries}
    baselines = {e.baseline: e.key for e in entries if e.baseline}
    for e in extra:
        known = out.get(baselines.get(e.baseline, e.key) if e.baseline else e.key)
        if known is not None:
            if known.search_val_acc is None and e.search_val_acc is not None:
                out[known.key] = replace(known, source_trial=e.source_trial,
                                     search_val_acc=e.search_val_acc, params=e.params)
            continue
        if e.name in {x.name for x in out.values()}:
            e = replace(e, name=f"{e.name}-{e.key[:6]}")
        out[e.key] = e
    return list(out.values())


def save_plan(study: optuna.Study, entries: list[Entry], seeds: list[int], rules: RaceRules,
              protocol: Protocol) -> None:
    """Record who races, on which seeds, under which rules and fidelity -- before any result."""
    study.set_user_attr(StudyAttr.RACE, {"entries": [e.to_dict() for e in entries], "seeds": seeds,
                               "rules": rules.to_dict(), "epochs": protocol.epochs,
                               "train_size": protocol.train_size,
                               "objective": protocol.objective_label()})


def load_plan(study: optuna.Study) -> tuple[list[Entry], list[int], RaceRules] | None:
    """The race :func:`save_plan` recorded, or None (no confirmation, or one from before races)."""
    plan = study.user_attrs.get(StudyAttr.RACE)
    if not plan or "entries" not in plan:
        return None
    return ([Entry.from_dict(e) for e in plan["entries"]], list(plan["seeds"]),
            RaceRules(**plan["rules"]))


class RaceClaim:
    """Which driver runs a shared study's race: one per study, however many drivers searched.

    Drivers on a database study cannot lock it, so a claim is a study attribute
    (``StudyAttr.CLAIM``: who, when it last beat, whether it is free). :meth:`take` writes it
    unless a live other driver holds it, then reads it back after ``settle`` seconds: two
    drivers that claimed at once both read the last write, so one goes on. While the race runs
    a daemon thread beats every ``interval`` seconds; a claim not beaten for ``stale_after``
    seconds is a dead driver's, and the next driver takes it over (the race resumes from its
    records). :meth:`release` frees the claim, finished or interrupted.

    A heuristic, not a lock: it assumes the database shows a write to every driver within
    ``settle`` seconds and that the drivers' clocks agree to well within ``stale_after``.
    """

    def __init__(self, study: optuna.Study, *, interval: float, stale_after: float,
                 settle: float = 2.0) -> None:
        self.study, self.interval, self.stale_after, self.settle = study, interval, stale_after, settle
        self.me = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()  # a new one per take: a claim can be taken again
        self._thread: threading.Thread | None = None

    def take(self) -> str | None:
        """Claim the race; returns None when this driver holds it, else the live holder."""
        held = self.study.user_attrs.get(StudyAttr.CLAIM)
        if held and self._live(held) and held["who"] != self.me:
            return held["who"]
        self._write(free=False)
        time.sleep(self.settle)
        held = self.study.user_attrs[StudyAttr.CLAIM]
        if held["who"] != self.me:
            return held["who"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="initsearch-race-claim", daemon=True)
        self._thread.start()
        return None

    def release(self) -> None:
        """Stop beating and free the claim (the claim stays: it says who ran the race last)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._write(free=True)

    def _live(self, held: dict) -> bool:
        return not held.get("free") and time.time() - held["beat"] < self.stale_after

    def _write(self, free: bool) -> None:
        self.study.set_user_attr(StudyAttr.CLAIM, {"who": self.me, "beat": time.time(), "free": free})

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._write(free=False)


def write_record(study: optuna.Study, job: ConfirmJob, record: dict[str, Any]) -> None:
    study.set_user_attr(job.record_name, {"name": job.entry.name, "seed": job.seed, **record})


def records(study: optuna.Study, entries: list[Entry], seeds: list[int]) -> dict[str, dict[int, dict]]:
    """``{entry name: {seed: record}}`` of the jobs of ``entries`` x ``seeds`` already run."""
    attrs = study.user_attrs
    return {e.name: {s: attrs[job.record_name] for s in seeds
                     if (job := ConfirmJob(e, s)).record_name in attrs} for e in entries}


def scores(recorded: dict[str, dict[int, dict]]) -> dict[str, dict[int, Score]]:
    """What the race reads from the records: the confirm-split accuracy of a completed job, the
    reason of a failed one."""
    return {name: {s: (r.get("score", r["confirm_acc"]) if r["state"] == "COMPLETE"
                       else r["error"] or r["state"])  # records before objectives hold no score
                   for s, r in runs.items()} for name, runs in recorded.items()}


def costs(recorded: dict[str, dict[int, dict]], seeds: list[int]) -> dict[str, float]:
    """Seconds per job of each entry on ``seeds`` (the race's first), for the race's cost rule
    (:func:`~initsearch.race.race`): only entries whose jobs on all of them recorded it."""
    out = {}
    for name, runs in recorded.items():
        spent = [runs[s].get("seconds") for s in seeds if s in runs]
        if len(spent) == len(seeds) and all(spent):
            out[name] = sum(spent) / len(spent)
    return out


def run_race(study: optuna.Study, entries: list[Entry], seeds: list[int], rules: RaceRules,
             train: Callable[[list[ConfirmJob]], None]) -> Outcome:
    """Race ``entries`` until a stop: replay the looks from the study's records, hand the jobs
    the race still wants to ``train`` (one round: every survivor's next seed, or the first
    seeds of every entry), and look again.

    Raises:
        UsageError: a round left jobs unrecorded (their workers kept failing), so the race
            cannot go on; ``--resume`` continues it.
    """
    by_name = {e.name: e for e in entries}
    while True:
        recorded = records(study, entries, seeds)
        outcome = race([e.name for e in entries], REFERENCE if REFERENCE in by_name else None,
                       scores(recorded), seeds, rules, costs(recorded, seeds[:rules.min_seeds]))
        if outcome.stop != "running":
            return outcome
        jobs = [ConfirmJob(by_name[name], seed) for name, seed in outcome.wanted]
        train(jobs)
        missing = [j for j in jobs if j.record_name not in study.user_attrs]
        if missing:
            raise UsageError(f"confirmation stopped: {len(missing)} of {len(jobs)} jobs of the "
                             "round failed for reasons that are not their recipe's; fix the "
                             "machine or cluster, then continue with --resume")


class ConfirmDriver(Driver):
    """Runs fixed (recipe, seed) jobs under the confirmation's protocol (``protocol`` is
    :meth:`~initsearch.protocol.Protocol.for_confirmation`'s), never pruned, and records each
    in the study; a job the race wants is one not recorded yet."""

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
            "confirm_acc": None if error else live.last.get("confirm_acc"),
            "score": None if error else self.protocol.score(live.confirm_curve),
            "confirm_curve": live.confirm_curve,
            "gradinit": live.init or None, "seconds": live.seconds,
            "test_acc": None if error else live.last.get("test_acc"),
            "error": reason(error) if error else None, "run_id": live.run_id,
            "cached_from": live.cached_from})
        return state
