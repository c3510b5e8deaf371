"""Report: the confirmed comparison in words and four plots, from the study alone.

``initsearch report [STUDY]`` prints the search table, the confirmed comparison and the verdict,
and writes PNG plots; ``initsearch run`` logs the same plots to the search's MLflow run
(``plots/``), so the MLflow UI shows them. The plots are drawn by Optuna's visualization module
and matplotlib:

* ``race.png`` -- the race: each recipe's confirm-split accuracy (mean and 95 % interval) at
  every look it survived to, so a reader sees who was dropped when and how the intervals closed;
* ``val_acc_curves.png`` -- select-split accuracy per epoch of the confirmation jobs, mean and
  min-max band over each recipe's seeds (the recommendation drawn thick);
* ``optimization_history.png`` -- the search's objective by trial
  (:func:`optuna.visualization.matplotlib.plot_optimization_history`);
* ``param_importances.png`` -- which choices mattered
  (:func:`~optuna.visualization.matplotlib.plot_param_importances`, PED-ANOVA, which scores the
  conditional per-role parameters);
* ``score_by_scheme.png`` -- final score by scheme for each role
  (:func:`~optuna.visualization.matplotlib.plot_slice` over the ``<role>.init`` choices).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in a Ray worker

import optuna  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from initsearch.errors import UsageError  # noqa: E402
from initsearch.protocol import score_column  # noqa: E402
from initsearch.recommend import SearchResult, Verdict, build_table, verdict_of  # noqa: E402
from initsearch.record import StudyAttr  # noqa: E402
from initsearch.settings import resolve_home  # noqa: E402
from initsearch.storage import StudyStorage  # noqa: E402


def plots(study: optuna.Study, verdict: Verdict | None) -> dict[str, Any]:
    """``{file name: matplotlib Figure}``; a plot the study cannot support yet (too few
    completed trials, one value per parameter) is left out."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as vis

    figures: dict[str, Any] = {}
    if verdict is not None and any(r.val is not None for r in verdict.rows):
        figures["race.png"] = _race(verdict)
        figures["val_acc_curves.png"] = _curves(verdict)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return figures
    roles = sorted({p for t in complete for p in t.params if p.endswith(".init")})
    drawers = {
        "optimization_history.png": lambda: vis.plot_optimization_history(study),
        "param_importances.png": lambda: vis.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator()),
        "score_by_scheme.png": lambda: vis.plot_slice(study, params=roles),
    }
    # Optuna sizes a slice plot at half the default width per parameter; labels like
    # "he:mode=fan_out" need 3.5 inches each
    style = {"figure.figsize": (7.0, 4.8), "xtick.labelsize": 8, "figure.subplot.bottom": 0.24,
             "figure.subplot.top": 0.88}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, draw in drawers.items():
            try:
                with plt.rc_context(style):
                    axes = draw()
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances need two completed trials that differ
            fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            if name == "score_by_scheme.png":  # a colorbar axis: no tight_layout
                for ax in getattr(axes, "flat", [axes]):
                    ax.tick_params(axis="x", labelrotation=25)
                fig.suptitle("Final val_acc by scheme, per role (completed trials)")
            else:
                fig.tight_layout()
            figures[name] = fig
    return figures


def _race(verdict: Verdict):
    """Accuracy and 95 % interval per look, one line per recipe, ending with an x where it was
    dropped; the chance level is drawn only where the intervals come near it."""
    fig, ax = plt.subplots(figsize=(9, 5))
    chosen = verdict.recommended.name if verdict.recommended else None
    looks = verdict.outcome.looks
    colors = plt.get_cmap("tab20").colors  # 12+ recipes: tab10 would repeat colours
    lows = []
    for i, name in enumerate(r.name for r in verdict.rows):
        at = [(k.seeds, k.standings[name]) for k in looks if name in k.standings]
        if not at:
            continue
        x = [s + 0.04 * (i % 7 - 3) for s, _ in at]  # a small offset keeps the bars apart
        mean = [100 * e.mean for _, e in at]
        err = [[100 * (e.mean - e.lo) for _, e in at], [100 * (e.hi - e.mean) for _, e in at]]
        lows += [100 * e.lo for _, e in at]
        color = colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20]
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, color=color,
                    lw=3.0 if name == chosen else 1.2, label=name)
        if name in verdict.outcome.dropped:
            ax.plot(x[-1], mean[-1], "x", color="black", ms=9, zorder=5)
    if lows and min(lows) < 100 * verdict.chance + 5:
        ax.axhline(100 * verdict.chance, color="grey", ls=":", lw=1, label="chance level")
    ax.set_xlabel("seeds per recipe at the look (x: dropped there)")
    ax.set_ylabel("confirm-split accuracy (%), mean and 95% CI")
    ax.set_title(f"Race: {len(looks)} looks; {verdict.kind}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def _curves(verdict: Verdict):
    fig, ax = plt.subplots(figsize=(8, 5))
    chosen = verdict.recommended.name if verdict.recommended else None
    for row in verdict.rows:
        curves = [row.runs[s]["curve"] for s in sorted(row.runs) if row.runs[s]["state"] == "COMPLETE"]
        if not curves:
            continue
        epochs = range(1, min(map(len, curves)) + 1)
        by_epoch = [[c[e - 1] for c in curves] for e in epochs]
        mean = [100 * sum(v) / len(v) for v in by_epoch]
        width = 3.0 if row.name == chosen else 1.4
        line, = ax.plot(list(epochs), mean, lw=width, label=f"{row.name} ({row.kind})")
        ax.fill_between(list(epochs), [100 * min(v) for v in by_epoch],
                        [100 * max(v) for v in by_epoch], color=line.get_color(), alpha=0.15)
    ax.axhline(100 * verdict.chance, color="grey", ls=":", lw=1, label="chance level")
    ax.set_xlabel("epoch")
    ax.set_ylabel("select-split accuracy (%)")
    ax.set_title("Confirmation jobs: mean and min-max over each recipe's seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def close_figures(figures: Iterable[Any]) -> None:
    for fig in figures:
        plt.close(fig)


def report(study_name: str | None, home: str | os.PathLike | None, out: str | os.PathLike | None,
           storage: str | None = None) -> tuple[str, Path, list[str]]:
    """Read a study (the newest in its storage when ``study_name`` is None) and write its plots
    to ``out`` (default ``report-<study>/``). ``storage``: where the study is, as for ``search``
    (``RunConfig.storage``: a journal file or folder, or a database URL); None: the journals
    under ``home``. The study is only read (no lock: a driver may still be running it). Returns
    the text to print, the folder and the files written.

    Raises:
        UsageError: no such study, it cannot be read as it is, or it has no completed trial yet.
    """
    store = StudyStorage(storage, resolve_home(home) / "mlruns" / "optuna")
    names = store.study_names()
    if study_name is None:
        if not names:
            raise UsageError(f"no study under {store.display}; run a search first or pass "
                             "--home or --storage")
        study_name = names[-1]
    elif study_name not in names:
        raise UsageError(f"no study {study_name!r} in {store.display} (studies: "
                         f"{', '.join(names) or 'none'}); check the name or pass --home or --storage")
    study = store.peek(study_name)
    if study is None:
        raise UsageError(f"study {study_name!r} in {store.display} cannot be read as it is; "
                         f"`initsearch run --study {study_name} --resume` repairs a damaged journal")
    if (not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            and not study.user_attrs.get(StudyAttr.RACE)):  # a confirm study has a race, no search
        raise UsageError(f"study {study_name!r} has no completed trial yet; resume it "
                         f"(initsearch run --study {study_name} --resume) and report again")
    verdict = verdict_of(study)
    protocol = study.user_attrs.get("protocol", {})
    result = SearchResult(None, build_table(study), study_name, "", verdict, score_column=score_column(
        protocol.get("objective", "final"), protocol.get("objective_target")))
    folder = Path(out or f"report-{study_name}")
    folder.mkdir(parents=True, exist_ok=True)
    figures = plots(study, verdict)
    for name, fig in figures.items():
        fig.savefig(folder / name, dpi=110)
    close_figures(figures.values())
    text = "\n\n".join(filter(None, [result.comparison() if result.table else "", verdict.table(),
                                      verdict.text]))
    return text, folder, sorted(figures)
