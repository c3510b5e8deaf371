"""The write queue alone: order, outages, wrong writes, and the spool on disk -- a real file in
tmp_path, and a store that is a list which can be switched off (a refused connection is an
outage to the real policy, as it is for MLflow's client)."""
from __future__ import annotations

import json

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

from initsearch.tracking.outage import Outage
from initsearch.tracking.queue import WriteQueue


class Store:
    """What the queue writes to: a list of ops, down while ``down``; an op with ``"bad"`` is
    refused as MLflow refuses a wrong write, one with ``"sick"`` fails with a 5xx, one with
    ``"buggy"`` raises a programming error; the op named ``kill_at`` kills the driver."""

    def __init__(self) -> None:
        self.got: list[str] = []
        self.down = False
        self.kill_at: str | None = None

    def write(self, op: dict) -> None:
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        if op["name"] == self.kill_at:
            raise KeyboardInterrupt  # the driver is killed mid-write
        if op.get("bad"):
            raise MlflowException(f"run {op['run']} not found", error_code=RESOURCE_DOES_NOT_EXIST)
        if op.get("sick"):
            raise MlflowException("internal error", error_code=INTERNAL_ERROR)
        if op.get("buggy"):
            raise TypeError("unsupported operand")
        self.got.append(op["name"])


def _ops(*names: str, **flags) -> list[dict]:
    return [{"op": "batch", "run": "r1", "name": n, **flags} for n in names]


@pytest.fixture
def store():
    return Store()


def _queue(store: Store, spool=None, retry_seconds: float = 0.0) -> WriteQueue:
    """A queue for a local store (no /health to probe); by default with no pause after a failed
    try, so every write tries the store again."""
    outage = Outage("sqlite:////tmp/m.db")
    outage.retry_seconds = retry_seconds
    return WriteQueue(store.write, outage, spool)


def test_writes_go_through_in_order(store, tmp_path):
    spool = tmp_path / "s.jsonl"
    queue = _queue(store, spool)
    queue.submit(_ops("a", "b"))
    queue.submit(_ops("c"))
    assert store.got == ["a", "b", "c"] and len(queue) == 0
    assert not spool.exists()  # nothing was ever pending: no file


def test_an_outage_queues_in_memory_and_on_disk_then_writes_in_order(store, tmp_path, capfd):
    spool = tmp_path / "pending" / "s.jsonl"
    queue = _queue(store, spool)
    queue.submit(_ops("a"))
    store.down = True
    queue.submit(_ops("b", "c"))  # no raise
    queue.submit(_ops("d"))
    assert len(queue) == 3 and store.got == ["a"]
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [r["name"] for r in lines] == ["b", "c", "d"] and all(r["spooled"] for r in lines)
    assert len([line for line in capfd.readouterr().err.splitlines() if "unavailable" in line]) == 1

    store.down = False
    queue.submit(_ops("e"))  # the next write writes the queue first
    assert store.got == ["a", "b", "c", "d", "e"] and len(queue) == 0
    assert spool.read_text() == ""
    assert "available again; wrote 3 pending writes" in capfd.readouterr().err


def test_a_killed_driver_loses_nothing_and_writes_nothing_twice(store, tmp_path, capfd):
    spool = tmp_path / "s.jsonl"
    queue = _queue(store, spool)
    store.down = True
    queue.submit(_ops("a", "b", "c"))
    queue.learn("pending-1", "run-1", reopened=True, keep=True)
    store.down, store.kill_at = False, "b"
    with pytest.raises(KeyboardInterrupt):  # killed while writing "b": "a" is marked done
        queue.flush()
    with open(spool, "a") as f:
        f.write('{"op":"batch","seq":9,"na')  # and a line the kill cut short
    store.kill_at = None

    resumed = _queue(store, spool)
    assert len(resumed) == 2 and resumed.runs == {"pending-1": "run-1"}
    assert resumed.reopened == {"pending-1"}
    lines = [json.loads(line) for line in spool.read_text().splitlines()]
    assert len(lines) == 3  # rewritten: the map and the two pending
    assert [r["tried"] for r in lines if "op" in r] == [True, True]  # the store may hold them
    store.down = True
    resumed.submit(_ops("d"))
    assert json.loads(spool.read_text().splitlines()[-1])["seq"] == 4  # numbered after the spool's
    store.down = False
    assert resumed.flush() == 0
    assert store.got == ["a", "b", "c", "d"] and spool.read_text() == ""
    assert "available again; wrote 3 pending writes" in capfd.readouterr().err


def test_a_spool_left_by_an_earlier_run_is_written_first(store, tmp_path, capfd):
    spool = tmp_path / "s.jsonl"
    store.down = True
    _queue(store, spool).submit(_ops("a", "b"))
    store.down = False
    resumed = _queue(store, spool)
    resumed.submit(_ops("c"))
    assert store.got == ["a", "b", "c"] and spool.read_text() == ""
    assert "wrote 2 writes left pending by an earlier run" in capfd.readouterr().err


def test_a_wrong_write_raises_and_leaves_the_queue(store):
    queue = _queue(store)
    with pytest.raises(MlflowException, match="not found"):
        queue.submit(_ops("a") + _ops("b", bad=True) + _ops("c"))
    assert store.got == ["a"] and len(queue) == 0  # the call's other writes go with it
    queue.submit(_ops("d"))
    assert store.got == ["a", "d"]


def test_an_earlier_wrong_write_is_dropped_not_raised(store, capfd):
    queue = _queue(store)
    store.down = True
    queue.submit(_ops("a") + _ops("b", bad=True))
    store.down = False
    queue.submit(_ops("c"))  # a wrong write queued by an earlier call must not fail this one
    assert store.got == ["a", "c"] and len(queue) == 0
    err = capfd.readouterr().err
    assert "dropped a pending tracking write (batch of run r1): run r1 not found" in err


def test_an_earlier_buggy_write_is_dropped_and_raised(store):
    queue = _queue(store)
    store.down = True
    queue.submit(_ops("a", buggy=True) + _ops("b"))
    store.down = False
    with pytest.raises(TypeError):
        queue.submit(_ops("c"))
    assert len(queue) == 2 and queue.flush() == 0 and store.got == ["b", "c"]


def test_a_write_the_store_keeps_failing_is_dropped_after_max_strikes(store, capfd):
    queue = _queue(store)
    queue.submit(_ops("a", sick=True) + _ops("b"))
    assert len(queue) == 2  # one strike: held, with the write behind it
    for _ in range(Outage.max_strikes - 1):
        queue.flush()
    assert store.got == ["b"] and len(queue) == 0
    assert "dropped a pending tracking write" in capfd.readouterr().err


def test_a_spool_that_cannot_be_written_keeps_the_writes_in_memory(store, tmp_path, capfd):
    (tmp_path / "file").write_text("")
    queue = _queue(store, tmp_path / "file" / "s.jsonl")  # under a file: no such folder
    store.down = True
    queue.submit(_ops("a"))
    queue.submit(_ops("b"))
    assert len(queue) == 2 and not queue.durable
    err = capfd.readouterr().err.splitlines()
    assert len([line for line in err if "cannot write the tracking spool" in line]) == 1
    store.down = False
    assert queue.flush() == 0 and store.got == ["a", "b"]


def test_a_pause_holds_writes_back_until_it_is_over(store):
    queue = _queue(store, retry_seconds=60.0)
    store.down = True
    queue.submit(_ops("a"))
    store.down = False
    queue.submit(_ops("b"))  # within the pause: not even tried
    assert store.got == [] and len(queue) == 2
    queue.submit(_ops("c"), force=True)  # the search's last writes do not wait
    assert store.got == ["a", "b", "c"]
