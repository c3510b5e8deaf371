"""The study storage with real Optuna: journal repair, the one-driver lock, database storages."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from initsearch.errors import UsageError
from initsearch.storage import (GRACE_PERIOD, HEARTBEAT_INTERVAL, LOCK_SUFFIX, StudyLock,
                                StudyStorage, repair_journal)

optuna.logging.set_verbosity(optuna.logging.WARNING)
PACKAGE = Path(__file__).resolve().parents[1] / "initsearch"


def make_journal(path: Path, trials: int = 3, name: str = "s") -> list[bytes]:
    """A real study with ``trials`` finished trials; returns the journal's lines."""
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=name, storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return path.read_bytes().splitlines(keepends=True)


def load(path: Path, name: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.bak-*"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- repair ----------------------------------------------------------------------------------------

def test_clean_journal_is_left_alone(tmp_path):
    path = tmp_path / "s.journal"
    make_journal(path)
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    assert repair_journal(path) == 0
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert backups(path) == []


def test_torn_last_record_is_cut_and_the_study_grows_again(tmp_path):
    path = tmp_path / "s.journal"
    lines = make_journal(path)
    damaged = b"".join(lines)[:-len(lines[-1]) // 2]  # killed in the middle of the last write
    path.write_bytes(damaged)

    # What happens without repair: Optuna skips the torn line on read, the next append is glued
    # onto it, and the study breaks.
    glued = tmp_path / "glued.journal"
    glued.write_bytes(damaged)
    with pytest.raises(Exception):
        load(glued).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

    said: list[str] = []
    assert repair_journal(path, report=said.append) == 1
    [backup] = backups(path)
    assert backup.read_bytes() == damaged
    assert path.read_bytes() == b"".join(lines[:-1])
    assert said == [f"journal {path}: dropped 1 damaged record(s) (backup at {backup})"]

    study = load(path)  # the torn record finished trial 2: it is RUNNING again, 0 and 1 intact
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    again = load(path)
    assert len(again.trials) == 4 and again.trials[-1].state == TrialState.COMPLETE
    assert repair_journal(path) == 0


@pytest.mark.parametrize("garbage", [b"garbage{\n", b"[1, 2]\n", b'{"op_code": 99, "worker_id": "w"}\n',
                                     b'{"op_code": 4}\n', b"\n"],
                         ids=["not-json", "not-an-object", "unknown-op", "no-worker", "blank"])
def test_garbage_record_cuts_the_rest(tmp_path, garbage):
    path = tmp_path / "s.journal"
    lines = make_journal(path)
    cut = 4  # create-study, then trial 0's records: later ones refer to what came before
    path.write_bytes(b"".join(lines[:cut]) + garbage + b"".join(lines[cut:]))
    if garbage == b"garbage{\n":  # what --resume did before: a raw decode error
        with pytest.raises(json.JSONDecodeError):
            load(path)

    assert repair_journal(path) == len(lines) + 1 - cut
    assert path.read_bytes() == b"".join(lines[:cut])
    reference = tmp_path / "reference.journal"
    reference.write_bytes(b"".join(lines[:cut]))
    expected = [(t.number, t.state, t.params) for t in load(reference).trials]
    assert [(t.number, t.state, t.params) for t in load(path).trials] == expected
    assert expected  # the cut kept a trial


@pytest.mark.parametrize("damage", ["garbage-first", "torn-first"])
def test_nothing_sensible_left_is_one_line_naming_the_backup(tmp_path, damage):
    path = tmp_path / "s.journal"
    lines = make_journal(path, trials=1)
    damaged = (b"garbage\n" + b"".join(lines)) if damage == "garbage-first" else lines[0][:20]
    path.write_bytes(damaged)
    with pytest.raises(UsageError) as exc:
        repair_journal(path)
    text = one_line(exc)
    [backup] = backups(path)
    assert str(backup) in text and str(path) in text and "new --study" in text
    assert backup.read_bytes() == damaged and path.read_bytes() == damaged  # left as it was
    with pytest.raises(UsageError):  # the driver's way in says the same, and holds no lock after
        StudyStorage(None, tmp_path).open("s", report=None)
    StudyLock(path).acquire().release()


def test_empty_journal_holds_no_study(tmp_path):
    """Optuna creates the journal file before its first record (JournalFileBackend's constructor):
    a 0-byte journal is a study that was never created, not a damaged one."""
    path = tmp_path / "s.journal"
    path.touch()
    assert repair_journal(path) == 0 and backups(path) == [] and path.read_bytes() == b""
    store = StudyStorage(None, tmp_path)
    assert not store.exists("s") and store.study_names() == []
    with store:  # a new study of that name may use it
        optuna.create_study(study_name="s", storage=store.open("s"))
    assert store.exists("s") and store.study_names() == ["s"]


# -- the storage a driver opens --------------------------------------------------------------------

def test_open_repairs_locks_and_clears_a_dead_writers_append_lock(tmp_path):
    journals = tmp_path / "optuna"
    journals.mkdir()
    path = journals / "s.journal"
    lines = make_journal(path)
    path.write_bytes(b"".join(lines)[:-5])
    os.symlink(path, str(path) + ".lock")  # Optuna's append lock, left by a kill mid-write
    said: list[str] = []
    store = StudyStorage(None, journals)
    assert store.kind == "journal" and not store.multi_driver
    with store:
        study = optuna.load_study(study_name="s", storage=store.open("s", report=said.append))
        assert len(said) == 1 and said[0].startswith(f"journal {path}: dropped 1 damaged record(s)")
        assert not os.path.lexists(str(path) + ".lock")
        with pytest.raises(UsageError, match="another driver"):
            StudyLock(path).acquire()
        t0 = time.monotonic()
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
        assert time.monotonic() - t0 < 10  # no 30 s wait for Optuna's stale lock
    StudyLock(path).acquire().release()  # closing the storage released the driver lock
    assert len(load(path).trials) == 4


def test_journal_names_and_urls(tmp_path):
    journals = tmp_path / "optuna"
    journals.mkdir()
    for i, name in enumerate(["b", "a", "c"]):
        make_journal(journals / f"{name}.journal", trials=0, name=name)
        os.utime(journals / f"{name}.journal", (1000 + i, 1000 + i))
    (journals / "empty.journal").touch()
    store = StudyStorage(None, journals)
    assert store.study_names() == ["b", "a", "c"]  # oldest first, by file time
    assert store.exists("a") and not store.exists("empty") and not store.exists("zzz")
    assert store.journal_path("a") == journals / "a.journal"
    with pytest.raises(UsageError):
        store.journal_path("../evil")

    shared = tmp_path / "all.journal"
    make_journal(shared, trials=0, name="one")
    make_journal(shared, trials=0, name="two")
    for url in (str(shared), f"journal:{shared}", f"file://{shared}"):
        s = StudyStorage(url, journals)
        assert s.journal_path("x") == shared and s.study_names() == ["one", "two"]
        assert s.exists("two") and not s.exists("a")
    assert StudyStorage(f"{journals}/", tmp_path).journal_path("a") == journals / "a.journal"
    with pytest.raises(UsageError, match="unsupported"):
        StudyStorage("redis://localhost/0", journals)


# -- the lock --------------------------------------------------------------------------------------

HOLDER = """
import os, sys, time, types
# the package without its __init__ (which imports torch: seconds on a slow machine)
pkg = types.ModuleType("initsearch"); pkg.__path__ = [sys.argv[1]]; sys.modules["initsearch"] = pkg
from initsearch.storage import StudyLock
lock = StudyLock(sys.argv[2], study="s").acquire()
worker = os.fork()  # a forked worker must not keep the lock alive after the driver died
if worker == 0:
    time.sleep(60); os._exit(0)
print(worker, flush=True)
time.sleep(60)
"""


def test_second_driver_is_refused_until_the_first_dies(tmp_path):
    path = tmp_path / "s.journal"
    lines = make_journal(path)
    torn = b"".join(lines)[:-5]  # what a live driver's half-written record looks like
    path.write_bytes(torn)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(PACKAGE), str(path)],
                              stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(holder.stdout.readline())
        info = json.loads(Path(str(path) + LOCK_SUFFIX).read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()

        with pytest.raises(UsageError) as exc:
            StudyLock(path).acquire()
        text = one_line(exc)
        assert f"pid {holder.pid} on host {socket.gethostname()} since {info['since']}" in text
        assert text.startswith("study 's' is being run by another driver")
        with pytest.raises(UsageError, match=f"pid {holder.pid} "):
            StudyStorage(None, tmp_path).open("s")
        assert path.read_bytes() == torn and backups(path) == []  # a live writer's record is not cut

        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        os.kill(worker, 0)  # the forked worker still runs
        with StudyLock(path, study="s") as lock:  # at once: the kernel dropped the dead one's flock
            assert lock.held
            assert json.loads(Path(str(path) + LOCK_SUFFIX).read_text())["pid"] == os.getpid()
    finally:
        holder.kill()
        holder.wait(10)
        if worker:
            try:
                os.kill(worker, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_lock_is_exclusive_within_a_process_too(tmp_path):
    path = tmp_path / "s.journal"
    with StudyLock(path):
        with pytest.raises(UsageError, match=f"pid {os.getpid()} "):
            StudyLock(path).acquire()
    with StudyLock(path):
        pass


# -- databases -------------------------------------------------------------------------------------

def test_sqlite_opens_rdb_with_heartbeat(tmp_path):
    store = StudyStorage(f"sqlite:///{tmp_path}/s.db", tmp_path / "optuna")
    assert store.kind == "rdb" and store.multi_driver and store.journal_path("a") is None
    assert store.study_names() == [] and not store.exists("a")
    with store:
        storage = store.open("a")
        assert isinstance(storage, RDBStorage)
        assert storage.get_heartbeat_interval() == HEARTBEAT_INTERVAL
        assert storage.grace_period == GRACE_PERIOD
        optuna.create_study(study_name="a", storage=storage)
        optuna.create_study(study_name="b", storage=storage)
    assert store.exists("a") and store.study_names() == ["a", "b"]
    assert not (tmp_path / "optuna").exists()  # no journal, no lock


def test_heartbeat_fails_only_trials_whose_driver_stopped_beating(tmp_path):
    """Optuna's semantics the driver relies on: a RUNNING trial is stale once its last heartbeat
    is older than the grace period (database clock); a trial that never beat is never stale."""
    store = StudyStorage(f"sqlite:///{tmp_path}/s.db", tmp_path, heartbeat_interval=1,
                         grace_period=1)
    study = optuna.create_study(study_name="a", storage=store.open("a"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize"
        beating, silent = study.ask(), study.ask()
        study._storage.record_heartbeat(beating._trial_id)
        time.sleep(2.2)
        optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {beating.number: TrialState.FAIL, silent.number: TrialState.RUNNING}
    store.close()


@pytest.mark.parametrize("url", ["postgresql://user:secret@127.0.0.1:1/db",
                                 "postgresql+pg8000://user:secret@127.0.0.1:1/db",
                                 "mysql+pymysql://user:secret@127.0.0.1:1/db"])
def test_unreachable_or_driverless_database_is_one_masked_line(tmp_path, url):
    store = StudyStorage(url, tmp_path)
    assert "secret" not in store.display
    with pytest.raises(UsageError) as exc:
        store.open("a")
    text = one_line(exc)
    assert "secret" not in text and "user:***@127.0.0.1:1/db" in text
    module = {"pg8000": "pg8000", "pymysql": "pymysql"}.get(url.partition("+")[2].partition(":")[0])
    if module and importlib.util.find_spec(module) is None:
        assert f"needs the Python package {module!r}" in text and "pip install" in text
    else:
        assert "cannot open the Optuna storage" in text or "needs the Python package" in text


def test_sqlite_in_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(UsageError) as exc:
        StudyStorage(f"sqlite:///{tmp_path}/no/such/dir/s.db", tmp_path).open("a")
    assert "folder exists" in one_line(exc)
