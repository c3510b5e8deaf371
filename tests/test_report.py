"""The report by itself, on a study written the way the drivers write one (a search's trials,
a race's plan and records, in a real Optuna journal): its text and its plots, with no search."""
from __future__ import annotations

import random

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from initsearch.confirm import REFERENCE, ConfirmJob, Entry, save_plan, write_record
from initsearch.errors import UsageError
from initsearch.protocol import load_protocol
from initsearch.race import RaceRules
from initsearch.recipe import Recipe, RoleInit
from initsearch.record import Attr
from initsearch.recommend import verdict_of
from initsearch.report import close_figures, plots, report
from initsearch.storage import StudyStorage

SCHEMES = ("he", "xavier", "orthogonal")
SEEDS = [101, 102, 103, 104]
#: confirm-split accuracy per seed: the candidate leads, the others trail and are dropped
RACE = {REFERENCE: [0.30, 0.31, 0.29, 0.30], "he": [0.40, 0.41, 0.42, 0.40],
        "trial-004": [0.50, 0.52, 0.51, 0.50], "zero": [0.20, 0.21, 0.20, 0.22]}


def _write_study(study: optuna.Study) -> None:
    """Eight search trials over two roles' schemes and a scale, then a race over four recipes."""
    rng = random.Random(0)
    dists = {"linear.init": CategoricalDistribution(SCHEMES),
             "classifier.init": CategoricalDistribution(SCHEMES),
             "linear.scale": FloatDistribution(0.25, 4.0, log=True)}
    for n in range(8):
        params = {"linear.init": SCHEMES[n % 3], "classifier.init": SCHEMES[(n // 3) % 3],
                  "linear.scale": rng.uniform(0.3, 3.0)}
        recipe = Recipe({"linear": RoleInit(params["linear.init"], scale=params["linear.scale"]),
                         "classifier": RoleInit(params["classifier.init"])}, f"trial-{n:03d}")
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=0.2 + 0.04 * n + rng.uniform(0, 0.02),
            intermediate_values={1: 0.15, 2: 0.2},
            user_attrs={Attr.RECIPE: recipe.to_dict(), Attr.EPOCHS: 3, Attr.TEST_ACC: 0.2}))
    study.set_user_attr("chance_acc", 0.12)
    # distinct contents: a race keys its records by what the recipe does, not by its name
    roles = {REFERENCE: {}, "he": {"linear": RoleInit("he")}, "trial-004": {"linear": RoleInit("xavier")},
             "zero": {"linear": RoleInit("orthogonal")}}
    entries = [Entry(name, Recipe(roles[name], name), None if name.startswith("trial") else name,
                     None) for name in RACE]
    rules = RaceRules(min_seeds=3, max_seeds=4, min_effect=0.01, chance=0.12)
    save_plan(study, entries, SEEDS, rules, load_protocol("smoke").for_confirmation())
    for entry in entries:
        for seed, acc in zip(SEEDS, RACE[entry.name]):
            write_record(study, ConfirmJob(entry, seed), {
                "state": "COMPLETE", "epochs": 3, "curve": [acc / 2, acc * 0.8, acc],
                "val_acc": acc, "confirm_acc": acc, "test_acc": acc - 0.01, "error": None,
                "run_id": "r", "cached_from": None})


@pytest.fixture
def written(home) -> str:
    with StudyStorage(None, home / "mlruns" / "optuna") as store:
        _write_study(optuna.create_study(study_name="rep", storage=store.open("rep"),
                                         direction="maximize"))
    return "rep"


def test_plots_show_the_race_and_the_search(written, home):
    study = StudyStorage(None, home / "mlruns" / "optuna").peek(written)
    verdict = verdict_of(study)
    assert verdict.kind == "recommend" and verdict.recommended.name == "trial-004"
    figures = plots(study, verdict)
    try:
        assert set(figures) == {"race.png", "val_acc_curves.png", "optimization_history.png",
                                "param_importances.png", "score_by_scheme.png"}
        race = figures["race.png"].axes[0]
        labels = {t.get_text() for t in race.get_legend().get_texts()}
        assert set(RACE) <= labels
        dropped = [line for line in race.get_lines() if line.get_marker() == "x"]
        assert len(dropped) == 3  # everyone but the winner, each marked where it was dropped
    finally:
        close_figures(figures.values())


def test_report_prints_the_tables_and_writes_the_plots(written, home, tmp_path):
    text, folder, files = report(None, home, tmp_path / "out")  # None: the newest study
    assert folder == tmp_path / "out" and set(files) == {p.name for p in folder.iterdir()}
    assert "race.png" in files and "optimization_history.png" in files
    assert "trial-007" in text                               # the search's table
    assert "* trial-004" in text and "recommend trial-004" in text  # the race and its verdict


def test_report_refuses_an_unknown_study_in_one_line(written, home):
    with pytest.raises(UsageError, match=r"no study 'nope' .*\(studies: rep\)"):
        report("nope", home, None)
