"""Benchmark: training and evaluation throughput (images/s) of every built-in architecture.

For each architecture at the sizes a trial protocol gives it (``archs.<arch>.options`` in
``trials/<profile>.yaml``) and at its paper defaults, times the product's own training step
(``initsearch.trial.train_step``: forward, deep-supervision loss, backward, optimizer step) on
random CIFAR-shaped batches with the protocol's batch size, optimizer, memory format and threads
per trial, then eval forwards -- once per ``--precision`` (fp32, and bf16 autocast where asked),
so the two are measured side by side in one process. Prints one table with the parameter count,
forward FLOPs per image, images/s and the seconds one epoch of the protocol's training split
would take.

    python benchmarks/throughput.py --profile cpu [--threads 1] [--seconds 4] [--precision fp32 bf16]

Run it with nothing else on the machine; every row is measured in this one process.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from initsearch.archs import ARCHS, build_model, flops_per_image
from initsearch.protocol import Protocol, load_protocol
from initsearch.recipe import BASELINES
from initsearch.trial import _autocast, make_optimizer, train_step

from common import machine


def images_per_second(model: torch.nn.Module, p: Protocol, seconds: float, train: bool) -> float:
    """Images per second of the product's training step (or of eval forwards) under ``p``."""
    fmt = torch.channels_last if p.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    batch = p.batch_size if train else p.eval_batch_size
    x = torch.randn(batch, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = make_optimizer(model, BASELINES["pytorch_default"].plan(model), p.optimizer)  # the trial's groups
    model.train(train)

    def step():
        if train:
            train_step(model, opt, x, y, p)
        else:
            with torch.inference_mode(), _autocast(x.device, p):
                model(x)

    step(), step()  # warm-up: allocator, kernels picked
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        step()
        n += 1
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--threads", type=int, help="default: the profile's threads_per_trial")
    ap.add_argument("--seconds", type=float, default=4.0, help="timed seconds per row and mode")
    ap.add_argument("--defaults", action="store_true", help="also the archs' paper-size defaults")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="measure each (side by side in this one process)")
    args = ap.parse_args()
    base = load_protocol(args.profile)
    threads = args.threads or base.threads_per_trial
    torch.set_num_threads(threads)
    print(f"machine: {machine()}; {threads} thread(s); profile {base.name}")
    cols = [(prec, what) for prec in args.precision for what in ("train img/s", "eval img/s", "epoch s")]
    print("| arch | options | params | MFLOPs/img | " + " | ".join(f"{w} {p}" for p, w in cols) + " |")
    print("|---|---|---|---|" + "---|" * len(cols))
    for name in ARCHS:
        protocol, options = base.for_arch(name)
        rows = [("profile", options)] + ([("defaults", {})] if args.defaults else [])
        for label, opts in rows:
            torch.manual_seed(0)
            model = build_model(name, options=opts)
            params = sum(p.numel() for p in model.parameters())
            flops = flops_per_image(model) / 1e6
            n_train = protocol.train_size or 50_000 - protocol.val_size
            cells = []
            for prec in args.precision:
                p = dataclasses.replace(protocol, precision=prec)
                train = images_per_second(model, p, args.seconds, train=True)
                evals = images_per_second(model, p, args.seconds / 2, train=False)
                cells += [f"{train:.0f}", f"{evals:.0f}", f"{n_train / train:.1f}"]
            shown = ", ".join(f"{k}={v}" for k, v in opts.items()) or "paper defaults"
            print(f"| {name} | {shown} | {params / 1e6:.3f}M | {flops:.1f} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
