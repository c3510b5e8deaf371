"""Benchmark: every published scheme under one short protocol, several seeds, several models.

For each model (``--model ARCH[:key=value,...]``, sized by the profile's ``archs`` section;
default resnet_ds with BN and normalization-free), each baseline recipe that applies
(``initsearch.recipe.BASELINES``, bound by the arch's own space) trains with each seed under the
profile's protocol for that arch; the table gives the final validation accuracy (mean +- std over seeds), the epochs to reach a target
validation accuracy (mean over seeds; '-' when a seed never reaches it, with the count), and the
init's own cost.

    python benchmarks/compare_schemes.py --data ../shared/data/cifar10 [--profile cpu] \
        [--model resnet_ds --model resnet_ds:norm=none] [--epochs 6] [--seeds 0 1 2] \
        [--target 0.40] [--json out.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import time

from common import curves, machine, mean_std

from initsearch.archs import build_model
from initsearch.cli import key_values
from initsearch.protocol import load_protocol
from initsearch.space import load_space

def parse_model(spec: str) -> tuple[str, dict]:
    """``"vgg:norm=none,depth=11"`` -> ``("vgg", {"norm": "none", "depth": 11})``."""
    arch, _, opts = spec.partition(":")
    return arch, key_values([o for o in re.split(r",(?=\w+=)", opts) if o], "--model")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--model", action="append", metavar="ARCH[:KEY=VALUE,...]",
                    help="repeatable; default resnet_ds and resnet_ds:norm=none")
    ap.add_argument("--epochs", type=int, help="override the profile's epochs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=0.40, help="val accuracy for 'epochs to'")
    ap.add_argument("--json", help="also write the raw curves here")
    args = ap.parse_args()
    jobs, runs, t0 = [], [], time.perf_counter()
    for spec in args.model or ["resnet_ds", "resnet_ds:norm=none"]:
        arch, extra = parse_model(spec)
        protocol, opts = load_protocol(args.profile).for_arch(arch)
        if args.epochs:
            protocol = dataclasses.replace(protocol, epochs=args.epochs)
        opts.update(extra)
        space = load_space(arch).bind(build_model(arch, options=opts))
        mine = [(f"{spec}|{name}", recipe, opts, seed)
                for name, recipe in space.baselines().items() for seed in args.seeds]
        jobs += mine
        runs += curves(mine, protocol, args.data, arch)
    wall = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=1)
    print(f"profile {protocol.name} (each arch with its own sizes and overrides): "
          f"{protocol.epochs} epochs, {protocol.train_size} train / "
          f"{protocol.val_size} val images, seeds {args.seeds}; {machine()}, "
          f"1 thread per run; {wall / 60:.0f} min")
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
