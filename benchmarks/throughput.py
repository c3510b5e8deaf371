"""Benchmark: training and evaluation throughput (images/s) of every built-in architecture.

For each architecture at the sizes a trial protocol gives it (``archs.<arch>.options`` in
``trials/<profile>.yaml``) and at its paper defaults, times full training steps -- forward,
deep-supervision loss, backward, SGD step -- on random CIFAR-shaped batches with the protocol's
batch size, memory format and threads per trial, then eval forwards. Prints one table with the
parameter count, forward FLOPs per image, images/s and the seconds one epoch of the protocol's
training split would take.

    python benchmarks/throughput.py --profile cpu [--threads 1] [--seconds 4]

Run it with nothing else on the machine; every row is measured in this one process.
"""
from __future__ import annotations

import argparse
import time

import torch

from initsearch.archs import ARCHS, build_model, flops_per_image
from initsearch.protocol import load_protocol
from initsearch.trial import deep_supervision_loss

from common import machine


def images_per_second(model: torch.nn.Module, batch: int, channels_last: bool, seconds: float,
                      train: bool, aux_weight: float = 0.3) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(train)

    def step():
        if train:
            loss = deep_supervision_loss(model(x), y, aux_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
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
    args = ap.parse_args()
    base = load_protocol(args.profile)
    threads = args.threads or base.threads_per_trial
    torch.set_num_threads(threads)
    print(f"machine: {machine()}; {threads} thread(s); profile {base.name}")
    print("| arch | options | params | MFLOPs/img | train img/s | eval img/s | epoch s |")
    print("|---|---|---|---|---|---|---|")
    for name in ARCHS:
        protocol, options = base.for_arch(name)
        rows = [("profile", options)] + ([("defaults", {})] if args.defaults else [])
        for label, opts in rows:
            torch.manual_seed(0)
            model = build_model(name, options=opts)
            params = sum(p.numel() for p in model.parameters())
            flops = flops_per_image(model) / 1e6
            train = images_per_second(model, protocol.batch_size, protocol.channels_last,
                                      args.seconds, train=True,
                                      aux_weight=protocol.aux_loss_weight)
            evals = images_per_second(model, protocol.eval_batch_size, protocol.channels_last,
                                      args.seconds / 2, train=False)
            n_train = protocol.train_size or 50_000 - protocol.val_size
            shown = ", ".join(f"{k}={v}" for k, v in opts.items()) or "paper defaults"
            print(f"| {name} | {shown} | {params / 1e6:.3f}M | {flops:.1f} | {train:.0f} | "
                  f"{evals:.0f} | {n_train / train:.1f} |", flush=True)


if __name__ == "__main__":
    main()
