"""Tracking: one MLflow parent run per search, one nested child run per trial, all from the driver.

Only the driver process writes (sqlite allows one writer; trials run elsewhere under Ray), and
it writes in batches: one ``log_batch`` per epoch report, about 10x cheaper than a
``log_metric`` call per value. The store defaults to ``sqlite:///<home>/mlruns/mlflow.db`` with
artifacts under ``<home>/mlruns/artifacts`` -- absolute paths, since Ray trials run in their own
working directories.

A child run holds the recipe's per-role choices as params, the per-layer plan as
``recipe.json``, and ``train_loss``/``val_loss``/``val_acc`` per epoch; tag ``state`` says
COMPLETE, PRUNED or FAIL, tags ``arch`` and ``arch_options`` the model it trained. The parent
holds the search settings (architecture options included), the effective protocol
(``protocol.yaml``), the recommendation and the comparison table.

An outage of the store (a remote ``mlflow server`` going down, sqlite locked) does not stop a
search: :class:`Tracker` queues the writes (optionally in a JSON-lines spool file, so a killed
driver loses none), says so on one line, and writes them in order once the store is back.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import posixpath
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from initsearch.errors import UsageError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
PARENT_TAG = "mlflow.parentRunId"
#: Tag of every run a Tracker opens: the placeholder id it was opened under, so a write repeated
#: after a lost answer or a killed driver finds the run instead of creating it twice.
KEY_TAG = "initsearch.key"
#: How the ids :meth:`Tracker.start_trial` returns while the store is down begin.
PLACEHOLDER = "pending-"
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


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(home / 'mlruns' / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str) -> None:
    """Fail fast, before anything is written, if the store cannot be reached."""
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            ok = requests.get(uri.rstrip("/") + "/health", timeout=5).ok
        except requests.RequestException:
            ok = False
        if not ok:
            raise UsageError(f"MLflow tracking server {uri} is unreachable; start it (initsearch ui) "
                             "or pass --tracking-uri sqlite:////abs/path/mlflow.db")
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = next((p for p in (db.parent, *db.parent.parents) if p.exists()), None)
        if not db.is_absolute() or parent is None or not os.access(parent, os.W_OK):
            raise UsageError(f"tracking store {uri} is not a writable absolute sqlite path; "
                             "pass --tracking-uri sqlite:////abs/path/mlflow.db")
    elif not uri.startswith(("databricks", "postgresql", "mysql", "mssql")):
        raise UsageError(f"unsupported tracking URI {uri!r}; use sqlite:////abs/path/mlflow.db "
                         "or http://host:port of an MLflow server")


class Tracker:
    """Writes one search into MLflow through a single client (no fluent global state).

    Outages: a write the store cannot take for a reason that is not the write's (connection
    refused or reset, timeout, HTTP 5xx, sqlite "database is locked") is queued instead of
    raised, with one line on stderr per outage, and the search goes on. Every later write
    first writes the queue, in order, at most every :attr:`retry_seconds` while the store is
    down. :meth:`start_trial` returns a placeholder id (``pending-...``) when the store is down;
    the run is created when it is back, and later writes that name the placeholder go to that
    run (:meth:`resolve` gives the real id once known). With ``spool`` (a JSON-lines file),
    the queue also lives on disk, so a killed driver loses nothing: the next Tracker on the
    same spool loads it, and :meth:`replay_spool` (or any write) writes it. A write that fails
    because it is wrong (MLflow's 4xx errors, a ``TypeError``) still raises."""

    #: While the store is down, how often (seconds, at most) a write tries the queue again;
    #: the pause doubles with each failed try, up to :attr:`max_retry_seconds` (a try at a
    #: locked sqlite store waits out MLflow's 20 s ``busy_timeout`` first).
    retry_seconds = 10.0
    max_retry_seconds = 60.0
    #: Seconds the ``/health`` probe of a server that was down may take.
    probe_timeout = 2.0
    #: Times the server may answer a queued write with a 5xx while its ``/health`` is fine
    #: before that write is dropped (with a warning) so that it does not block the others.
    max_strikes = 3

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None, *,
                 spool: Path | None = None) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        # after the import: MLflow sets its loggers up when imported (no "creating tables" chatter)
        logging.getLogger("mlflow").setLevel(logging.WARNING)

        self.uri = uri
        self.client = MlflowClient(uri)
        local = uri.startswith("sqlite:///")
        if local:
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            with fail_fast():
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                    experiment,  # a server keeps its own artifact root; a local store uses ours
                    artifact_location=artifact_root.resolve().as_uri() if local and artifact_root else None)
        except (MlflowException, OSError) as exc:
            raise UsageError(f"cannot open the MLflow store {uri} ({str(exc).splitlines()[0][:200]}); "
                             "check --tracking-uri") from None
        self.parent_id: str | None = None
        self.trial_tags: dict[str, str] = {}
        self.spool = Path(spool) if spool is not None else None
        self._lock = threading.RLock()
        self._queue: deque[dict[str, Any]] = deque()  # writes not yet in the store, in order
        self._ids: dict[str, str] = {}  # placeholder -> MLflow run id
        self._reopened: set[str] = set()  # placeholders of a parent run an earlier search opened
        self._seq = 0
        self._down: str | None = None  # why the store is unreachable, during an outage
        self._retry_at = 0.0
        self._tries = 0  # failed tries since the outage began
        self._written = 0  # queued writes written since the queue was last empty
        self._strikes = 0
        self._spool_broken = False
        if self.spool is not None:
            self._load_spool()

    # -- the queue -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Writes queued because the store was unreachable (0 when all are in the store)."""
        return len(self._queue)

    def resolve(self, run_id: str) -> str:
        """The MLflow run id behind ``run_id`` (a placeholder from :meth:`start_trial` or
        :meth:`start_search`) once that run exists; ``run_id`` itself otherwise."""
        return self._ids.get(run_id, run_id)

    def flush(self) -> int:
        """Write the queue now if the store answers (ignoring the retry pace); returns the
        number of writes still pending."""
        with self._lock:
            self._drain(force=True)
            return len(self._queue)

    def replay_spool(self) -> int:
        """Write what an earlier Tracker on the same spool left pending (it was loaded when this
        one opened), then empty the spool; returns the number of writes still pending (kept in
        the spool when the store is still down). Runs are never created twice: each carries
        the placeholder it was opened under (tag ``initsearch.key``)."""
        return self.flush()

    # -- the search ----------------------------------------------------------------------------
    def start_search(self, study_name: str, params: dict[str, Any], protocol: dict[str, Any],
                     trial_tags: dict[str, str]) -> str:
        """Open the parent run, or reopen the one a resumed study already has. The parent keeps
        ``params`` and the effective protocol (``protocol.yaml``); every trial run is tagged
        with ``trial_tags`` (the architecture and its options, so runs filter by them)."""
        self.trial_tags = {"study": study_name, **trial_tags}
        ref = _placeholder()
        self._submit([{
            "op": "open_search", "ref": ref, "experiment": self.experiment_id, "study": study_name,
            "time": _ms(), "params": [[k, str(v)] for k, v in params.items()],
            "note": f"initsearch study {study_name}: " + ", ".join(f"{k}={v}" for k, v in params.items()),
            "protocol": _render_dict(protocol, "protocol.yaml")}])
        self.parent_id = self.resolve(ref)
        return self.parent_id

    def end_search(self, metrics: dict[str, float], texts: dict[str, str], status: str,
                   figures: dict[str, Any] | None = None) -> None:
        """Close the parent run with the search's figures, text artifacts and plots
        (``{"plots/x.png": matplotlib figure}``). If the store is still down, the writes stay
        pending (in the spool, if there is one) and one line on stderr says so."""
        now, run = _ms(), self.parent_id
        ops: list[dict[str, Any]] = []
        if metrics:
            ops.append({"op": "batch", "run": run,
                        "metrics": [[k, float(v), now, 0] for k, v in metrics.items()]})
        ops += [{"op": "text", "run": run, "path": name, "text": text} for name, text in texts.items()]
        ops += [{"op": "file", "run": run, "path": name, "data": _render_figure(figure, name)}
                for name, figure in (figures or {}).items()]
        ops.append({"op": "end", "run": run, "status": status, "time": now})
        self._submit(ops, force=True)
        if self._queue:
            where = (f"kept in {self.spool}; `initsearch run --resume --study "
                     f"{self.trial_tags.get('study', '<study>')}` (Tracker.replay_spool) writes them"
                     if self.spool is not None and not self._spool_broken
                     else "kept in memory only, so they are lost when this process exits")
            _say(f"warning: {len(self._queue)} tracking writes still pending ({self._what} "
                 f"{self._gone}: {self._down}); {where}")

    def end_abandoned(self, study_name: str) -> int:
        """End as KILLED the runs of ``study_name`` that a killed driver left RUNNING (trials,
        confirmation jobs); the parent is reopened by :meth:`start_search`. Call it only when
        this driver holds the study alone. Returns how many it ended."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.study = '{study_name}' and attributes.status = 'RUNNING'",
            max_results=10000)
        stale = [r.info.run_id for r in runs if r.data.tags.get("role") != "search"]
        for run_id in stale:
            self.end_trial(run_id, "KILLED", {"state": "INTERRUPTED"})
        return len(stale)

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The study's runs in the MLflow UI's model-training view (by default the UI opens an
        experiment in its GenAI traces view; ``workflowType=machine_learning`` switches it)."""
        return runs_url(self.experiment_id, self.trial_tags["study"], base)

    # -- the trials ----------------------------------------------------------------------------
    def start_trial(self, run_name: str, recipe, params: dict[str, Any], plan: list[dict],
                    tags: dict[str, str]) -> str:
        """Open a child run of the search: the recipe's choices as params, its per-layer plan
        as ``recipe.json``, ``tags`` (``stage`` search or confirm, trial, seed, baseline) plus
        the study's and the architecture's. Returns its run id, or a placeholder that later
        calls accept in its place while the store is down."""
        ref = _placeholder()
        self._submit([{
            "op": "open_trial", "ref": ref, "experiment": self.experiment_id,
            "parent": self.parent_id, "name": run_name, "time": _ms(),
            "tags": {**tags, **self.trial_tags},
            "params": [[k, _param(v)] for k, v in params.items()],
            "recipe": recipe.summary()[:5000],
            "recipe_json": _render_dict({"recipe": recipe.to_dict(), "layers": plan}, "recipe.json")}])
        return self.resolve(ref)

    def log_epoch(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        now = _ms()
        self._submit([{"op": "batch", "run": run_id,
                       "metrics": [[k, float(v), now, step] for k, v in metrics.items() if k != "epoch"]}])

    def end_trial(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        ops: list[dict[str, Any]] = []
        if tags:
            ops.append({"op": "batch", "run": run_id, "tags": [[k, str(v)] for k, v in tags.items()]})
        ops.append({"op": "end", "run": run_id, "status": status, "time": _ms()})
        self._submit(ops)

    # -- writing -------------------------------------------------------------------------------
    @property
    def _remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @property
    def _what(self) -> str:
        return f"{'server' if self._remote else 'store'} {self.uri}"

    @property
    def _gone(self) -> str:
        return "unreachable" if self._remote else "unavailable"

    def _submit(self, ops: list[dict[str, Any]], force: bool = False) -> None:
        """Queue ``ops`` behind the pending writes and write what the store takes."""
        with self._lock:
            for op in ops:
                self._seq += 1
                op["seq"] = self._seq
            self._queue.extend(ops)
            mine = {id(op) for op in ops}
            try:
                self._drain(force=force, mine=mine)
            finally:
                left = [op for op in self._queue if id(op) in mine]
                for op in left:
                    op["queued"] = True
                self._spool_write(left)

    def _drain(self, force: bool = False, mine: set[int] = frozenset()) -> None:
        """Write the queue in order until it is empty or the store fails; never raises for an
        outage. Raises the error of one of ``mine`` (the current call's writes) that is wrong."""
        from mlflow.exceptions import MlflowException

        if not self._queue:
            return
        if self._down is not None:
            if not force and time.monotonic() < self._retry_at:
                return
            if not self._probe():
                self._pause()
                return
        while self._queue:
            op = self._queue[0]
            try:
                with fail_fast():
                    self._apply(op)
            except Exception as exc:  # noqa: BLE001 -- sorted below: outage, or raised
                kind = _classify(exc)
                if kind is None:  # the write itself is wrong
                    if id(op) in mine:
                        self._queue = deque(o for o in self._queue if id(o) not in mine)
                        raise
                    self._drop(op, exc)  # an earlier call's write: it can never be written
                    if not isinstance(exc, MlflowException):
                        raise
                    continue
                op["tried"] = True
                if kind == "answered" and self._probe():  # the server is up but fails this write
                    self._strikes += 1
                    if self._strikes >= self.max_strikes:
                        self._drop(op, exc)
                        continue
                self._outage(exc)
                return
            self._queue.popleft()
            self._strikes = 0
            if op.get("queued"):
                self._written += 1
            if op.get("spooled"):
                self._spool_write([{"done": op["seq"]}])
        if self._written:
            if self._down is not None:
                again = "reachable" if self._remote else "available"
                _say(f"tracking {self._what} {again} again; wrote {self._written} pending writes")
            else:
                _say(f"tracking {self._what}: wrote {self._written} writes left pending by an "
                     f"earlier run ({self.spool})")
        self._down, self._written, self._tries = None, 0, 0
        self._truncate_spool()

    def _outage(self, exc: BaseException) -> None:
        self._pause()
        if self._down is None:
            self._down = _reason(exc)
            _say(f"warning: tracking {self._what} {self._gone} ({self._down}); keeping "
                 f"{len(self._queue)} pending writes, retrying")

    def _pause(self) -> None:
        """No new try before :attr:`retry_seconds`, doubled per failed try (capped)."""
        self._tries += 1
        pause = min(self.retry_seconds * 2 ** min(self._tries - 1, 10), self.max_retry_seconds)
        self._retry_at = time.monotonic() + pause

    def _drop(self, op: dict[str, Any], exc: BaseException) -> None:
        self._queue.popleft()
        self._strikes = 0
        if op.get("spooled"):
            self._spool_write([{"done": op["seq"]}])
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        _say(f"warning: dropped a pending tracking write ({op['op']} of run "
             f"{op.get('run') or op.get('ref')}): {why}")

    def _probe(self) -> bool:
        """Whether a server that was down answers ``/health`` (a local store: always try)."""
        if not self._remote:
            return True
        import requests

        try:
            return requests.get(self.uri.rstrip("/") + "/health", timeout=self.probe_timeout).ok
        except requests.RequestException:
            return False

    def _apply(self, op: dict[str, Any]) -> None:
        """Write one queued operation; safe to repeat (a run is found, not created twice)."""
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "open_search":
            return self._open_search(op)
        if kind == "open_trial":
            return self._open_trial(op)
        run = self._real(op["run"])
        if kind == "batch":
            self.client.log_batch(run, metrics=[Metric(k, v, t, s) for k, v, t, s in op.get("metrics", ())],
                                  params=[Param(k, v) for k, v in op.get("params", ())],
                                  tags=[RunTag(k, v) for k, v in op.get("tags", ())])
        elif kind == "text":
            self.client.log_text(run, op["text"], op["path"])
        elif kind == "file":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(op["path"]).name
                path.write_bytes(base64.b64decode(op["data"]))
                self.client.log_artifact(run, str(path), posixpath.dirname(op["path"]) or None)
        elif kind == "end":
            self.client.set_terminated(run, op["status"], end_time=op["time"])
        else:
            raise ValueError(f"unknown tracking write {kind!r}")

    def _open_search(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        ref, study = op["ref"], op["study"]
        if ref in self._reopened:
            self.client.update_run(self._ids[ref], status="RUNNING")
            return
        run = self._ids.get(ref) or (self._find(ref) if op.get("tried") else None)
        if run is None:
            found = self.client.search_runs([op["experiment"]],
                                            f"tags.study = '{study}' and tags.role = 'search'",
                                            max_results=1)
            if found:  # a resumed study: reopen its parent, keep its params
                run = found[0].info.run_id
                self.client.update_run(run, status="RUNNING")
                self._learn(op, run, reopened=True)
                return
            run = self.client.create_run(op["experiment"], start_time=op["time"], run_name=study,
                                         tags={"study": study, "role": "search", KEY_TAG: ref}).info.run_id
            self._learn(op, run)
        self.client.log_batch(run, params=[Param(k, v) for k, v in op["params"]],
                              tags=[RunTag("mlflow.note.content", op["note"])])
        self.client.log_text(run, op["protocol"], "protocol.yaml")

    def _open_trial(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        ref = op["ref"]
        run = self._ids.get(ref) or (self._find(ref) if op.get("tried") else None)
        if run is None:
            parent = {PARENT_TAG: self._real(op["parent"])} if op.get("parent") else {}
            run = self.client.create_run(op["experiment"], start_time=op["time"], run_name=op["name"],
                                         tags={**parent, **op["tags"], KEY_TAG: ref}).info.run_id
            self._learn(op, run)
        self.client.log_batch(run, params=[Param(k, v) for k, v in op["params"]],
                              tags=[RunTag("recipe", op["recipe"])])
        self.client.log_text(run, op["recipe_json"], "recipe.json")

    def _real(self, ref: str) -> str:
        """The MLflow run id of ``ref``: itself, or the run a placeholder was opened as."""
        if not ref.startswith(PLACEHOLDER):
            return ref
        run = self._ids.get(ref) or self._find(ref)
        if run is None:
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

            raise MlflowException(f"no run was opened for placeholder {ref}",
                                  error_code=RESOURCE_DOES_NOT_EXIST)
        return run

    def _find(self, ref: str) -> str | None:
        """The run opened under placeholder ``ref`` (by its tag), if the store has one."""
        from mlflow.entities import ViewType

        found = self.client.search_runs([self.experiment_id], f"tags.`{KEY_TAG}` = '{ref}'",
                                        run_view_type=ViewType.ALL, max_results=1)
        if not found:
            return None
        self._ids[ref] = found[0].info.run_id
        return self._ids[ref]

    def _learn(self, op: dict[str, Any], run: str, reopened: bool = False) -> None:
        self._ids[op["ref"]] = run
        if reopened:
            self._reopened.add(op["ref"])
        if op.get("queued"):  # a replay after a kill then knows the run without a search
            self._spool_write([{"map": op["ref"], "id": run, "reopened": reopened}])

    # -- the spool -------------------------------------------------------------------------------
    def _spool_write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` (pending writes, ``done`` marks, placeholder ids) to the spool."""
        if self.spool is None or self._spool_broken or not records:
            return
        for rec in records:
            if "op" in rec:
                rec["spooled"] = True
        try:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
        except OSError as exc:
            self._spool_broken = True
            _say(f"warning: cannot write the tracking spool {self.spool} ({exc}); pending "
                 "tracking writes are kept in memory only")

    def _load_spool(self) -> None:
        """Queue what an earlier Tracker left in the spool; rewrite it without what is done."""
        assert self.spool is not None
        if not self.spool.is_file():
            return
        ops: dict[int, dict[str, Any]] = {}
        done: set[int] = set()
        maps: list[dict[str, Any]] = []
        for line in self.spool.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line a kill cut short: its write never returned to the caller
            if "map" in rec:
                maps.append(rec)
                self._ids[rec["map"]] = rec["id"]
                if rec.get("reopened"):
                    self._reopened.add(rec["map"])
            elif "done" in rec:
                done.add(rec["done"])
            elif "op" in rec:
                ops[rec["seq"]] = rec
        for seq in sorted(ops):
            if seq not in done:
                self._queue.append({**ops[seq], "tried": True, "queued": True, "spooled": True})
        self._seq = max(ops, default=0)
        tmp = self.spool.with_name(self.spool.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n"
                               for r in [*maps, *self._queue]) if self._queue else "", encoding="utf-8")
        os.replace(tmp, self.spool)

    def _truncate_spool(self) -> None:
        if self.spool is not None and not self._spool_broken and self.spool.is_file() \
                and self.spool.stat().st_size:
            self.spool.write_text("", encoding="utf-8")


def runs_url(experiment_id: str, study: str, base: str = "http://127.0.0.1:5000") -> str:
    """The MLflow UI's runs table of one study (its parent run with the trial and
    confirmation runs nested under it), in the model-training view."""
    from urllib.parse import quote

    search = quote(f"tags.study = '{study}'")
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&searchFilter={search}")


def _param(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _ms() -> int:
    return int(time.time() * 1000)


def _placeholder() -> str:
    return PLACEHOLDER + uuid.uuid4().hex


def _say(line: str) -> None:
    print(f"initsearch: {line}", file=sys.stderr, flush=True)


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


def _classify(exc: BaseException) -> str | None:
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


def _reason(exc: BaseException) -> str:
    """A few words on why the store is unreachable, for the warning line."""
    text = " ".join(str(e) for e in _chain(exc))
    if m := re.search(r"\[Errno -?\d+\] ([^'\"()\]\[]+)", text):
        return m.group(1).strip().lower()
    if m := re.search(r"too many (\d+) error responses", text):
        return f"HTTP {m.group(1)}"
    for words in ("database is locked", "timed out", "timeout"):
        if words in text.lower():
            return words
    return (str(exc).splitlines() or [type(exc).__name__])[0][:160]


def _render_dict(data: dict[str, Any], name: str) -> str:
    """``data`` as MLflow's ``log_dict`` writes it: YAML for ``.yaml``/``.yml``, else JSON."""
    if posixpath.splitext(name)[1] in (".yml", ".yaml"):
        import yaml

        return yaml.dump(data, indent=2, default_flow_style=False)
    return json.dumps(data, indent=2, default=str)


def _render_figure(figure: Any, name: str) -> str:
    """A matplotlib (or plotly) figure as the bytes of file ``name``, base64, as MLflow's
    ``log_figure`` would write it -- a queued write must survive the figure being closed."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / posixpath.basename(name)
        if hasattr(figure, "savefig"):
            figure.savefig(path)
        elif path.suffix == ".html":
            figure.write_html(path, include_plotlyjs="cdn", auto_open=False)
        else:
            figure.write_image(path)
        return base64.b64encode(path.read_bytes()).decode("ascii")
