"""Benchmark: the seeds' transformer claim -- can an init replace learning-rate warm-up on the
original Post-LN Transformer?

GradInit (Zhu et al. 2021) "enables training the original Post-LN Transformer without learning
rate warmup"; T-Fixup (Huang et al. 2020) trains a LayerNorm-free one without it. On
``transformer_postln`` (CIFAR-10 patches, the ``cpu`` profile's data and epochs, AdamW), at a
learning rate where PyTorch's default init trains badly without warm-up, this trains with the
same seeds (paired):

* PyTorch's default init, no warm-up;
* PyTorch's default init, ``--warmup`` epochs of linear warm-up;
* GradInit at its transformer setting (the Adam variant), no warm-up;
* T-Fixup on the same transformer without LayerNorm (``norm=none``), no warm-up;

and prints final val accuracy per seed, mean [95% CI], and each row's paired difference to the
default without warm-up.

    python benchmarks/transformer_warmup.py --data ../shared/data/cifar10 [--depth 8] [--lr 0.01] \
        [--warmup 1] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from common import curves, machine

from initsearch.protocol import load_protocol
from initsearch.recipe import BASELINES, StepInit
from initsearch.stats import estimate, paired


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--gradinit-iters", type=int, nargs="*", default=[],
                    help="also GradInit with this many iterations (one epoch of the cpu data is "
                         "15; the paper ran 780 on IWSLT, about 0.7 of its epoch)")
    ap.add_argument("--only", nargs="*", help="run only the rows whose label starts with these")
    args = ap.parse_args()
    arch = "transformer_postln"
    protocol, opts = load_protocol(args.profile).for_arch(arch)
    protocol = dataclasses.replace(protocol, optimizer={**protocol.optimizer, "lr": args.lr},
                                   warmup_epochs=0.0)
    opts = {**opts, "depth": args.depth}
    rows = {"default, no warm-up": (BASELINES["pytorch_default"], opts, protocol),
            f"default, warm-up {args.warmup:g} epoch": (
                BASELINES["pytorch_default"], opts,
                dataclasses.replace(protocol, warmup_epochs=args.warmup)),
            "GradInit (Adam setting), no warm-up": (BASELINES["gradinit"], opts, protocol),
            "T-Fixup (norm=none), no warm-up": (BASELINES["tfixup"], {**opts, "norm": "none"},
                                                protocol)}
    for iters in args.gradinit_iters:
        longer = dataclasses.replace(BASELINES["gradinit"], steps=(StepInit("gradinit", {"iters": iters}),))
        rows[f"GradInit (Adam setting, {iters} iterations), no warm-up"] = (longer, opts, protocol)
    reference = "default, no warm-up"
    if args.only:
        rows = {k: v for k, v in rows.items() if k == reference or k.startswith(tuple(args.only))}
    t0 = time.perf_counter()
    results = {}
    for label, (recipe, options, proto) in rows.items():  # one pool per protocol variant
        runs = curves([(label, recipe, options, s) for s in args.seeds], proto, args.data, arch)
        results[label] = {r["seed"]: r for r in runs}
    print(f"{arch} depth {args.depth}, {protocol.name} data ({protocol.train_size} train / "
          f"{protocol.val_size} val), {protocol.epochs} epochs, AdamW lr {args.lr:g}, seeds "
          f"{args.seeds}; {machine()}; {time.perf_counter() - t0:.0f} s")
    ref = [results["default, no warm-up"][s]["val_acc"][-1] for s in args.seeds]
    print("| init | val acc per seed (%) | mean [95% CI] | vs default, no warm-up (paired) |")
    print("|---|---|---|---|")
    for label in rows:
        val = [results[label][s]["val_acc"][-1] for s in args.seeds]
        diff = paired(val, ref).pp() if label != "default, no warm-up" else "-"
        print(f"| {label} | {', '.join(f'{100 * v:.1f}' for v in val)} | {estimate(val).pct()} "
              f"| {diff} |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
