"""Benchmark: every published scheme under one short protocol, several seeds, two ResNets.

For resnet_ds with BN and its normalization-free variant (norm=none), each baseline recipe that
applies (``initsearch.recipe.BASELINES``) trains with each seed under the same protocol; the
table gives the final validation accuracy (mean +- std over seeds), the epochs to reach a target
validation accuracy (mean over seeds; '-' when a seed never reaches it, with the count), and the
init's own cost.

    python benchmarks/compare_schemes.py --data ../shared/data/cifar10 [--profile cpu] \
        [--epochs 6] [--seeds 0 1 2] [--target 0.40] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time

from common import curves, mean_std

from initsearch.archs import build_model
from initsearch.protocol import load_protocol
from initsearch.space import load_space

VARIANTS = {"resnet_ds (BN)": {"norm": "batch"}, "resnet_ds norm=none": {"norm": "none"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--epochs", type=int, help="override the profile's epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.40, help="val accuracy for 'epochs to'")
    ap.add_argument("--json", help="also write the raw curves here")
    args = ap.parse_args()
    protocol, sized = load_protocol(args.profile).for_arch("resnet_ds")
    if args.epochs:
        protocol = dataclasses.replace(protocol, epochs=args.epochs)
    jobs = []
    for variant, extra in VARIANTS.items():
        opts = {**sized, **extra}
        space = load_space("resnet_ds").bind(build_model("resnet_ds", options=opts))
        jobs += [(f"{variant}|{name}", recipe, opts, seed)
                 for name, recipe in space.baselines().items() for seed in args.seeds]
    t0 = time.perf_counter()
    runs = curves(jobs, protocol, args.data)
    wall = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    print(f"protocol {protocol.name}: {protocol.epochs} epochs, {protocol.train_size} train / "
          f"{protocol.val_size} val images, seeds {args.seeds}; {platform.machine()} CPU, "
          f"{os.cpu_count()} cores, 1 thread per run; {wall / 60:.0f} min")
    print(f"| arch | scheme | val acc % (mean +- std) | epochs to {100 * args.target:.0f}% "
          "| init s |")
    print("|---|---|---|---|---|")
    for label in dict.fromkeys(label for label, *_ in jobs):
        mine = [r for r in runs if r["label"] == label]
        reach = [next((i + 1 for i, v in enumerate(r["val_acc"]) if v >= args.target), None)
                 for r in mine]
        hit = [e for e in reach if e is not None]
        to = f"{statistics.mean(hit):.1f}" if hit else "-"
        if len(hit) < len(reach):
            to += f" ({len(hit)}/{len(reach)} seeds)"
        variant, name = label.split("|")
        print(f"| {variant} | {name} | {mean_std([r['val_acc'][-1] for r in mine])} | {to} "
              f"| {statistics.mean(r['init_seconds'] for r in mine):.2f} |")


if __name__ == "__main__":
    main()
