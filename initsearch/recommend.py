"""Recommendation: the search's table, the confirmed comparison and the verdict, with evidence.

The search ranks its trials by one seed's validation accuracy; that ranking only *selects* what
the confirmation trains again (:mod:`initsearch.confirm`). The verdict is read from the
confirmation alone, on the validation split (decisions), with the test split reported beside it:

1. a candidate is recommended if, paired by seed, it beats PyTorch's default *and* the best
   confirmed baseline, each with a Holm-corrected p < 0.05 over the candidates
   (``recommend X: +a pp vs PyTorch default (95% CI [l, u]), +b pp vs best baseline Y``);
2. else the baseline with the best mean among those that beat PyTorch's default (Holm over the
   baselines; ``no candidate beats baseline Y on S seeds: recommend Y``) -- a published scheme
   is the simpler answer -- saying so when a baseline with a higher mean did not;
3. else PyTorch's default (``nothing beats PyTorch's default on this protocol``).

Differences are always stated against PyTorch's default when it completed every seed, even at
chance: a default that does not train is exactly what a recommendation has to beat.

A recipe that diverged on any confirmation seed, or whose mean accuracy is at or below chance
(:func:`initsearch.stats.chance_level`), is never recommended; if nothing trains, the verdict
says so and recommends nothing. Without a confirmation (``--confirm-seeds 0``) the search's best
completed trial above chance is returned, labelled as unconfirmed.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.trial import TrialState

from initsearch.confirm import REFERENCE, Entry, records, select
from initsearch.engine.driver import Attr, reason
from initsearch.recipe import Recipe
from initsearch.stats import Estimate, Paired, estimate, holm, paired

COLUMNS = ("trial", "name", "recipe", "val_acc", "test_acc", "epochs", "state", "note", "cached")


@dataclass(frozen=True)
class Confirmed:
    """One recipe of the confirmation: its records per seed and what they show."""

    entry: Entry
    runs: dict[int, dict]                 # seed -> record (see initsearch.confirm)
    val: Estimate | None = None           # over the seeds, when every seed completed
    test: Estimate | None = None
    vs_reference: Paired | None = None    # paired by seed, Holm over its family
    vs_best: Paired | None = None

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

    def values(self, key: str = "val_acc") -> list[float]:
        return [self.runs[s][key] for s in sorted(self.runs)]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "seeds": sorted(self.runs)}
        if self.val is not None:
            d.update(val_acc=self.val.to_dict(), test_acc=self.test.to_dict())
        if self.failures:
            d["failed"] = self.failures
        if self.vs_reference is not None:
            d["vs_default"] = self.vs_reference.to_dict()
        if self.vs_best is not None:
            d["vs_best_baseline"] = self.vs_best.to_dict()
        return d


@dataclass(frozen=True)
class Verdict:
    """The confirmation's conclusion: what is recommended and why, in words and figures."""

    text: str
    recommended: Entry | None
    rows: list[Confirmed] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    best_baseline: str | None = None
    chance: float = 0.0

    def table(self) -> str:
        """The confirmed comparison as text, one row per recipe."""
        if not self.rows:
            return ""
        best = self.best_baseline or "-"
        header = ["recipe", "kind", "val acc % [95% CI]", "test acc % [95% CI]",
                  "vs PyTorch default", f"vs best baseline ({best})"]
        lines = [header]
        chosen = self.recommended.name if self.recommended else None
        for r in self.rows:
            name = f"* {r.name}" if r.name == chosen else r.name
            if r.val is None:
                why = r.failures[0] if r.failures else "not run"
                lines.append([name, r.kind, f"failed on {len(r.failures)}/{len(r.runs)} seeds: {why}",
                              "", "", ""])
                continue
            lines.append([name, r.kind, r.val.pct(), r.test.pct(),
                          r.vs_reference.pp() if r.vs_reference else "-",
                          r.vs_best.pp() if r.vs_best else "-"])
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        title = (f"confirmation: {len(self.seeds)} fresh seeds ({', '.join(map(str, self.seeds))}), "
                 "full protocol; differences paired by seed, p Holm-corrected over the candidates; "
                 f"chance level {100 * self.chance:.1f}%; * recommended")
        return title + "\n" + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                                        for row in lines)

    def to_dict(self) -> dict[str, Any]:
        return {"seeds": self.seeds, "verdict": self.text, "best_baseline": self.best_baseline,
                "chance_acc": self.chance, "confirmed": {r.name: r.to_dict() for r in self.rows}}


def judge(entries: list[Entry], records: dict[str, dict[int, dict]], seeds: list[int],
          chance: float) -> Verdict:
    """The verdict of a confirmation (rules in the module docstring)."""
    rows = []
    for e in entries:
        runs = records.get(e.name, {})
        done = [runs[s] for s in seeds if s in runs and runs[s]["state"] == "COMPLETE"]
        row = Confirmed(e, runs)
        if len(done) == len(seeds):
            row = replace(row, val=estimate([r["val_acc"] for r in done]),
                          test=estimate([r["test_acc"] for r in done]))
        rows.append(row)
    # the reference is compared against whenever it completed every seed, even at chance (a
    # default that does not train is exactly what a recommendation should beat); only recipes
    # above chance may be recommended
    reference = next((r for r in rows if r.kind == "reference" and r.val is not None), None)
    trained = {r.name: r for r in rows if r.val is not None and r.val.mean > chance}
    baselines = [r for r in trained.values() if r.kind != "candidate"]
    best = max(baselines, key=lambda r: r.val.mean, default=None)
    candidates = [r for r in trained.values() if r.kind == "candidate"]
    others = [r for r in baselines if r is not reference]

    def family(members: list[Confirmed], ref: Confirmed | None) -> dict[str, Paired]:
        if ref is None or not members:
            return {}
        return dict(zip([m.name for m in members], holm([paired(m.values(), ref.values())
                                                          for m in members])))

    cand_vs_ref, cand_vs_best = family(candidates, reference), family(candidates, best)
    base_vs_ref = family(others, reference)
    rows = [replace(r, vs_reference=cand_vs_ref.get(r.name) or base_vs_ref.get(r.name),
                    vs_best=cand_vs_best.get(r.name)) for r in rows]
    by_name = {r.name: r for r in rows}
    n = len(seeds)

    def beats(name: str, table: dict[str, Paired], ref: Confirmed | None) -> bool:
        return ref is None or table[name].significant

    winners = [c for c in candidates if beats(c.name, cand_vs_ref, reference)
               and beats(c.name, cand_vs_best, best)]
    no_default = "PyTorch's default diverged on this protocol"
    if winners:
        w = by_name[max(winners, key=lambda c: c.val.mean).name]
        parts = [w.vs_reference.pp("PyTorch default") if reference else no_default]
        if best is not None and best is not reference:
            parts.append(w.vs_best.pp(f"best baseline {best.name}"))
        elif best is reference:
            parts.append("PyTorch's default is also the best confirmed baseline")
        elif best is None:
            parts.append("no baseline trains above chance")
        text = f"recommend {w.name}: {', '.join(parts)} (val accuracy, {n} seeds)"
        chosen = w
    elif sure := [b for b in others if reference is None or base_vs_ref[b.name].significant]:
        b = max(sure, key=lambda r: r.val.mean)
        versus = base_vs_ref[b.name].pp("PyTorch default") if reference else no_default
        higher = (f"; {best.name} has a higher mean but no significant difference from "
                  f"PyTorch's default ({base_vs_ref[best.name].pp()})" if b is not best else "")
        text = (f"no candidate beats baseline {b.name} on {n} seeds: recommend {b.name}: "
                f"{versus} (val accuracy){higher}")
        chosen = by_name[b.name]
    elif reference is not None and reference.name in trained:
        runner = max((r for r in trained.values() if r is not reference), default=None,
                     key=lambda r: r.val.mean)
        closest = (f"; closest: {runner.name}, {by_name[runner.name].vs_reference.pp()}"
                   if runner is not None else "")
        text = (f"nothing beats PyTorch's default on this protocol ({n} seeds{closest}): "
                f"recommend {REFERENCE}")
        chosen = reference
    elif best is not None:  # the default stays at chance and nothing beats it clearly
        text = (f"PyTorch's default stays at chance on this protocol and no recipe beats it "
                f"significantly on {n} seeds (best: {best.name}, "
                f"{by_name[best.name].vs_reference.pp()}); "
                "no recommendation: confirm on more seeds")
        chosen = None
    else:
        text = (f"nothing trained above chance ({100 * chance:.1f}%) on {n} confirmation seeds: "
                "every recipe diverged or stayed at chance on this protocol; no recommendation")
        chosen = None
    return Verdict(text, chosen.entry if chosen else None, rows, list(seeds),
                   best.name if best else None, chance)


def verdict_of(study: optuna.Study) -> Verdict:
    """The verdict a study's records support, read from the study alone (what ``initsearch
    report`` shows): the confirmation's top-K and seeds and the chance level are stored there."""
    plan = study.user_attrs.get("confirm", {})
    chance = study.user_attrs.get("chance_acc", 0.0)
    if not plan.get("seeds"):
        return unconfirmed(study, chance)
    entries = select(study, plan["top"], chance)
    return judge(entries, records(study, entries, plan["seeds"]), plan["seeds"], chance)


def unconfirmed(study: optuna.Study, chance: float) -> Verdict:
    """Without a confirmation: the search's best completed trial above chance, labelled so."""
    best = max((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if Attr.RECIPE in t.user_attrs and t.value > chance),
               key=lambda t: t.value, default=None)
    if best is None:
        return Verdict(f"nothing trained above chance ({100 * chance:.1f}%) in the search; "
                       "no recommendation", None, chance=chance)
    recipe = Recipe.from_dict(best.user_attrs[Attr.RECIPE])
    entry = Entry(recipe.name, recipe, best.user_attrs.get(Attr.BASELINE), best.number,
                  dict(best.params), best.value)
    return Verdict(f"recommend {recipe.name} on its single-seed search score "
                   f"({100 * best.value:.2f}% val): NOT confirmed (--confirm-seeds 0)", entry,
                   chance=chance)


@dataclass
class SearchResult:
    """What :func:`initsearch.search` returns.

    Attributes:
        best: the recommended recipe, its evidence in ``best.evidence`` (None when nothing
            trained above chance). It may be a baseline.
        verdict: the confirmation's :class:`Verdict` (its ``text`` is the one-line answer).
        table: one row per search trial -- ``trial, name, recipe, val_acc, test_acc, epochs,
            state, note, cached`` -- sorted by the search's single-seed validation accuracy
            (``note`` says why a trial failed, e.g. ``diverged at epoch 3: train_loss nan``;
            ``cached``: its result was replayed from an earlier run, :mod:`initsearch.cache`).
        study_name: the Optuna study (``--study`` to resume it).
        parent_run_id: the MLflow run holding this search.
        ui_url: the study's runs in the MLflow UI (model-training view).
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
    stats: dict[str, float] = field(default_factory=dict)

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
        header = ["trial", "name", "val_acc", "vs best baseline", "test_acc", "epochs", "state",
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
        writer = csv.DictWriter(out, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.table)
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
