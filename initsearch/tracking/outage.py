"""The outage policy: which failed writes mean the store is out of reach, and when to try again.

A write fails either because the store cannot take any write now -- connection refused or
reset, a timeout, an HTTP 5xx, sqlite "database is locked" -- or because the write itself is
wrong (an MLflow 4xx, a ``TypeError``). The first is an outage: the search goes on, its writes
wait (:mod:`initsearch.tracking.queue`), one line on stderr says so, and the store is tried
again after a pause that doubles per failed try. The second raises, as it would without any
queue. A server that is up (its ``/health`` answers) but keeps failing one write with a 5xx
gets :attr:`Outage.max_strikes` tries at it, then that write is dropped so that it does not
block the ones behind it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Literal

from initsearch.tracking.store import answers, is_server

#: MLflow client settings for the Tracker's calls. MLflow reads these environment variables at
#: every request (``mlflow.utils.rest_utils.http_request``); its defaults of 7 retries, backoff
#: factor 2 and a 120 s timeout make a call to a server that is down take minutes. Here: ~2 s
#: per failed call when the connection is refused, at most ~20 s when nothing answers. Also no
#: "View run ... at: URL" lines on stdout (and the extra ``get_run`` behind them) per ended run.
#: They are set only for the duration of a Tracker call, and only where the user has not set
#: them, so other code in the process keeps MLflow's defaults.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: Loggers that print a traceback or a retry line per failed request; quiet during a Tracker
#: call, which reports an outage on one line itself.
_QUIET = ("mlflow.store.db.utils", "urllib3.connectionpool")

#: What to do with a write that failed: keep it queued until the store is back (``wait``), drop
#: it because the server keeps failing it alone (``skip``), or treat it as wrong: refused by
#: the store (``wrong``) or not a store error at all (``bug``).
Verdict = Literal["wait", "skip", "wrong", "bug"]


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """MLflow's HTTP client fails fast (:data:`FAIL_FAST`) and quietly, for one Tracker call."""
    added = [k for k in FAIL_FAST if k not in os.environ]
    for key in added:
        os.environ[key] = FAIL_FAST[key]
    loggers = [logging.getLogger(name) for name in _QUIET]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def classify(exc: BaseException) -> str | None:
    """Why a write failed: ``"down"`` (the store cannot be reached: connection refused or
    reset, timeout, database locked or gone), ``"answered"`` (the server answered with a 5xx),
    or None (the write is wrong -- an MLflow 4xx, a programming error -- and must raise)."""
    import requests
    import urllib3
    from mlflow.exceptions import MlflowException

    chain = list(_chain(exc))
    if any(isinstance(e, (requests.exceptions.RetryError, urllib3.exceptions.ResponseError))
           for e in chain):  # "too many 5xx error responses"
        return "answered"
    for e in chain:
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError,
                          ConnectionError, TimeoutError)):
            return "down"
        names = {cls.__name__ for cls in type(e).__mro__}
        if names & {"OperationalError", "InterfaceError", "DisconnectionError"} \
                or "database is locked" in str(e):
            return "down"  # sqlite locked, a database server gone (SQLAlchemy and its drivers)
        if any(n.endswith(("ConnectionError", "ConnectTimeoutError", "ReadTimeoutError"))
               for n in names):
            return "down"  # an artifact store's client (botocore, azure, gcs) cut off
    if isinstance(exc, MlflowException) and exc.get_http_status_code() >= 500 \
            and all(isinstance(e, MlflowException) for e in chain):
        return "answered"
    return None


def reason(exc: BaseException) -> str:
    """A few words on why the store is unreachable, for the warning line."""
    text = " ".join(str(e) for e in _chain(exc))
    if m := re.search(r"\[Errno -?\d+\] ([^'\"()\]\[]+)", text):
        return m.group(1).strip().lower()
    if m := re.search(r"too many (\d+) error responses", text):
        return f"HTTP {m.group(1)}"
    for words in ("database is locked", "timed out", "timeout"):
        if words in text.lower():
            return words
    return first_line(exc, 160)


def first_line(exc: BaseException, limit: int) -> str:
    """The first line of ``exc``'s message (its type's name if it has none), cut to ``limit``."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:limit]


def backoff(tries: int, first: float, cap: float) -> float:
    """Seconds to wait after the ``tries``-th failed try in a row: ``first``, doubled per
    further try, at most ``cap`` -- a store that stays down is asked less and less often."""
    return min(first * 2 ** min(tries - 1, 10), cap)


def say(line: str) -> None:
    """One line on stderr, where the progress bars do not overwrite it."""
    print(f"initsearch: {line}", file=sys.stderr, flush=True)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


class Outage:
    """The store's state as the writes see it: up, or down since a failed write (why, and when
    to try it next). One per store; the queue asks it before each try and after each failure."""

    #: While the store is down, how often (seconds, at most) the queue is tried again; the
    #: pause doubles with each failed try, up to :attr:`max_retry_seconds` (a try at a locked
    #: sqlite store waits out MLflow's 20 s ``busy_timeout`` first).
    retry_seconds = 10.0
    max_retry_seconds = 60.0
    #: Seconds the ``/health`` probe of a server that was down may take.
    probe_timeout = 2.0
    #: Times the server may answer a queued write with a 5xx while its ``/health`` is fine
    #: before that write is dropped (with a warning) so that it does not block the others.
    max_strikes = 3

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.reason: str | None = None  # why the store is unreachable, during an outage
        self._retry_at = 0.0
        self._tries = 0  # failed tries since the outage began
        self._strikes = 0  # 5xx answers to the write at the head of the queue

    @property
    def what(self) -> str:
        """``server URI`` or ``store URI``, for the lines on stderr."""
        return f"{'server' if is_server(self.uri) else 'store'} {self.uri}"

    @property
    def gone(self) -> str:
        return "unreachable" if is_server(self.uri) else "unavailable"

    def due(self, force: bool = False) -> bool:
        """Whether to try the store now: it is not known to be down, or its pause is over (or
        ``force``) and it answers; a server that still does not answer pauses again."""
        if self.reason is None:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        if not self._probe():
            self._pause()
            return False
        return True

    def failed(self, exc: BaseException, pending: int) -> Verdict:
        """The verdict on a write that raised ``exc`` (``pending`` writes are queued with it).
        An outage starts the pause, and its first failure says so on one line."""
        from mlflow.exceptions import MlflowException

        kind = classify(exc)
        if kind is None:
            return "wrong" if isinstance(exc, MlflowException) else "bug"
        if kind == "answered" and self._probe():  # the server is up but fails this write
            self._strikes += 1
            if self._strikes >= self.max_strikes:
                return "skip"
        self._pause()
        if self.reason is None:
            self.reason = reason(exc)
            say(f"warning: tracking {self.what} {self.gone} ({self.reason}); keeping "
                f"{pending} pending writes, retrying")
        return "wait"

    def settled(self) -> None:
        """The write at the head of the queue is gone (written or dropped): the next starts
        with no strikes."""
        self._strikes = 0

    def end(self, written: int) -> bool:
        """The store took every pending write (``written`` of them were queued): end the outage,
        if there was one, with a line saying so; whether there was one."""
        was_down = self.reason is not None
        if was_down and written:
            again = "reachable" if is_server(self.uri) else "available"
            say(f"tracking {self.what} {again} again; wrote {written} pending writes")
        self.reason, self._tries = None, 0
        return was_down

    def _pause(self) -> None:
        """No new try before :attr:`retry_seconds`, doubled per failed try (capped)."""
        self._tries += 1
        self._retry_at = time.monotonic() + backoff(self._tries, self.retry_seconds,
                                                    self.max_retry_seconds)

    def _probe(self) -> bool:
        """Whether a server that was down answers ``/health`` (a local store: always try)."""
        return not is_server(self.uri) or answers(self.uri, self.probe_timeout)
