"""Shared by the benchmarks: train recipes for several seeds, in parallel worker processes."""
from __future__ import annotations

import dataclasses
import functools
import multiprocessing as mp
import os
import statistics

import torch

from initsearch.archs import build_model
from initsearch.data import load_splits
from initsearch.protocol import Protocol, machine  # noqa: F401 (re-exported for the benchmarks)
from initsearch.recipe import Recipe
from initsearch.trial import TrialConfig, run_trial


def curves(jobs: list[tuple[str, Recipe, dict, int]], protocol: Protocol, data_dir: str,
           arch: str = "resnet_ds", workers: int | None = None) -> list[dict]:
    """Run ``(label, recipe, arch_options, seed)`` jobs, one seed each, ``workers`` at a time
    (default: one per core, one thread each, as the search runs trials). Returns, per job,
    ``{label, seed, arch_options, val_acc: [per epoch], test_acc, init_seconds}``."""
    workers = workers or os.cpu_count() or 1
    args = [(label, recipe.to_dict(), opts, seed, protocol.to_dict(), data_dir, arch)
            for label, recipe, opts, seed in jobs]
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        return pool.starmap(_one, args)


def _one(label, recipe, opts, seed, protocol, data_dir, arch) -> dict:
    torch.set_num_threads(protocol["threads_per_trial"])
    p = dataclasses.replace(Protocol.from_dict(protocol), seeds=(seed,))
    splits = _splits(data_dir, p.train_size, p.val_size, p.test_size, p.split_seed)
    model_fn = functools.partial(build_model, arch, options=opts)
    epochs = list(run_trial(TrialConfig(0, recipe, p.to_dict()), splits, model_fn))
    return {"label": label, "seed": seed, "arch_options": opts,
            "val_acc": [e["val_acc"] for e in epochs], "test_acc": epochs[-1]["test_acc"],
            "init_seconds": epochs[0]["init_seconds"]}


@functools.lru_cache(maxsize=1)
def _splits(data_dir, train, val, test, seed):
    return load_splits("cifar10", data_dir, train_size=train, val_size=val, test_size=test,
                       split_seed=seed)


def mean_std(values: list[float]) -> str:
    """``51.12 +- 0.88`` in percent (sample std; 0 for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} +- {100 * sd:.2f}"
