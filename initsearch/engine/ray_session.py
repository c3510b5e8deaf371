"""A local Ray that initsearch starts: reachable from this machine only, and gone with its driver.

* **Loopback.** Ray's servers (GCS, raylet with its object manager, every worker's gRPC server,
  the runtime-env and dashboard agents with their metrics endpoints) listen on all interfaces
  unless the node address is loopback; and ``ray.init`` turns a loopback ``_node_ip_address``
  into the machine's external address unless multi-node clusters are off (Ray's own switch,
  off on Windows and macOS). So the switch is off while the session starts: a session started
  here is single-node anyway, and the address it started with stays in every process.
  Measured on Ray 2.60 (BENCHMARKS.md): before, 7 listening sockets on ``[::]`` or the external
  address; after, all on 127.0.0.1.
* **No leftovers.** A reaper process (:mod:`initsearch.engine.reaper`) waits on a pipe only the
  driver holds and kills the session's remaining processes when it closes, ``kill -9`` of the
  driver included (the agents otherwise linger 61 s).

Joining a cluster (``--ray-address``) uses neither: that Ray is not ours to bind or to reap.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """Ray's multi-node switch off while a session starts (see the module docstring)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def start_local_ray(**init: Any) -> subprocess.Popen | None:
    """``ray.init(address="local", **init)`` on loopback, and its reaper (None where it cannot
    run: not Linux). ``"local"``, not None: None would join a Ray that ``ray start`` left
    running here."""
    import ray

    with _loopback_node():
        context = ray.init(address="local", **init)
    node = context.address_info["node_ip_address"]
    if not _is_loopback(node):  # a later Ray may drop the switch: say so rather than hide it
        logging.getLogger(__name__).warning(
            "this Ray version ignored the loopback node address: its services listen on %s", node)
    try:
        return _start_reaper(context.address_info["session_dir"])
    except OSError:  # no reaper, no session: a Ray nobody will shut down must not stay up
        ray.shutdown()
        raise


def stop_reaper(reaper: subprocess.Popen) -> None:
    """After ``ray.shutdown()``: close the reaper's pipe; it clears what shutdown left, and exits."""
    reaper.stdin.close()
    try:
        reaper.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass


def _start_reaper(session_dir: str) -> subprocess.Popen | None:
    import ray

    if not sys.platform.startswith("linux") or not Path("/proc/self/fd").is_dir():
        return None
    script = Path(__file__).with_name("reaper.py")
    return subprocess.Popen(
        [sys.executable, "-I", "-S", str(script), str(os.getpid()), os.path.realpath(session_dir),
         os.path.dirname(os.path.realpath(ray.__file__))],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # outside the terminal's group: a Ctrl-C must not stop it first


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
