"""Benchmark: the first few hundred SGD steps of baseline inits at several learning rates.

A claim compares two inits at one learning rate. An init whose start has a larger gradient
(an isometric Jacobian: RISOTTO, ZerO) takes a larger first step at the same lr, and can
die where its control trains. This prints, per recipe and lr: the gradient norm at step 0,
the mean loss of the first and the last 20 steps, and the gradient norm at the last step (one
that decays towards 0 with the loss at ln 10 = 2.30 is a dead network). It uses real CIFAR-10
batches (standardized, no augmentation), SGD with Nesterov momentum 0.9, weight decay 5e-4, one
thread.

    python benchmarks/first_steps.py --data ../shared/data/cifar10 --arch resnet \
        --arch-opt depth=14 width=16 norm=none --recipes risotto fixup --lrs 0.05 0.01
"""
from __future__ import annotations

import argparse

import torch
from torch.nn import functional as F

from common import machine
from initsearch.archs import build_model
from initsearch.cli import key_values
from initsearch.data import load_cifar10, standardize
from initsearch.recipe import BASELINES
from initsearch.roles import discover_roles


def first_steps(arch: str, options: dict, recipe: str, lr: float, x: torch.Tensor,
                y: torch.Tensor, steps: int, batch: int, seed: int) -> dict[str, float]:
    """Train ``steps`` steps from the recipe's init; the figures of the table."""
    torch.manual_seed(seed)
    model = build_model(arch, options=options)
    BASELINES[recipe].apply(model, seed=seed, roles=discover_roles(model))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    losses, norms = [], []
    for i in range(steps):
        out = model(x[i * batch:(i + 1) * batch])
        out = out[0] if isinstance(out, tuple) else out  # deeply-supervised: the main head
        loss = F.cross_entropy(out, y[i * batch:(i + 1) * batch])
        opt.zero_grad()
        loss.backward()
        norms.append(float(torch.linalg.vector_norm(
            torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))))
        opt.step()
        losses.append(loss.item())
    return {"grad0": norms[0], "first": sum(losses[:20]) / 20, "last": sum(losses[-20:]) / 20,
            "grad_end": norms[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--arch", default="resnet")
    ap.add_argument("--arch-opt", nargs="*", default=["depth=14", "width=16", "norm=none"])
    ap.add_argument("--recipes", nargs="+", default=["risotto", "fixup"])
    ap.add_argument("--lrs", nargs="+", type=float, default=[0.05, 0.01])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    options = key_values(args.arch_opt, "--arch-opt")
    train, _ = load_cifar10(args.data)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))
    idx = idx[:args.steps * args.batch]
    x, y = standardize(train.x[idx], channels_last=False), train.y[idx]
    print(f"{machine()}; {args.arch} {options}; {args.steps} steps of {args.batch}; seed {args.seed}")
    print("| recipe | lr | grad norm, step 0 | loss, first 20 | loss, last 20 | grad norm, last |")
    print("|---|---|---|---|---|---|")
    for recipe in args.recipes:
        for lr in args.lrs:
            r = first_steps(args.arch, options, recipe, lr, x, y, args.steps, args.batch, args.seed)
            print(f"| {recipe} | {lr:g} | {r['grad0']:.2f} | {r['first']:.3f} | {r['last']:.3f} "
                  f"| {r['grad_end']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
