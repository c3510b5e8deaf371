"""The reaper of a local Ray session: ``python -I -S reaper.py <driver pid> <session dir> <ray
package dir>``, its stdin a pipe only the driver holds (:func:`~initsearch.engine.ray_session.
start_local_ray` starts it). Standard library only: it must start in a blink and outlive a
killed driver.

Why: when the driver dies, Ray's fate-sharing kills the GCS and the raylet at once and the
workers notice; but the dashboard and runtime-env agents first report the raylet's death to the
dead GCS, a call with a 60 s timeout fixed in Ray (measured: 61 s after ``kill -9``). So once the
pipe closes -- the driver exited, or was killed, ``kill -9`` included -- this kills what is left
of the session: Ray processes (title ``ray::...``, or run from Ray's package) holding a file in
the session's directory. Nothing else is touched (a ``tail -f`` of a Ray log survives).
"""
import os
import signal
import sys
import time


def leftovers(driver: int, session: str, package: str):
    """Pids of the session's Ray processes still alive (Linux ``/proc``)."""
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (driver, os.getpid()):
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
            if not (argv[0].startswith("ray::") or any(a.startswith(package) for a in argv)):
                continue
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{name}/fd/{fd}").startswith(session):
                    yield int(name)
                    break
            except OSError:
                pass


def main(driver: int, session: str, package: str, patience: float = 10.0) -> None:
    sys.stdin.buffer.read()  # returns when the driver's end of the pipe closes
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        pids = list(leftovers(driver, session, package))
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] + os.sep, sys.argv[3] + os.sep)
