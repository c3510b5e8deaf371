"""Benchmark: the trial loop before and after a change, side by side, on the real data.

Runs the product's own trial (``initsearch.trial.run_trial``: data to the device, init,
training, evaluation) in a fresh process per run, for this checkout and for ``--before`` (another
checkout, e.g. ``git worktree add /tmp/before <commit>``), alternating the two ``--repeats``
times so that drift on a shared machine hits both alike; then this checkout with
``precision: bf16`` and with ``compile: true``. Prints seconds per training epoch and per
evaluation, the trial's wall time (process start excluded) and its final validation accuracy --
equal accuracies mean the change left the results as they were.

    python benchmarks/loop.py --data ../shared/data/cifar10 --before /tmp/before [--arch resnet_ds]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parents[1]

# Runs in the tree under test (PYTHONPATH): only API both trees share.
INNER = """
import dataclasses, json, sys, time, torch
from initsearch.archs import build_model
from initsearch.data import load_splits
from initsearch.protocol import load_protocol
from initsearch.recipe import BASELINES
from initsearch.trial import TrialConfig, run_trial
arch, profile, data, epochs, extra = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
p, options = load_protocol(profile).for_arch(arch)
p = dataclasses.replace(p, epochs=epochs, **extra)
torch.set_num_threads(p.threads_per_trial)
splits = load_splits("cifar10", data, train_size=p.train_size, val_size=p.val_size,
                     test_size=p.test_size, split_seed=p.split_seed)
t0 = time.perf_counter()
ms = list(run_trial(TrialConfig(0, BASELINES["he"].to_dict(), p.to_dict()), splits,
                    lambda: build_model(arch, options=options)))
print(json.dumps({"wall": time.perf_counter() - t0, "train": [m["train_seconds"] for m in ms],
                  "eval": [m["eval_seconds"] for m in ms], "val_acc": ms[-1]["val_acc"]}))
"""


def run(tree: Path, args: argparse.Namespace, extra: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", INNER, args.arch, args.profile, args.data,
                          str(args.epochs), json.dumps(extra)], env=env, capture_output=True,
                         text=True, cwd=tree)
    if out.returncode:
        sys.exit(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--before", required=True, help="the other checkout to compare with")
    ap.add_argument("--arch", default="resnet_ds")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    args.data = str(Path(args.data).resolve())
    results: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.repeats):  # interleaved: drift hits both alike
        results["before"].append(run(Path(args.before).resolve(), args, {}))
        results["after"].append(run(HERE, args, {}))
    results["after, precision bf16"] = [run(HERE, args, {"precision": "bf16"})]
    results["after, compile"] = [run(HERE, args, {"compile": True})]

    print(f"machine: {machine()}; {args.arch} on the {args.profile} profile, {args.epochs} epochs, "
          f"recipe he, {args.repeats} interleaved runs of before/after (medians)")
    print("| loop | s per train epoch (first / later) | s per eval | trial wall s | final val_acc | speed vs before |")
    print("|---|---|---|---|---|---|")
    ref = statistics.median(r["wall"] for r in results["before"])
    for name, rs in results.items():
        med = lambda f: statistics.median(f(r) for r in rs)
        first, later = med(lambda r: r["train"][0]), med(lambda r: statistics.mean(r["train"][1:] or r["train"]))
        accs = sorted({round(r["val_acc"], 4) for r in rs})
        print(f"| {name} | {first:.2f} / {later:.2f} | {med(lambda r: statistics.mean(r['eval'])):.2f} "
              f"| {med(lambda r: r['wall']):.1f} | {', '.join(f'{a:.4f}' for a in accs)} "
              f"| {ref / med(lambda r: r['wall']):.2f}x |")


if __name__ == "__main__":
    main()
