"""Recommendation: the search's table, the race's comparison and the verdict, with evidence.

The search ranks its trials by one seed's score on the select split; that ranking only *selects*
who races (:mod:`initsearch.confirm`). The verdict is read from the race alone
(:mod:`initsearch.race`), on the confirm split the search never saw, at the confirmation's
fidelity, with the test split reported beside it and never used. It always says what it rules
out:

* ``recommend``: one recipe was left, every other one significantly worse than a leader,
  failed, or dead on a seed -- ``recommend X: +d pp [CI] vs PyTorch's default, +e pp [CI] vs
  the best other baseline Y``. Also at the budget when the default is out but several recipes
  remain, with the leader recommended and how far the others could still differ;
* ``equivalent``: every survivor is within ``±min_effect`` of PyTorch's default (TOST); the
  default is recommended, the simplest answer;
* ``undecided``: the budget is spent with the default among several survivors: which remain,
  the differences not ruled out (the span of their 95 % intervals against the leader), and
  about how many more seeds per recipe would resolve ``min_effect`` (from the observed spread);
* ``nothing``: no recipe trained above chance.

When the search's best trial was dropped at the confirmation's fidelity, the verdict says so;
the rank agreement between the search's scores and the race's means (Kendall tau) is reported.
Without a confirmation (``--confirm-seeds 0``) the search's best completed trial above chance
is returned, labelled as unconfirmed.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import TrialState
from scipy import stats as _scipy

from initsearch.confirm import REFERENCE, Entry, costs, load_plan, records, scores
from initsearch.race import Outcome, RaceRules, failures_scored, race
from initsearch.recipe import Recipe
from initsearch.record import Attr, StudyAttr, reason
from initsearch.stats import MIN_SEEDS, Estimate, Paired, estimate, paired

COLUMNS = ("trial", "name", "recipe", "val_acc", "test_acc", "epochs", "state", "note", "cached")
KINDS = ("recommend", "equivalent", "undecided", "nothing", "unconfirmed", "partial")


@dataclass(frozen=True)
class Confirmed:
    """One recipe of the race: its records per seed and what they show."""

    entry: Entry
    runs: dict[int, dict]                 # seed -> record (see initsearch.confirm)
    val: Estimate | None = None           # its score (the objective on the confirm split) over its seeds
    test: Estimate | None = None
    vs_reference: Paired | None = None    # paired by seed over the seeds both ran
    status: str = ""                      # "recommended", "survivor", "dropped at look k: why"

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def kind(self) -> str:
        if self.entry.baseline == REFERENCE:
            return "reference"
        return "baseline" if self.entry.baseline else "candidate"

    @property
    def failures(self) -> list[str]:
        return [r["error"] or r["state"] for r in self.runs.values() if r["state"] != "COMPLETE"]

    def values(self, key: str = "score", seeds: list[int] | None = None) -> list[float]:
        """``key`` of the completed runs, by seed (only ``seeds``, when given): by default the
        ``score``, the protocol's objective on the confirm split (a record from before
        objectives has only its final ``confirm_acc``, which is that score)."""
        return [self.runs[s].get(key, self.runs[s]["confirm_acc"]) for s in sorted(self.runs)
                if self.runs[s]["state"] == "COMPLETE" and (seeds is None or s in seeds)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "seeds": sorted(self.runs), "status": self.status,
                             "search_val_acc": self.entry.search_val_acc}
        if self.val is not None:
            d.update(score=self.val.to_dict(), test_acc=self.test.to_dict())
        if self.failures:
            d["failed"] = self.failures
        if self.vs_reference is not None:
            d["vs_default"] = self.vs_reference.to_dict()
        return d


@dataclass(frozen=True)
class Verdict:
    """The race's conclusion: what is recommended and why, in words and figures."""

    text: str
    recommended: Entry | None
    kind: str = "unconfirmed"
    rows: list[Confirmed] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)   # the seeds the survivors trained on
    best_baseline: str | None = None
    chance: float = 0.0
    outcome: Outcome | None = None
    rules: RaceRules | None = None
    tau: float | None = None    # Kendall tau: search scores vs the race's means
    objective: str = "final accuracy"  # what a score is (Protocol.objective_label)

    def table(self) -> str:
        """The race's comparison as text, one row per recipe."""
        if not self.rows:
            return ""
        header = ["recipe", "kind", "seeds", "score % [95% CI]", "test acc %",
                  "vs PyTorch default", "search val %", "race"]
        lines = [header]
        for r in self.rows:
            name = f"* {r.name}" if self.recommended and r.name == self.recommended.name else r.name
            acc = r.val.pct() if r.val is not None else "-"
            test = f"{100 * r.test.mean:.2f}" if r.test is not None else "-"
            search = f"{100 * r.entry.search_val_acc:.2f}" if r.entry.search_val_acc is not None else "-"
            lines.append([name, r.kind, str(len(r.runs)), acc, test,
                          r.vs_reference.pp() if r.vs_reference else "-", search, r.status])
        widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
        rules = self.rules
        tau = f"; search-vs-race rank agreement Kendall tau {self.tau:+.2f}" if self.tau is not None else ""
        title = (f"race: {rules.min_seeds}..{rules.max_seeds} fresh seeds per recipe (reached "
                 f"{len(self.seeds)}), {len(self.outcome.looks)} looks at p < {rules.level:.4f} "
                 f"each (drops one-sided; the default's Bonferroni'd over the field), min effect {100 * rules.min_effect:.1f} pp; score: "
                 f"{self.objective} on the confirm split; differences paired by seed (95% CI); chance "
                 f"{100 * self.chance:.1f}%{tau}; * recommended")
        table = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                          + "  " + row[-1] for row in lines)
        return "\n".join([title, table, *self._gradinit_notes()])

    def _gradinit_notes(self) -> list[str]:
        """How far GradInit moved each racing recipe that has it: one seed doing nothing looks
        like He, and the table should say so."""
        notes = []
        for r in self.rows:
            moved = [run["gradinit"] for run in r.runs.values() if run.get("gradinit")]
            if moved:
                lo = min(m["gradinit_scale_min"] for m in moved)
                hi = max(m["gradinit_scale_max"] for m in moved)
                steps = sum(m["gradinit_constraint_steps"] for m in moved) / len(moved)
                iters = sum(m["gradinit_iterations"] for m in moved) / len(moved)
                notes.append(f"{r.name}: GradInit moved its scales to [{lo:.3f}, {hi:.3f}] over "
                             f"{len(moved)} seeds, {steps:.0f} constraint steps in {iters:.0f} "
                             "iterations (mean)")
        return notes

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "seeds": self.seeds, "verdict": self.text,
                             "objective": self.objective,
                             "best_baseline": self.best_baseline, "chance_acc": self.chance,
                             "confirmed": {r.name: r.to_dict() for r in self.rows}}
        if self.rules is not None:
            d.update(race={**self.rules.to_dict(), "stop": self.outcome.stop,
                           "looks": len(self.outcome.looks)}, kendall_tau=self.tau)
        return d


def judge(entries: list[Entry], recorded: dict[str, dict[int, dict]], seeds: list[int],
          rules: RaceRules) -> Verdict:
    """The verdict of a race over ``recorded`` (rules in the module docstring)."""
    names = [e.name for e in entries]
    outcome = race(names, REFERENCE if REFERENCE in names else None, scores(recorded), seeds, rules,
                   costs(recorded, seeds[:rules.min_seeds]))
    used = list(seeds[:outcome.seeds])
    chosen = outcome.leader if outcome.stop in ("winner", "budget") else (
        REFERENCE if outcome.stop == "equivalent" else None)
    if outcome.stop == "budget" and REFERENCE in outcome.survivors:
        chosen = None  # undecided: the default is still in the race

    def status(name: str) -> str:
        if name == chosen:
            return "recommended"
        if name in outcome.survivors:
            return "survivor"
        if name in outcome.dropped:
            look, why = outcome.dropped[name]
            return f"dropped at look {look}: {why}"
        return "not run"

    rows = []
    for e in entries:
        r = Confirmed(e, recorded.get(e.name, {}), status=status(e.name))
        rows.append(replace(r, val=estimate(r.values()), test=estimate(r.values("test_acc")))
                    if r.values() else r)
    ref = next((r for r in rows if r.name == REFERENCE), None)
    rows = [replace(r, vs_reference=_versus(r, ref, rules.untrained)) for r in rows]
    by_name = {r.name: r for r in rows}
    ref = by_name.get(REFERENCE)
    n, delta = len(used), f"{100 * rules.min_effect:.1f} pp"
    first = list(seeds[:rules.min_seeds])  # every entry ran these (or failed on them)

    def mean_on_first(r: Confirmed) -> float:
        v = r.values(seeds=first)
        return sum(v) / len(v) if len(v) == len(first) else float("-inf")

    baselines = [r for r in rows if r.kind == "baseline" and r.name != chosen]
    best = max(baselines, key=mean_on_first, default=None)
    if best is not None and mean_on_first(best) == float("-inf"):
        best = None

    def against_default(r: Confirmed) -> str:
        if r is ref:
            return ""
        if ref is not None and ref.failures:
            return f"PyTorch's default failed ({ref.failures[0]})"
        return r.vs_reference.pp("PyTorch's default") if r.vs_reference else "no paired default"

    retired = (f" ({', '.join(outcome.retired)} retired for cost, not shown worse)"
               if outcome.retired else "")
    if outcome.stop == "nothing":
        kind, text = "nothing", (f"nothing trained above chance ({100 * rules.chance:.1f}%) on the "
                                 f"confirm split after {n} seeds: every recipe diverged or stayed "
                                 "at chance on this protocol; no recommendation")
    elif chosen == REFERENCE and outcome.stop == "winner":
        kind, text = "recommend", (f"recommend {REFERENCE}: nothing beats PyTorch's default; every "
                                   f"other recipe was significantly worse, failed or stayed at "
                                   f"chance ({n} seeds){retired}")
    elif outcome.stop == "equivalent":
        others = len(outcome.dropped) - len(outcome.retired)
        kind, text = "equivalent", (
            f"equivalent: no recipe beats PyTorch's default by more than {delta} (TOST, {n} "
            f"seeds): {', '.join(m for m in outcome.survivors if m != REFERENCE)} within "
            f"±{delta} of it" + (f", {others} others significantly worse or failed" if others else "")
            + f"{retired}; recommend {REFERENCE}")
    elif chosen is not None:
        w = by_name[chosen]
        parts = [against_default(w)]
        if best is not None:
            label = "best other baseline" if w.kind == "baseline" else "best baseline"
            vs_best = _versus(w, best, rules.untrained)
            parts.append(vs_best.pp(f"{label} {best.name}") if vs_best else f"{label} {best.name} not paired")
        kind = "recommend"
        text = f"recommend {chosen}: {', '.join(p for p in parts if p)} (confirm accuracy, {n} seeds)"
        if outcome.stop == "budget":
            text += "; " + _undecided(outcome, by_name, rules, chosen)
        text += retired
    else:
        kind = "undecided"
        text = (f"undecided after {n} seeds: {_undecided(outcome, by_name, rules, outcome.leader)}; "
                f"PyTorch's default is not beaten, so no recommendation{retired}")
    top = max((e for e in entries if e.search_val_acc is not None), default=None,
              key=lambda e: e.search_val_acc)
    if top is not None and top.name in outcome.dropped and kind != "nothing":
        look, why = outcome.dropped[top.name]
        text += (f"; the search's best, {top.name} ({100 * top.search_val_acc:.2f}% on one seed), "
                 f"lost at the confirmation's fidelity: dropped at look {look}, {why}")
    return Verdict(text, by_name[chosen].entry if chosen else None, kind, rows, used,
                   best.name if best else None, rules.chance, outcome, rules,
                   _tau(rows, first))


def _undecided(outcome: Outcome, rows: dict[str, Confirmed], rules: RaceRules, leader: str) -> str:
    """``A, B remain within ±w pp of the leader; about M more seeds per recipe would resolve d``."""
    lead = rows[leader]
    others = [m for m in outcome.survivors if m != leader]
    comparisons = [c for m in others if (c := _versus(rows[m], lead, rules.untrained))]
    lo = min((c.diff.lo for c in comparisons), default=0.0)
    hi = max((c.diff.hi for c in comparisons), default=0.0)
    need = max((c.seeds_to_resolve(rules.min_effect, rules.level) for c in comparisons), default=0)
    more = max(1, need - outcome.seeds)
    return (f"{', '.join(others)} remain{'s' if len(others) == 1 else ''} beside {leader}; "
            f"differences up to {100 * max(-lo, hi):.1f} pp cannot be ruled out (95% CIs against "
            f"{leader} span [{100 * lo:+.1f}, {100 * hi:+.1f}] pp); about {more} more seeds per "
            f"recipe would resolve {100 * rules.min_effect:.1f} pp")


def _versus(a: Confirmed, b: Confirmed | None, untrained: float | None = None) -> Paired | None:
    """``a - b`` over the seeds both completed (None below :data:`MIN_SEEDS` of them); with
    ``untrained`` (:attr:`RaceRules.untrained`), over the seeds both ran, a failure scoring it."""
    if b is None or a is b:
        return None
    by_seed = scores({"a": a.runs, "b": b.runs})
    if untrained is not None:
        by_seed = {k: failures_scored(v, untrained) for k, v in by_seed.items()}
    both = [s for s in sorted(by_seed["a"]) if s in by_seed["b"]
            and not isinstance(by_seed["a"][s], str) and not isinstance(by_seed["b"][s], str)]
    return (paired([by_seed["a"][s] for s in both], [by_seed["b"][s] for s in both])
            if len(both) >= MIN_SEEDS else None)


def _tau(rows: list[Confirmed], first: list[int]) -> float | None:
    """Kendall tau between the search's one-seed scores and the race's means on its first
    seeds (every entry ran them), over the entries that have both."""
    pairs = [(r.entry.search_val_acc, sum(v) / len(v)) for r in rows
             if r.entry.search_val_acc is not None and len(v := r.values(seeds=first)) == len(first)]
    if len(pairs) < 3:
        return None
    tau = _scipy.kendalltau(*zip(*pairs)).statistic
    return None if tau != tau else float(tau)  # NaN when one side is constant


def verdict_of(study: optuna.Study) -> Verdict:
    """The verdict a study's records support, read from the study alone (what ``initsearch
    report`` shows): the race's entries, seeds and rules are stored there."""
    chance = study.user_attrs.get(StudyAttr.CHANCE, 0.0)
    plan = load_plan(study)
    if plan is None:
        return unconfirmed(study, chance)
    entries, seeds, rules = plan
    objective = study.user_attrs[StudyAttr.RACE].get("objective", "final accuracy")
    return replace(judge(entries, records(study, entries, seeds), seeds, rules), objective=objective)


def unconfirmed(study: optuna.Study, chance: float) -> Verdict:
    """Without a confirmation: the search's best completed trial above chance, labelled so."""
    best = max((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if Attr.RECIPE in t.user_attrs and t.value > chance),
               key=lambda t: t.value, default=None)
    if best is None:
        return Verdict(f"nothing trained above chance ({100 * chance:.1f}%) in the search; "
                       "no recommendation", None, "nothing", chance=chance)
    recipe = Recipe.from_dict(best.user_attrs[Attr.RECIPE])
    entry = Entry(recipe.name, recipe, best.user_attrs.get(Attr.BASELINE), best.number,
                  dict(best.params), best.value)
    return Verdict(f"recommend {recipe.name} on its single-seed search score "
                   f"({100 * best.value:.2f}% val): NOT confirmed (--confirm-seeds 0)", entry,
                   "unconfirmed", chance=chance)


@dataclass
class SearchResult:
    """What :func:`initsearch.search` returns.

    Attributes:
        best: the recommended recipe, its evidence in ``best.evidence`` (None when nothing
            trained above chance). It may be a baseline.
        verdict: the confirmation's :class:`Verdict` (its ``text`` is the one-line answer).
        table: one row per search trial -- ``trial, name, recipe, val_acc, test_acc, epochs,
            state, note, cached`` -- sorted by the search's single-seed score (``val_acc`` holds
            the objective's score; the printed table and the CSV name it ``score_column``)
            (``note`` says why a trial failed, e.g. ``diverged at epoch 3: train_loss nan``;
            ``cached``: its result was replayed from an earlier run, :mod:`initsearch.cache`).
        study_name: the Optuna study (``--study`` to resume it).
        parent_run_id: the MLflow run holding this search.
        ui_url: the study's runs in the MLflow UI that shows them (model-training view): the
            tracking server's own, or the local one ``initsearch ui`` serves.
        review: how to open ``ui_url``: the link alone for a server, else the command that
            serves the store first (``initsearch ui [--home H] [--tracking-uri URI], then URL``).
        stats: search-level figures: ``wall_seconds`` of ``search()``; ``setup_seconds`` before
            the first trial (validation, data, store, study); ``compute_seconds`` inside init,
            training and evaluation, summed over trials; ``bookkeeping_seconds`` in the
            drivers' Optuna and MLflow calls; ``confirm_seconds`` (wall time of the
            confirmation); ``slots`` (trials at once); ``outside_compute_share``; trial counts;
            ``cached_trials`` and ``replayed_draws`` (:mod:`initsearch.cache`).
    """

    best: Recipe | None
    table: list[dict[str, Any]]
    study_name: str
    parent_run_id: str
    verdict: Verdict | None = None
    ui_url: str = ""
    review: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    score_column: str = "val_acc"

    @property
    def baselines(self) -> list[dict[str, Any]]:
        return [r for r in self.table if r["name"] and not r["name"].startswith("trial-")]

    @property
    def best_baseline_acc(self) -> float | None:
        return max((r["val_acc"] for r in self.baselines if r["state"] == "COMPLETE"), default=None)

    def comparison(self, top: int = 5) -> str:
        """The search's table: the ``top`` completed candidates and every baseline, with the gap
        to the best baseline -- single-seed *selection* scores, not the verdict."""
        candidates = [r for r in self.table if r["state"] == "COMPLETE" and r not in self.baselines]
        rows = candidates[:top] + self.baselines
        ref = self.best_baseline_acc
        header = ["trial", "name", self.score_column, "vs best baseline", "test_acc", "epochs", "state",
                  "recipe"]
        lines = [header]
        for r in rows:
            delta = f"{100 * (r['val_acc'] - ref):+.2f} pp" if ref is not None and r["val_acc"] is not None else "-"
            notes = ", ".join(filter(None, [r["note"], "cached" if r["cached"] else ""]))
            state = f"{r['state']} ({notes})" if notes else r["state"]
            lines.append([str(r["trial"]), r["name"], _pct(r["val_acc"]), delta, _pct(r["test_acc"]),
                          str(r["epochs"]), state, r["recipe"]])
        widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
        title = ("search (selection scores: one seed each; 'vs best baseline' is the search's "
                 "single-seed gap, not a confirmed one)")
        return title + "\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  "
                                        + row[-1] for row in lines)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([self.score_column if c == "val_acc" else c for c in COLUMNS])
        writer.writerows([r[c] for c in COLUMNS] for r in self.table)
        return out.getvalue()


def build_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial that ran (COMPLETE, PRUNED or FAIL), best validation accuracy first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if Attr.EPOCHS not in t.user_attrs or Attr.RECIPE not in t.user_attrs:
            continue  # never started, or cut off by an interrupt (and queued again)
        recipe = Recipe.from_dict(t.user_attrs[Attr.RECIPE])
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"trial": t.number, "name": recipe.name, "recipe": recipe.summary(),
                     "val_acc": t.value if t.state == TrialState.COMPLETE else last,
                     "test_acc": t.user_attrs.get(Attr.TEST_ACC), "epochs": t.user_attrs[Attr.EPOCHS],
                     "state": t.state.name,
                     "note": reason(t.user_attrs[Attr.ERROR]) if Attr.ERROR in t.user_attrs else "",
                     "cached": Attr.CACHED in t.user_attrs})
    return sorted(rows, key=lambda r: (r["state"] != "COMPLETE", -(r["val_acc"] or 0.0)))


def recommended_recipe(verdict: Verdict, evidence: dict[str, Any]) -> Recipe | None:
    """The recommendation as a recipe file's content: the recipe, its provenance in ``meta``
    and ``evidence`` (the study, protocol hash, confirmation seeds, every confirmed recipe's
    mean and CI, the verdict)."""
    e = verdict.recommended
    if e is None:
        return None
    meta = {"study": evidence.get("study"), "trial": e.source_trial,
            "search_val_acc": e.search_val_acc}
    return replace(e.recipe, meta=meta, evidence={**evidence, **verdict.to_dict()})


def _pct(v: float | None) -> str:
    return f"{100 * v:.2f}%" if v is not None else "-"
