"""The GPU benchmark runs end to end at toy sizes on a CPU: the one short GPU slot a session may
get must not be spent finding out that the script broke with the product."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_runs_every_row_at_smoke_size(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--profile", "smoke",
         "--seconds", "0.1", "--only", "resnet_ds", "--compile", "--concurrency", "1",
         "--packed", "1", "--train-images", "256", "--conventional-images", "100",
         "--workers", "0", "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    rates = [figures["resnet_ds"]["fp32"]["img_s"], figures["resnet_ds"]["bf16"]["img_s"],
             figures["concurrent"]["1"], figures["packed"]["1"], figures["trial"]["img_s"],
             figures["conventional"]["img_s"], figures["ours_fp32"]]
    assert all(math.isfinite(r) and r > 0 for r in rates), rates
    assert "projected 50-trial resnet_ds search on the smoke profile" in done.stdout
