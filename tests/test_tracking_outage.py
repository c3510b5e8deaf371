"""The outage policy alone: how failures are sorted, how long the store is left alone, and
what the policy says when. Real exceptions (the ones requests, urllib3, sqlite and MLflow
raise), no store; the real-server outage is tests/test_tracking_faults.py."""
from __future__ import annotations

import os
import socket
import sqlite3

import pytest
import requests
import urllib3
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from initsearch.tracking.outage import FAIL_FAST, Outage, backoff, classify, fail_fast, reason


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """``exc`` as it is caught: raised (from ``cause``, if any), with its traceback and chain."""
    try:
        raise exc from cause
    except BaseException as caught:  # noqa: BLE001
        return caught


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("exc, kind", [
    (ConnectionRefusedError(111, "Connection refused"), "down"),
    (TimeoutError("timed out"), "down"),
    (requests.exceptions.ConnectionError("reset by peer"), "down"),
    (requests.exceptions.ReadTimeout("read timed out"), "down"),
    (sqlite3.OperationalError("database is locked"), "down"),
    (requests.exceptions.RetryError("too many 503 error responses"), "answered"),
    (MlflowException("boom", error_code=INTERNAL_ERROR), "answered"),  # a 5xx, nothing below it
    (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), None),  # a 4xx: wrong
    (TypeError("unsupported operand"), None),
    (KeyError("layers_json"), None),
])
def test_classify(exc, kind):
    assert classify(_raised(exc)) == kind


def test_classify_looks_down_the_chain():
    """MLflow wraps what its HTTP client or database driver raised: the cause decides."""
    refused = _raised(MlflowException("API request failed"),
                      urllib3.exceptions.NewConnectionError(None, "Connection refused"))
    assert classify(refused) == "down"
    locked = _raised(MlflowException("(sqlite3.OperationalError) database is locked",
                                     error_code=INTERNAL_ERROR), sqlite3.OperationalError("locked"))
    assert classify(locked) == "down"
    bug = _raised(MlflowException("API request failed with exception boom"), TypeError("boom"))
    assert classify(bug) is None  # a 5xx code over a programming error is still a programming error


@pytest.mark.parametrize("exc, words", [
    (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
    (requests.exceptions.RetryError("Max retries exceeded (Caused by ResponseError("
                                    "'too many 502 error responses'))"), "HTTP 502"),
    (sqlite3.OperationalError("database is locked"), "database is locked"),
    (requests.exceptions.ReadTimeout("HTTPConnectionPool: Read timed out."), "timed out"),
    (OSError("disk quota exceeded\nsecond line"), "disk quota exceeded"),
])
def test_reason_is_a_few_words(exc, words):
    assert reason(_raised(exc)) == words


def test_backoff_doubles_up_to_the_cap():
    assert [backoff(n, 10.0, 60.0) for n in range(1, 6)] == [10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff(10_000, 10.0, 60.0) == 60.0  # no overflow however long the outage


def test_fail_fast_sets_only_what_the_user_has_not(monkeypatch):
    for key in FAIL_FAST:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with fail_fast():
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"  # the user's own setting wins
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # other code keeps MLflow's defaults
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"


def test_an_outage_pauses_says_so_once_and_ends(tmp_path, capfd):
    outage = Outage(f"sqlite:///{tmp_path / 'm.db'}")
    assert outage.due()
    down = _raised(sqlite3.OperationalError("database is locked"))
    assert outage.failed(down, pending=3) == "wait"
    assert not outage.due()  # within the pause
    assert outage.due(force=True)  # a local store has no /health: a forced try goes ahead
    assert outage.failed(down, pending=4) == "wait"
    err = capfd.readouterr().err.splitlines()
    assert err == [f"initsearch: warning: tracking store {outage.uri} unavailable (database is "
                   "locked); keeping 3 pending writes, retrying"]
    assert outage.end(written=4)
    assert capfd.readouterr().err == (f"initsearch: tracking store {outage.uri} available again; "
                                      "wrote 4 pending writes\n")
    assert outage.due() and outage.reason is None and not outage.end(written=0)


def test_a_server_that_does_not_answer_stays_paused():
    outage = Outage(f"http://127.0.0.1:{_free_port()}")
    outage.retry_seconds = 0.0
    outage.failed(_raised(ConnectionRefusedError(111, "Connection refused")), pending=1)
    assert outage.reason == "connection refused"
    assert not outage.due() and not outage.due(force=True)  # /health refused: no write is tried
    assert outage.reason == "connection refused"  # still the same outage


def test_wrong_writes_and_bugs_are_not_outages():
    outage = Outage("sqlite:////nowhere/m.db")
    refused = _raised(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    assert outage.failed(refused, 1) == "wrong"
    assert outage.failed(_raised(TypeError("boom")), 1) == "bug"
    assert outage.reason is None and outage.due()


def test_a_write_the_live_server_keeps_failing_is_skipped_after_max_strikes(tmp_path):
    """A local store counts as answering: a 5xx on one write is that write's, not an outage."""
    outage = Outage(f"sqlite:///{tmp_path / 'm.db'}")
    fails = _raised(MlflowException("boom", error_code=INTERNAL_ERROR))
    verdicts = [outage.failed(fails, 1) for _ in range(outage.max_strikes)]
    assert verdicts == ["wait"] * (outage.max_strikes - 1) + ["skip"]
    outage.settled()  # the next write starts with no strikes
    assert outage.failed(fails, 1) == "wait"
