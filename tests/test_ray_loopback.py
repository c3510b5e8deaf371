"""The Ray that initsearch starts for itself: reachable from this machine only, and gone when
its driver dies.

Each test runs a real driver in a subprocess (a real ``RayBackend`` entered, one Ray task run so
that a worker exists), so that the sockets and processes looked at are that session's alone.
Sockets and processes are read from /proc (Linux), as ``ss -ltnup`` would show them.
"""
from __future__ import annotations

import ipaddress
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux /proc")

# A driver as initsearch runs one: the backend entered, a task run (so a worker and its gRPC
# server exist), then it waits to be looked at, or killed.
DRIVER = r"""
import functools, os, sys, time
from pathlib import Path

import torch

from initsearch.data import ImageSet, Splits
from initsearch.engine.ray_backend import RayBackend

empty = ImageSet(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
backend = RayBackend(Splits(empty, empty, empty, num_classes=10),
                     functools.partial(torch.nn.Linear, 4, 2), None, threads=1, gpus_per_trial=0,
                     flags=Path(sys.argv[1]))
with backend:
    import ray

    @ray.remote
    def pid():
        return os.getpid()

    ray.get(pid.remote())
    print("READY", flush=True)
    time.sleep(300)
"""


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(_stat(int(name))[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat fields after the command name: [state, ppid, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def _tree(root: int) -> list[int]:
    kids, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return found


def _name(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "?"
    return argv0 if argv0.startswith("ray::") else os.path.basename(argv0)


def _address(hexaddr: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6}: the IP as the kernel stores it, hex, then the port."""
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = struct.unpack("<4I", raw)  # four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words)), int(port, 16)


def _listening_inodes() -> dict[int, tuple[str, str, int]]:
    """Socket inode -> (protocol, ip, port) of every TCP socket in LISTEN and every UDP socket
    bound but not connected (what a server receives on)."""
    found = {}
    for proto, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        path = Path(f"/proc/net/{proto}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state:
                found[int(fields[9])] = (proto, *_address(fields[1]))
    return found


def _listening(pids: list[int]) -> list[tuple[int, str, str, str, int]]:
    """(pid, process, protocol, ip, port) for each listening socket the processes hold."""
    inodes, rows = _listening_inodes(), set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                rows.add((pid, _name(pid), *inodes[int(link[8:-1])]))
    return sorted(rows)


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a v6 socket's v4 loopback
    return (mapped or address).is_loopback


def _alive(pid: int, started: str) -> bool:
    """The same process (same start time: pids are reused) and not a zombie."""
    try:
        fields = _stat(pid)
    except OSError:
        return False
    return fields[0] != "Z" and fields[19] == started


class _Driver:
    def __init__(self, tmp_path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "flags")],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.seen: dict[int, str] = {}  # pid -> start time, of every process of the session

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # a bounded wait: a driver hung in ray.init must fail the test, not stall it
            if select.select([self.proc.stdout], [], [], 1)[0]:
                line = self.proc.stdout.readline()
                if "READY" in line:
                    return
                if not line:
                    raise AssertionError(f"the driver exited ({self.proc.wait()}) before Ray "
                                         "was up")
        raise AssertionError(f"the driver did not start Ray within {timeout} s")

    def processes(self) -> list[int]:
        pids = _tree(self.proc.pid)
        for pid in pids:
            try:
                self.seen.setdefault(pid, _stat(pid)[19])
            except OSError:
                pass
        return pids

    def cleanup(self) -> None:
        """Kill whatever of the session is still there (a failed test must not leave Ray)."""
        self.processes()
        for pid, started in self.seen.items():
            if _alive(pid, started):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.proc.stdout.close()
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_a_ray_started_by_initsearch_listens_on_loopback_only(tmp_path):
    """Every listening socket of the session (driver, GCS, raylet with its object manager,
    workers, runtime-env and dashboard agents, metrics endpoints) is on 127.0.0.1 or ::1: no
    other host can reach it. Looked at for a few seconds, as agents open their ports late."""
    driver = _Driver(tmp_path)
    try:
        driver.wait_ready()
        rows: set[tuple] = set()
        for _ in range(6):
            rows.update(_listening(driver.processes()))
            time.sleep(0.5)
    finally:
        driver.cleanup()
    names = {row[1] for row in rows}
    assert {"gcs_server", "raylet"} <= names, rows  # the look did see Ray's servers

    def table(found) -> str:
        return "\n".join(f"{pid:>7} {name:<22} {proto:<5} {ip}:{port}"
                         for pid, name, proto, ip, port in sorted(found, key=lambda r: r[1]))

    print(f"listening sockets of the session (pytest -s shows them):\n{table(rows)}")
    exposed = [row for row in rows if not _loopback(row[3])]
    assert not exposed, f"Ray listens beyond loopback:\n{table(exposed)}"


@pytest.mark.slow
def test_kill_9_of_the_driver_leaves_no_ray_process(tmp_path):
    """kill -9 of the driver: within 30 s no process of its Ray session (GCS, raylet, workers,
    the dashboard and runtime-env agents) is left."""
    driver = _Driver(tmp_path)
    try:
        driver.wait_ready()
        time.sleep(2)  # the agents are up
        pids = [pid for pid in driver.processes() if pid != driver.proc.pid]
        names = {_name(pid) for pid in pids}
        assert {"gcs_server", "raylet", "ray::RuntimeEnvAgent"} <= names, names
        started = {pid: driver.seen[pid] for pid in pids}
        os.kill(driver.proc.pid, signal.SIGKILL)
        driver.proc.wait(timeout=30)
        killed = time.monotonic()
        while time.monotonic() - killed < 30:
            left = [pid for pid in pids if _alive(pid, started[pid])]
            if not left:
                break
            time.sleep(0.25)
        took = time.monotonic() - killed
        assert not left, (f"{len(left)} Ray processes still there {took:.0f} s after kill -9: "
                          + ", ".join(f"{pid} {_name(pid)}" for pid in left))
    finally:
        driver.cleanup()
