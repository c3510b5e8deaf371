"""Shared fixtures: the real CIFAR-10 copy beside the checkout, a real batch, a scratch home."""
from __future__ import annotations

import os
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
