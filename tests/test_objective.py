"""The objective a trial scores: the last epoch's accuracy, the area under the accuracy curve,
or how early a target is reached -- computed from the curve, read alike by the search, its
pruner and the race, and named in the evidence."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from initsearch.errors import UsageError
from initsearch.plan import parse_objective
from initsearch.protocol import load_protocol
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.study import search

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _protocol(objective: str, target: float | None = None, epochs: int = 4):
    return dataclasses.replace(load_protocol("smoke"), epochs=epochs, objective=objective,
                               objective_target=target)


def test_scores_of_one_curve():
    curve = [0.20, 0.35, 0.42, 0.40]
    assert _protocol("final").score(curve) == 0.40
    assert _protocol("auc").score(curve) == pytest.approx(0.3425)
    to = _protocol("epochs_to", 0.4)
    assert to.score(curve) == pytest.approx(2 / 4)  # first reached at epoch 3 of 4: half left
    assert to.score([0.5, 0.1, 0.1, 0.1]) == 1.0 and to.score([0.1] * 4) == 0.0
    # mid-trial the bound assumes the next epoch reaches it: never pruned for lack of time
    assert to.score([0.1, 0.2]) == pytest.approx(2 / 4) and to.score([0.1, 0.2, 0.3]) == 0.25
    # two curves ending alike: the one that got there sooner has the higher AUC
    assert _protocol("auc").score([0.4, 0.4, 0.4, 0.4]) > _protocol("auc").score([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("text, message", [
    ("fastest", "must be final, auc or epochs_to:TARGET"),
    ("epochs_to", "must be final, auc or epochs_to:TARGET"),
    ("auc:0.4", "must be final, auc or epochs_to:TARGET"),
    ("epochs_to:40", "the target must be an accuracy in (0, 1)"),
    ("epochs_to:x", "the target must be an accuracy in (0, 1)"),
])
def test_a_bad_objective_is_one_line(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_objective(text, load_protocol("smoke"))


def test_the_search_table_names_the_score_by_objective():
    from initsearch.protocol import score_column

    assert (score_column(), score_column("auc"), score_column("epochs_to", 0.4)) == (
        "val_acc", "val_auc", "val_epochs_to_40%")


def test_a_protocol_file_names_its_target_with_epochs_to(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text((REPO / "trials" / "smoke.yaml").read_text() + "objective: epochs_to\n")
    with pytest.raises(UsageError, match="objective_target is the accuracy epochs_to counts to"):
        load_protocol(str(path))


def test_an_auc_search_and_race_score_the_whole_curve(data_dir, home):
    """Under ``auc`` the study's values are the mean select-split accuracy over the epochs, each
    race job's score the mean confirm-split accuracy over its epochs, and the evidence says so."""
    result = search("mlp", data_dir=data_dir, budget=3, profile="smoke", objective="auc",
                    run=RunConfig(name="auc", backend="local", home=home),
                    confirm=ConfirmConfig(top=1, seeds=3, max_seeds=3, epochs=2))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(home / "mlruns" / "optuna" / "auc.journal")))
    study = optuna.load_study(study_name="auc", storage=storage)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        curve = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        assert t.value == pytest.approx(curve[-1])  # the running mean at the last epoch
        assert curve[0] != curve[-1] or len(curve) == 1
    jobs = [job for row in result.verdict.rows for job in row.runs.values()]
    assert jobs and all(len(j["confirm_curve"]) == 2 for j in jobs)
    for j in jobs:  # the mean over the epochs, not the last epoch's accuracy
        assert j["score"] == pytest.approx(sum(j["confirm_curve"]) / 2)
        assert j["confirm_acc"] == j["confirm_curve"][-1]
        assert j["seconds"] > 0  # what the race's cost rule reads
    assert study.user_attrs["protocol"]["objective"] == "auc"
    assert "AUC" in result.verdict.table() and result.verdict.objective.startswith("mean accuracy")
    header = result.comparison().splitlines()[1].split()  # the column says what the score is
    assert header[2] == "val_auc" and "val_acc" not in header
    assert result.to_csv().splitlines()[0].split(",")[3] == "val_auc"
    if result.best is not None:
        assert result.best.evidence["objective"] == "mean accuracy over the epochs (AUC)"


def test_gradinit_runs_the_papers_iterations_and_says_how_far_it_moved(data_dir):
    """The paper's count whatever the split (here 512 images: one epoch would be 4 iterations),
    unless the protocol caps it (smoke: 10); the trial reports the scales it reached."""
    from initsearch.data import load_splits
    from initsearch.plan import resolve_model
    from initsearch.recipe import BASELINES
    from initsearch.trial import TrialConfig, run_trial

    protocol, model = resolve_model("mlp", profile="smoke")
    splits = load_splits("cifar10", data_dir, **protocol.split_sizes())
    for init_steps, iterations in (({}, 390), (protocol.init_steps, 10)):
        p = dataclasses.replace(protocol, epochs=1, init_steps=init_steps)
        first = next(run_trial(TrialConfig(0, BASELINES["gradinit"].to_dict(), p.to_dict()),
                               splits, model.factory))
        assert first["gradinit_iterations"] == iterations
        assert 0 <= first["gradinit_scale_min"] <= first["gradinit_scale_max"]  # a bias may reach 0
        assert first["gradinit_scale_max"] != 1.0 or first["gradinit_scale_min"] != 1.0  # it moved
    assert protocol.init_steps == {"gradinit": {"iters": 10}}


def test_a_protocol_s_init_steps_are_checked_by_the_step(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text((REPO / "trials" / "smoke.yaml").read_text().replace(
        "gradinit: {iters: 10}", "gradinit: {iters: -3}"))
    with pytest.raises(UsageError, match="init_steps.gradinit: .*iters"):
        load_protocol(str(path))
