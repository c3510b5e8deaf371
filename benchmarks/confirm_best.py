"""Benchmark: re-train a search's best recipe and the baselines on fresh seeds (mean +- std).

A search reports the maximum over many noisy trials, which overstates the winner. This script
re-runs the recommended recipe and every baseline under the same protocol with seeds the search
never used, so the gap is measured, not selected.

    python benchmarks/confirm_best.py --recipe best.yaml --data ../shared/data/cifar10 \
        [--profile cpu] [--seeds 1 2 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import torch

from initsearch.archs import build_model
from initsearch.data import load_splits
from initsearch.protocol import load_protocol
from initsearch.recipe import Recipe
from initsearch.space import load_space
from initsearch.trial import TrialConfig, run_trial


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--arch", default="resnet_ds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    protocol = load_protocol(args.profile)
    splits = load_splits("cifar10", args.data, train_size=protocol.train_size,
                         val_size=protocol.val_size, test_size=protocol.test_size,
                         split_seed=protocol.split_seed)
    model_fn = functools.partial(build_model, args.arch,
                                 options=protocol.arch_options.get(args.arch, {}))
    best = Recipe.load(args.recipe)
    recipes = {f"best ({best.name})": best, **load_space(args.arch).baselines()}
    t0 = time.perf_counter()
    rows = []
    for name, recipe in recipes.items():
        val, test = [], []
        for seed in args.seeds:
            p = dataclasses.replace(protocol, seeds=(seed,))
            *_, last = run_trial(TrialConfig(0, recipe.to_dict(), p.to_dict()), splits, model_fn)
            val.append(last["val_acc"])
            test.append(last["test_acc"])
        rows.append((name, val, test))
    print(f"protocol {protocol.name}, {args.arch}, seeds {args.seeds}, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - t0:.0f} s")
    print("| recipe | val_acc mean +- std | test_acc mean +- std | per-seed val |")
    print("|---|---|---|---|")
    for name, val, test in rows:
        print(f"| {name} | {100 * statistics.mean(val):.2f} +- {100 * statistics.stdev(val):.2f} "
              f"| {100 * statistics.mean(test):.2f} +- {100 * statistics.stdev(test):.2f} "
              f"| {', '.join(f'{100 * v:.1f}' for v in val)} |")


if __name__ == "__main__":
    main()
