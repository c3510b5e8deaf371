"""The write queue: every tracking write, in order, until the store has taken it -- on disk too.

A write (a dict naming its ``op``) is appended to the queue, then the queue is written from its
head until it is empty or a write fails; :class:`~initsearch.tracking.outage.Outage` says what a
failure means. Writes left over are marked ``queued`` and, with a spool, appended to it: a
JSON-lines file, so a killed driver loses none of them. Its lines::

    {"op": "batch", "seq": 7, ...}                      a pending write (number 7)
    {"done": 7}                                         write 7 reached the store
    {"map": "pending-...", "id": "...", "reopened": false}  the run a placeholder was opened as

A new queue on the same spool loads what is not done (a line a kill cut short is skipped: its
write never returned to its caller), rewrites the spool without the rest, and writes it before
anything new. The spool is emptied whenever the queue is. The queue also holds which run each
placeholder (the id a run is given before the store has created it) stands for: like the
writes, that must outlive a kill.
"""
from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from initsearch.tracking.outage import Outage, first_line, say


class WriteQueue:
    """Writes not yet in the store, written in order through ``write`` (which must be safe to
    repeat: a write whose answer was lost is tried again)."""

    def __init__(self, write: Callable[[dict[str, Any]], None], outage: Outage,
                 spool: Path | None = None) -> None:
        self.spool = Path(spool) if spool is not None else None
        self.runs: dict[str, str] = {}  # placeholder -> MLflow run id
        self.reopened: set[str] = set()  # placeholders of a parent run an earlier search opened
        self._write, self._outage = write, outage
        self._ops: deque[dict[str, Any]] = deque()
        self._seq = 0
        self._written = 0  # queued writes written since the queue was last empty
        self._broken = False  # the spool could not be written: memory only from then on
        self._lock = threading.RLock()
        if self.spool is not None and self.spool.is_file():
            self._load()

    def __len__(self) -> int:
        return len(self._ops)

    @property
    def durable(self) -> bool:
        """Whether pending writes outlive this process (they are in a spool that works)."""
        return self.spool is not None and not self._broken

    def submit(self, ops: list[dict[str, Any]], force: bool = False) -> None:
        """Queue ``ops`` behind the pending writes and write what the store takes (``force``:
        try even if the outage's pause is not over). Raises the error of one of ``ops`` that
        is wrong, after taking all of ``ops`` off the queue."""
        with self._lock:
            for op in ops:
                self._seq += 1
                op["seq"] = self._seq
            self._ops.extend(ops)
            mine = {id(op) for op in ops}
            try:
                self._drain(force=force, mine=mine)
            finally:
                left = [op for op in self._ops if id(op) in mine]
                for op in left:
                    op["queued"] = True
                self._append(left)

    def flush(self) -> int:
        """Write the queue now if the store answers (ignoring the pause); returns the number of
        writes still pending."""
        with self._lock:
            self._drain(force=True)
            return len(self._ops)

    def learn(self, ref: str, run: str, reopened: bool = False, keep: bool = False) -> None:
        """Placeholder ``ref`` stands for ``run`` (a parent run reopened, not created, if
        ``reopened``); ``keep`` it in the spool, so that a replay after a kill knows the run
        without searching the store for it."""
        self.runs[ref] = run
        if reopened:
            self.reopened.add(ref)
        if keep:
            self._append([{"map": ref, "id": run, "reopened": reopened}])

    def _drain(self, force: bool = False, mine: set[int] = frozenset()) -> None:
        """Write the queue in order until it is empty or the store fails; never raises for an
        outage. Raises the error of one of ``mine`` (the current call's writes) that is wrong."""
        if not self._ops or not self._outage.due(force):
            return
        while self._ops:
            op = self._ops[0]
            try:
                self._write(op)
            except Exception as exc:  # noqa: BLE001 -- the outage policy sorts it
                verdict = self._outage.failed(exc, len(self._ops))
                if verdict == "wait":
                    op["tried"] = True  # its answer may be lost: it may have been written
                    return
                if verdict != "skip" and id(op) in mine:
                    self._ops = deque(o for o in self._ops if id(o) not in mine)
                    raise
                self._drop(op, exc)  # an earlier call's wrong write, or one the server keeps failing
                if verdict == "bug":
                    raise
                continue
            self._settle(op)
            if op.get("queued"):
                self._written += 1
        if not self._outage.end(self._written) and self._written:
            say(f"tracking {self._outage.what}: wrote {self._written} writes left pending by an "
                f"earlier run ({self.spool})")
        self._written = 0
        self._truncate()

    def _settle(self, op: dict[str, Any]) -> None:
        """Take the head of the queue, ``op``, off it: in the store, or never to be."""
        self._ops.popleft()
        self._outage.settled()
        if op.get("spooled"):
            self._append([{"done": op["seq"]}])

    def _drop(self, op: dict[str, Any], exc: BaseException) -> None:
        self._settle(op)
        say(f"warning: dropped a pending tracking write ({op['op']} of run "
            f"{op.get('run') or op.get('ref')}): {first_line(exc, 200)}")

    # -- the spool -------------------------------------------------------------------------------
    def _append(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` (pending writes, ``done`` marks, placeholder ids) to the spool."""
        if not self.durable or not records:
            return
        for rec in records:
            if "op" in rec:
                rec["spooled"] = True
        try:
            self.spool.parent.mkdir(parents=True, exist_ok=True)
            with open(self.spool, "a", encoding="utf-8") as f:
                f.write(_lines(records))
        except OSError as exc:
            self._broken = True
            say(f"warning: cannot write the tracking spool {self.spool} ({exc}); pending "
                "tracking writes are kept in memory only")

    def _load(self) -> None:
        """Queue what an earlier queue left in the spool; rewrite it without what is done."""
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
                self.runs[rec["map"]] = rec["id"]
                if rec.get("reopened"):
                    self.reopened.add(rec["map"])
            elif "done" in rec:
                done.add(rec["done"])
            elif "op" in rec:
                ops[rec["seq"]] = rec
        for seq in sorted(ops):
            if seq not in done:  # tried: its answer may have been lost with the driver
                self._ops.append({**ops[seq], "tried": True, "queued": True, "spooled": True})
        self._seq = max(ops, default=0)
        tmp = self.spool.with_name(self.spool.name + ".tmp")
        tmp.write_text(_lines([*maps, *self._ops]) if self._ops else "", encoding="utf-8")
        os.replace(tmp, self.spool)

    def _truncate(self) -> None:
        if self.durable and self.spool.is_file() and self.spool.stat().st_size:
            self.spool.write_text("", encoding="utf-8")


def _lines(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
