"""Benchmark: wall-clock of a whole `initsearch run` -- search and confirmation -- the share
spent outside training steps, and the verdict it printed.

Runs the CLI as a subprocess (so process start, imports, Ray start-up, Optuna and MLflow are all
inside the measured wall), then reads from the MLflow store the seconds every trial spent inside
init, training and evaluation. The outside share is ``1 - compute / (wall * slots)`` where slots
is the number of trials that can run at once (idle slots count as overhead). Arguments after
``--`` go to ``initsearch run`` (e.g. ``-- --arch-opt norm=none --confirm-seeds 5``).

    python benchmarks/search_wall.py --budget 50 --data ../shared/data/cifar10 [--backend ray]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--arch", default="resnet_ds")
    ap.add_argument("--data", required=True)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--backend", default="ray")
    ap.add_argument("--home", default=None, help="keep the store here (default: a temp dir)")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    home = Path(args.home or tempfile.mkdtemp(prefix="initsearch-bench-")).resolve()
    study = f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "initsearch.cli", "run", "--arch", args.arch, "--budget",
           str(args.budget), "--data", args.data, "--backend", args.backend, "--study", study,
           "--home", str(home), "--out", str(home / "best.yaml"), "--no-progress"]
    if args.profile:
        cmd += ["--profile", args.profile]
    cmd += extra
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout)
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"initsearch-{args.arch}")
    parent = client.search_runs([exp.experiment_id], f"tags.study = '{study}' and tags.role = 'search'")[0]
    m = parent.data.metrics
    compute, slots = m["compute_seconds"], m["slots"]
    outside = wall * slots - compute
    parts = {  # slot-seconds; each wall-clock phase costs every slot
        "process start, imports and exit (outside search())": (wall - m["wall_seconds"]) * slots,
        "search set-up: validation, data, MLflow store, study": m["setup_seconds"] * slots,
        "driver bookkeeping: Optuna + MLflow calls": m["bookkeeping_seconds"],
    }
    parts["the rest: Ray start/scheduling, worker start, trial prep, idle slots"] = outside - sum(parts.values())
    rows = [("machine", machine()),
            ("command", " ".join(["initsearch"] + cmd[3:])),
            ("wall-clock, whole process", f"{wall:.0f} s ({wall / 60:.1f} min)"),
            ("trial slots (concurrent trials)", f"{slots:.0f}"),
            ("time in training + eval steps, all trials", f"{compute:.0f} s"),
            ("outside training/eval steps", f"{100 * outside / (wall * slots):.1f}%"),
            *((f"  {k}", f"{v:.0f} slot-s ({100 * v / (wall * slots):.1f}%)") for k, v in parts.items()),
            ("trials complete / pruned / failed",
             f"{m['n_complete']:.0f} / {m['n_pruned']:.0f} / {m['n_fail']:.0f}"),
            ("trials replayed from the result cache (search + confirmation)",
             f"{m.get('cached_trials', 0):.0f}"),
            ("search draws replayed from an earlier study", f"{m.get('replayed_draws', 0):.0f}"),
            ("confirmation stage (wall)", f"{m['confirm_seconds']:.0f} s "
                                          f"({100 * m['confirm_seconds'] / wall:.0f}% of the wall)"),
            ("verdict", next((line[len("verdict: "):] for line in proc.stdout.splitlines()
                              if line.startswith("verdict: ")), "-"))]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows))


if __name__ == "__main__":
    main()
