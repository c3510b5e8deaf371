"""Recommendation: the comparison table of a study and the best recipe, with the evidence.

The best recipe is the COMPLETE trial (trained for every epoch of the protocol) with the highest
validation accuracy; a pruned trial never wins on a partial score. The table compares the top
candidates with the baselines on the same protocol and seeds; ``test_acc`` is reported for
completed trials but never used to choose.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from initsearch.engine.driver import Attr
from initsearch.recipe import Recipe

COLUMNS = ("trial", "name", "recipe", "val_acc", "test_acc", "epochs", "state")


@dataclass
class SearchResult:
    """What :func:`initsearch.search` returns.

    Attributes:
        best: the recommended recipe (None if no trial completed).
        table: one row per evaluated trial -- ``trial, name, recipe, val_acc, test_acc, epochs,
            state`` -- sorted by validation accuracy (pass it to ``pandas.DataFrame`` if you like).
        study_name: the Optuna study (``--study`` to resume it).
        parent_run_id: the MLflow run holding this search.
        stats: search-level figures: ``wall_seconds`` of ``search()``; ``setup_seconds`` before
            the first trial (validation, data, store, study); ``compute_seconds`` inside training
            and evaluation steps, summed over trials; ``bookkeeping_seconds`` in the driver's
            Optuna and MLflow calls; ``slots`` (trials at once); ``outside_compute_share``;
            trial counts; ``best_val_acc`` and ``gain_over_best_baseline``.
    """

    best: Recipe | None
    table: list[dict[str, Any]]
    study_name: str
    parent_run_id: str
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def baselines(self) -> list[dict[str, Any]]:
        return [r for r in self.table if r["name"] and not r["name"].startswith("trial-")]

    @property
    def best_baseline_acc(self) -> float | None:
        return max((r["val_acc"] for r in self.baselines if r["state"] == "COMPLETE"), default=None)

    def comparison(self, top: int = 5) -> str:
        """A text table: the ``top`` completed candidates and every baseline, with the gain in
        percentage points over the best baseline."""
        candidates = [r for r in self.table if r["state"] == "COMPLETE" and r not in self.baselines]
        rows = candidates[:top] + self.baselines
        ref = self.best_baseline_acc
        header = ["trial", "name", "val_acc", "vs best baseline", "test_acc", "epochs", "state",
                  "recipe"]
        lines = [header]
        for r in rows:
            delta = f"{100 * (r['val_acc'] - ref):+.2f} pp" if ref is not None and r["val_acc"] is not None else "-"
            lines.append([str(r["trial"]), r["name"], _pct(r["val_acc"]), delta, _pct(r["test_acc"]),
                          str(r["epochs"]), r["state"], r["recipe"]])
        widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1]
                         for row in lines)

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
                     "state": t.state.name})
    return sorted(rows, key=lambda r: (r["state"] != "COMPLETE", -(r["val_acc"] or 0.0)))


def best_recipe(study: optuna.Study) -> Recipe | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if Attr.RECIPE in t.user_attrs]
    if not complete:
        return None
    t = max(complete, key=lambda t: t.value)
    recipe = Recipe.from_dict(t.user_attrs[Attr.RECIPE])
    meta = {"study": study.study_name, "trial": t.number, "val_acc": t.value,
            "test_acc": t.user_attrs.get(Attr.TEST_ACC), **study.user_attrs}
    return Recipe(recipe.roles, recipe.name, recipe.role_overrides, meta)


def _pct(v: float | None) -> str:
    return f"{100 * v:.2f}%" if v is not None else "-"
