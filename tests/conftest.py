"""Shared fixtures: the real CIFAR-10 copy beside the checkout, a real batch, a scratch home."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from initsearch.data import load_cifar10, standardize

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INITSEARCH_DATA", REPO.parent / "shared" / "data" / "cifar10"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert (DATA / "train").is_dir(), f"CIFAR-10 not found at {DATA}; set INITSEARCH_DATA"
    return DATA


@pytest.fixture(scope="session")
def cifar_batch(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """256 real, standardized CIFAR-10 training images and their labels."""
    train, _ = load_cifar10(data_dir)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:256]
    return standardize(train.x[idx], channels_last=False), train.y[idx]


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture(scope="module")
def one_thread():
    """Few cores shared with other jobs: one intra-op thread avoids oversubscription stalls
    (many small ops on two threads ran 10-40x slower under load). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cifar_stream(data_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """A stream of real, standardized CIFAR-10 training batches (64 x 200 images, no repeats),
    for tests that train for a few hundred steps."""
    train, _ = load_cifar10(data_dir)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:64 * 200]
    return standardize(train.x[idx], channels_last=False), train.y[idx]


# -- real servers for the fault and scale-out tests ------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on a free loopback port over ``root/m.db``."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.root, self.proc = root, None
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> float:
        t0 = time.perf_counter()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true"}
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'm.db'}",
             "--artifacts-destination", str(self.root / "art")],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.time() + 150
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return time.perf_counter() - t0
            except OSError:
                time.sleep(0.3)
        self.stop()
        tail = (self.root / "server.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"mlflow server did not come up:\n{tail}")

    def stop(self) -> None:
        """SIGTERM to the server and its uvicorn worker (a process group), then wait."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def _server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield srv
    srv.stop()


@pytest.fixture
def mlflow_server(_server):
    """One server for the module (each start costs seconds); up when a test begins."""
    if _server.proc is None or _server.proc.poll() is not None:
        _server.start()
    return _server


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL server (Debian's package) on loopback for the session; yields its URL.
    Run as root (CI), the server runs as the ``postgres`` user, which cannot enter pytest's
    private temp folders: its data lives in a folder of its own under /tmp."""
    import shutil
    import tempfile

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not versions:
        pytest.fail("PostgreSQL is not installed; `apt-get install postgresql` (.ci/run does)")
    bindir = versions[-1].parent
    data = Path(tempfile.mkdtemp(prefix="initsearch-pg-"))
    as_user = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True, capture_output=True)
    run(bindir / "initdb", "-D", data / "db", "-A", "trust", "-U", "initsearch")
    run(bindir / "pg_ctl", "-D", data / "db", "-l", data / "log", "-w", "start", "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1")
    run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "initsearch", "studies")
    yield f"postgresql+psycopg2://initsearch@127.0.0.1:{port}/studies"
    run(bindir / "pg_ctl", "-D", data / "db", "-m", "immediate", "-w", "stop")
    shutil.rmtree(data, ignore_errors=True)
