"""Benchmark: how long role discovery and binding a space take on the torchvision zoo.

For each model (built for 32x32 CIFAR-10 inputs): parameters, ``discover_roles`` (one fx trace
and the graph reading), and ``load_space("default").bind(model)`` -- which discovers once, then
tries every baseline on a copy (data steps probed on 4 random images) and every structural step
of the space: the set-up a search pays once per study.

    python benchmarks/discovery.py [--threads 1]
"""
from __future__ import annotations

import argparse
import time

import torch
import torchvision.models as tvm
from common import machine

from initsearch.roles import discover_roles
from initsearch.space import load_space

ZOO = {
    "resnet18": lambda: tvm.resnet18(num_classes=10),
    "resnet50": lambda: tvm.resnet50(num_classes=10),
    "mobilenet_v2": lambda: tvm.mobilenet_v2(num_classes=10),
    "mobilenet_v3_small": lambda: tvm.mobilenet_v3_small(num_classes=10),
    "efficientnet_b0": lambda: tvm.efficientnet_b0(num_classes=10),
    "regnet_y_400mf": lambda: tvm.regnet_y_400mf(num_classes=10),
    "convnext_tiny": lambda: tvm.convnext_tiny(num_classes=10),
    "vit_b_16 (32x32)": lambda: tvm.vit_b_16(image_size=32, num_classes=10),
    "swin_t": lambda: tvm.swin_t(num_classes=10),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.threads} thread(s)")
    print("| model | params | topology | units | blocks | discover_roles s | bind default space s | baselines that apply |")
    print("|---|---|---|---|---|---|---|---|")
    for name, build in ZOO.items():
        model = build()
        t0 = time.perf_counter()
        roles = discover_roles(model)
        t1 = time.perf_counter()
        space = load_space("default").bind(model)
        t2 = time.perf_counter()
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.1f}M | {roles.topology} | {len(roles)} | "
              f"{len(roles.blocks)} | {t1 - t0:.2f} | {t2 - t1:.1f} | "
              f"{', '.join(space.baselines())} |", flush=True)


if __name__ == "__main__":
    main()
