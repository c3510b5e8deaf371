"""The study record's vocabulary: what a search writes on its Optuna study and on each of its
trials, and what the confirmation, the recommendation and the report read back.

A study is the single record of a search (``--resume`` continues it, ``initsearch report`` reads
it), so the names of its attributes are a file format: writers and readers import them from
here, and none of them needs the others. (The settings and content a resumed study must match
are named by :class:`~initsearch.plan.StudyPlan`.)
"""
from __future__ import annotations


class StudyAttr:
    """Names of the user attributes a search writes on its study."""

    CHANCE = "chance_acc"   # the select split's chance level
    REPLAYS = "replays"     # the earlier twin study whose cached draws this one replayed
    RACE = "confirm"        # the race's entries, seeds, rules and fidelity ({}: no confirmation)
    CLAIM = "confirm_claim"  # on a shared study, the driver that runs the race
    JOB = "confirm/"        # prefix of one race job's record: confirm/<recipe key>/<seed>


class Attr:
    """Names of the user attributes a driver writes on each Optuna trial."""

    BASELINE = "baseline"  # the baseline's name, on enqueued baseline trials
    RECIPE = "recipe"      # the recipe as a dict
    RUN_ID = "run_id"      # the trial's MLflow child run
    EPOCHS = "epochs"      # epochs trained; set when the trial ends (absent: cut off mid-trial)
    TEST_ACC = "test_acc"  # final test accuracy, completed trials only
    ERROR = "error"        # why a FAIL failed ("diverged at epoch 3: train_loss nan", a traceback)
    INFRA = "infrastructure"  # True on a FAIL whose cause was not the recipe (a worker died)
    REQUEUED = "requeued"  # on a trial queued again after an infrastructure failure
    REPLAYS = "replays"    # on a draw queued from an earlier twin study: "<study>/<trial number>"
    CACHED = "cached_from"  # the MLflow run whose result the trial replayed (result cache)


def reason(error: str) -> str:
    """One line for a table or a tag: the last line of a traceback, at most 300 characters."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else error)[:300]
