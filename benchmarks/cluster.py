"""Benchmark: the same search on one Ray node and on a two-node Ray cluster, side by side.

One node: ``initsearch run`` starts Ray here with every core. Two nodes: Ray's own cluster
utilities start a head and a second node on this machine with half the cores each, and the
search joins them with ``--ray-address`` (the package travels to the workers through Ray's
runtime environment). Same study budget, protocol and seed; confirmation off, so the figure is
the search alone. On one machine the two-node run has no more compute than the one-node run:
the ratio is the price of the cluster path (per-node placement, shipped modules, the driver
talking to a remote head), not a speed-up.

    python benchmarks/cluster.py --data ../shared/data/cifar10 [--budget 16] [--profile smoke]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine


def run(args: argparse.Namespace, label: str, extra: list[str]) -> tuple[float, int, str]:
    home = Path(tempfile.mkdtemp(prefix=f"initsearch-{label}-"))
    cmd = [sys.executable, "-m", "initsearch.cli", "run", "--arch", args.arch, "--budget",
           str(args.budget), "--profile", args.profile, "--data", args.data, "--home", str(home),
           "--study", label, "--confirm-seeds", "0", "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"initsearch-{args.arch}")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'search'", max_results=1000)
    nodes = {r.data.tags.get("node_id") for r in runs}
    epochs = sum(int(r.data.tags.get("epochs", 0)) for r in runs)
    return wall, epochs, f"{len(nodes)} node(s)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--budget", type=int, default=16)
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--arch", default="resnet_ds")
    args = ap.parse_args()
    cpus = os.cpu_count() or 2
    rows = [("one node", cpus, *run(args, "one-node", []))]

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": cpus // 2, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=cpus - cpus // 2)
        rows.append(("two nodes (head + worker)", cpus,
                     *run(args, "two-nodes", ["--ray-address", cluster.address])))
    finally:
        cluster.shutdown()
    print(f"machine: {machine()}; arch {args.arch}, profile {args.profile}, budget {args.budget}")
    print("| cluster | CPUs | wall s | trial epochs | epochs/min | trials ran on | wall vs one node |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0][2]
    for name, n, wall, epochs, where in rows:
        print(f"| {name} | {n} | {wall:.0f} | {epochs} | {60 * epochs / wall:.1f} | {where} | "
              f"{wall / base:.2f}x |")


if __name__ == "__main__":
    main()
