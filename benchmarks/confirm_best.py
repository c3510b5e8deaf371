"""Benchmark: re-train a search's best recipe and the baselines on fresh seeds (mean +- std).

A search reports the maximum over many noisy trials, which overstates the winner. This script
re-runs the recommended recipe and every baseline that applies under the same protocol with
seeds the search never used, so the gap is measured, not selected.

    python benchmarks/confirm_best.py --recipe best.yaml --data ../shared/data/cifar10 \
        [--profile cpu] [--seeds 1 2 3] [--arch-opt norm=none]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import curves, mean_std

from initsearch.archs import build_model
from initsearch.cli import key_values
from initsearch.protocol import load_protocol
from initsearch.recipe import Recipe
from initsearch.space import load_space


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--arch", default="resnet_ds")
    ap.add_argument("--arch-opt", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    protocol, opts = load_protocol(args.profile).for_arch(args.arch)
    opts.update(key_values(args.arch_opt, "--arch-opt"))
    best = Recipe.load(args.recipe)
    space = load_space(args.arch).bind(build_model(args.arch, options=opts))
    recipes = {f"best ({best.name})": best, **space.baselines()}
    t0 = time.perf_counter()
    runs = curves([(name, r, opts, s) for name, r in recipes.items() for s in args.seeds],
                  protocol, args.data, args.arch)
    print(f"protocol {protocol.name}, {args.arch} {opts}, seeds {args.seeds}, "
          f"{torch.get_num_threads()} cores, {time.perf_counter() - t0:.0f} s")
    print("| recipe | val_acc mean +- std | test_acc mean +- std | per-seed val |")
    print("|---|---|---|---|")
    for name in recipes:
        mine = [r for r in runs if r["label"] == name]
        val = [r["val_acc"][-1] for r in mine]
        print(f"| {name} | {mean_std(val)} | {mean_std([r['test_acc'] for r in mine])} "
              f"| {', '.join(f'{100 * v:.1f}' for v in val)} |")


if __name__ == "__main__":
    main()
