"""A study shared by several drivers (a database storage) is reported whole or said to be
partial, and raced by one driver. Another driver's live trial is a real RUNNING trial in the
same SQLite study, kept alive by its heartbeat, as a second process's would be."""
from __future__ import annotations

import threading
import time

import optuna
import pytest

from initsearch.cli import main
from initsearch.confirm import RaceClaim
from initsearch.record import StudyAttr
from initsearch.settings import ConfirmConfig, RunConfig
from initsearch.study import search

pytestmark = pytest.mark.usefixtures("one_thread")


def _other_driver_running(url: str, name: str) -> tuple[optuna.Study, optuna.trial.Trial]:
    """A trial another driver is running: asked, beating, never told (yet)."""
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=300)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    return study, trial


@pytest.fixture
def shared(home, data_dir, tmp_path) -> tuple[str, dict]:
    """A one-trial study in SQLite, and the arguments that resume it to a budget of 3."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    search("mlp", data_dir=data_dir, budget=1, profile="smoke", confirm=ConfirmConfig(seeds=0),
           run=RunConfig(name="shared", backend="local", home=home, storage=url))
    return url, dict(data_dir=data_dir, budget=3, profile="smoke", confirm=ConfirmConfig(seeds=0))


def test_a_driver_done_before_the_others_reports_partial(shared, home, tmp_path, capsys):
    """Its own share done, another driver's trial still in flight after --wait-for-others:
    the driver says how partial the study is, races nothing and writes no recipe (exit 0)."""
    url, _ = shared
    _other_driver_running(url, "shared")
    out = tmp_path / "best.yaml"
    code = main(["run", "--arch", "mlp", "--profile", "smoke", "--budget", "3", "--study", "shared",
                 "--resume", "--storage", url, "--home", str(home), "--backend", "local",
                 "--wait-for-others", "0", "--out", str(out), "--no-progress"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "verdict: partial: 2 of 3 trials finished, 1 still in flight on other drivers" in stdout
    assert not out.exists() and "recommended recipe" not in stdout
    study = optuna.load_study(study_name="shared", storage=url)
    assert not study.user_attrs["confirm"] and StudyAttr.CLAIM not in study.user_attrs  # no race began


def test_a_driver_waits_for_the_others_and_judges_the_whole_study(shared, home):
    """The other driver's trial ends while this driver waits: the result covers every trial
    of the budget, and is no longer partial."""
    url, args = shared
    other, trial = _other_driver_running(url, "shared")
    ended = threading.Timer(3.0, lambda: other.tell(trial, 0.2))
    ended.start()
    t0 = time.monotonic()
    try:
        result = search("mlp", run=RunConfig(name="shared", resume=True, backend="local",
                                             home=home, storage=url, wait_for_others=120), **args)
    finally:
        ended.cancel()
    assert time.monotonic() - t0 >= 3.0  # it waited for the other trial
    assert result.verdict.kind == "unconfirmed" and result.best is not None
    # the other driver's trial was told without "epochs" (as a killed driver's would be), so it
    # does not count: this driver ran trials until the budget's 3 were its own
    study = optuna.load_study(study_name="shared", storage=url)
    assert sum("epochs" in t.user_attrs for t in study.get_trials()) == 3


def test_one_driver_per_study_holds_the_race_until_it_is_released_or_stale(tmp_path):
    """Two drivers claiming one study's race: the first holds it while it beats, the second is
    told who; a released claim is free; a claim whose driver stopped beating is taken over."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'c.db'}", study_name="c")
    first = RaceClaim(study, interval=0.2, stale_after=1.0, settle=0.1)
    second = RaceClaim(study, interval=0.2, stale_after=1.0, settle=0.1)
    second.me = "elsewhere:1"
    assert first.take() is None
    time.sleep(1.2)  # beyond stale_after: the first's thread kept its claim alive
    assert second.take() == first.me
    first.release()
    assert second.take() is None and study.user_attrs[StudyAttr.CLAIM]["who"] == "elsewhere:1"
    second._stop.set()  # the second driver dies mid-race: its claim is no longer beaten
    second._thread.join()
    assert first.take() == "elsewhere:1"  # still fresh
    time.sleep(1.2)
    assert first.take() is None  # stale: taken over
    first.release()
