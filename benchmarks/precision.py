"""Benchmark: does bf16 autocast change what a trial measures? Paired fp32 vs bf16 on real data.

Trains each baseline recipe on each seed twice through the product's own trial
(``initsearch.trial.run_trial``, full protocol: every epoch, the final test accuracy), once in
fp32 and once under bf16 autocast, and pairs the two by (recipe, seed): same data order,
augmentation and init (common random numbers), so the difference is the precision's alone.
Prints per-recipe means, the paired difference of the final validation and test accuracy with
its 95 % CI over all pairs, and the seconds per trial in each precision (one thread per trial,
``--jobs`` trials at once, the two precisions of a pair run one after the other).

    python benchmarks/precision.py --data ../shared/data/cifar10 [--arch resnet_ds] [--seeds 1 2 3 4]
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from initsearch.archs import build_model
from initsearch.data import load_splits
from initsearch.protocol import load_protocol
from initsearch.recipe import BASELINES
from initsearch.stats import paired
from initsearch.trial import TrialConfig, run_trial

from common import machine


def _pair(arch: str, profile: str, data: str, recipe: str, seed: int) -> dict:
    """One (recipe, seed): fp32 then bf16, in one process with one thread."""
    torch.set_num_threads(1)
    protocol, options = load_protocol(profile).for_arch(arch)
    splits = load_splits("cifar10", data, train_size=protocol.train_size, val_size=protocol.val_size,
                         test_size=protocol.test_size, split_seed=protocol.split_seed)
    out = {"recipe": recipe, "seed": seed}
    for precision in ("fp32", "bf16"):
        p = dataclasses.replace(protocol, seeds=(seed,), precision=precision)
        t0 = time.perf_counter()
        last = list(run_trial(TrialConfig(0, BASELINES[recipe].to_dict(), p.to_dict()), splits,
                              lambda: build_model(arch, options=options)))[-1]
        out[precision] = {"val": last["val_acc"], "test": last["test_acc"],
                          "seconds": time.perf_counter() - t0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="resnet_ds")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--recipes", nargs="+", default=["pytorch_default", "he", "lion_dg", "lsuv"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    jobs = [(args.arch, args.profile, args.data, r, s) for r in args.recipes for s in args.seeds]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(_pair, *zip(*jobs)))
    print(f"machine: {machine()}; {args.arch} on the {args.profile} profile, full protocol, "
          f"{len(args.seeds)} seeds x {len(args.recipes)} recipes, 1 thread per trial, {args.jobs} at once")
    print("| recipe | val fp32 % | val bf16 % | test fp32 % | test bf16 % | s/trial fp32 | s/trial bf16 |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        mine = [r for r in rows if r["recipe"] == recipe]
        cells = [100 * statistics.mean(r[p][k] for r in mine) for k in ("val", "test") for p in ("fp32", "bf16")]
        secs = [statistics.mean(r[p]["seconds"] for r in mine) for p in ("fp32", "bf16")]
        print(f"| {recipe} | " + " | ".join(f"{c:.2f}" for c in cells) + " | "
              + " | ".join(f"{s:.1f}" for s in secs) + " |")
    for key in ("val", "test"):
        d = paired([r["bf16"][key] for r in rows], [r["fp32"][key] for r in rows])
        print(f"bf16 - fp32, final {key} acc over {len(rows)} pairs: {d.pp()}")
    speed = sum(r["fp32"]["seconds"] for r in rows) / sum(r["bf16"]["seconds"] for r in rows)
    print(f"trial wall, fp32 / bf16: {speed:.2f}x")


if __name__ == "__main__":
    main()
