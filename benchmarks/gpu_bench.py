"""Benchmark: the trial loop on one GPU -- precision, compilation, trials per GPU, packed models,
one real trial, and a conventional pipeline side by side. Needs torch alone (plus PyYAML,
pydantic and Optuna, which ``initsearch`` imports; ``scripts/gpu_bench.sh`` installs them from
wheels carried in ``.gpu/wheels`` on a machine without network).

Rows, every one measured in this run on this GPU:

1. per architecture at its ``gpu`` profile size: training images/s of ``initsearch.trial.train_step``
   (the product's step) in fp32 eager, under bf16 autocast, and bf16 + ``torch.compile`` (the
   protocol keys ``precision`` and ``compile``); peak GPU memory of one trial;
2. K concurrent trials on the GPU (K processes, as Ray's fractional GPUs run them): total images/s;
3. K models packed into one program (``torch.func.stack_module_state`` + ``vmap``, fp32):
   images/s;
4. one real trial through ``initsearch.trial.run_trial`` on CIFAR-shaped synthetic data of the
   ``gpu`` profile's size, and from it the projected wall time of a 50-trial ``resnet_ds`` search
   (successive halving as the profile sets it) and of its confirmation;
5. a conventional pipeline: a fresh process per trial, torchvision ``ImageFolder`` of JPEG files +
   ``DataLoader`` with workers, fp32 -- against the product's loop on the same images and epochs.

    python benchmarks/gpu_bench.py [--seconds 5] [--only resnet_ds]

``--profile smoke --train-images 512 ...`` runs every row at toy sizes on a CPU in about a minute
(``tests/test_gpu_bench.py``), so that the one short GPU slot is never spent on a broken script.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from initsearch.archs import build_model  # noqa: E402
from initsearch.data import ImageSet, Splits, standardize  # noqa: E402
from initsearch.protocol import load_protocol  # noqa: E402
from initsearch.trial import TrialConfig, deep_supervision_loss, run_trial, train_step  # noqa: E402

ARCHS = ("resnet_ds", "densenet_ds", "vgg", "vit")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


PROFILE = "gpu"  # the protocol whose sizes are measured (--profile)


def protocol_for(arch: str):
    return load_protocol(PROFILE).for_arch(arch)


def batches(n: int, batch: int, channels_last: bool):
    """``n`` random CIFAR-shaped uint8 images on the device, standardized on the fly per batch."""
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)
    return lambda i: (standardize(x[(i * batch) % n:][:batch], channels_last=channels_last),
                      y[(i * batch) % n:][:batch])


def train_rate(arch: str, mode: str, seconds: float) -> dict:
    """Images/s of the product's train step under ``mode`` (fp32 | bf16 | bf16+compile)."""
    p, options = protocol_for(arch)
    p = dataclasses.replace(p, precision="fp32" if mode == "fp32" else "bf16")  # train_step's autocast
    fmt = torch.channels_last if p.channels_last else torch.contiguous_format
    model = build_model(arch, options=options).to(DEVICE, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    step_model = torch.compile(model) if mode.endswith("compile") else model
    batch = batches(8 * p.batch_size, p.batch_size, p.channels_last)
    torch.cuda.reset_peak_memory_stats() if DEVICE.type == "cuda" else None
    t0 = time.perf_counter()
    for i in range(5):  # warm-up (compilation, cuDNN autotuning)
        train_step(step_model, opt, *batch(i), p)
    sync()
    warm = time.perf_counter() - t0
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            train_step(step_model, opt, *batch(steps), p)
            steps += 1
        sync()
    rate = steps * p.batch_size / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if DEVICE.type == "cuda" else float("nan")
    return {"arch": arch, "mode": mode, "img_s": rate, "warmup_s": warm, "peak_mib": peak,
            "options": options, "batch": p.batch_size}


def _concurrent_worker(arch: str, mode: str, seconds: float, start, out, profile: str) -> None:
    global PROFILE
    PROFILE = profile  # a spawned process starts from the module's defaults
    torch.set_num_threads(2 if DEVICE.type == "cuda" else 1)
    train_rate(arch, mode, 1.0)  # initialize CUDA and the kernels before the common start
    start.wait()
    out.put(train_rate(arch, mode, seconds)["img_s"])


def concurrent(arch: str, mode: str, k: int, seconds: float) -> float:
    """Total images/s of ``k`` trial processes sharing the GPU, started together."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(k + 1), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_worker, args=(arch, mode, seconds, start, out, PROFILE))
             for _ in range(k)]
    for proc in procs:
        proc.start()
    start.wait()
    total = sum(out.get(timeout=600) for _ in range(k))
    for proc in procs:
        proc.join()
    return total


def packed(arch: str, k: int, seconds: float) -> float:
    """Images/s (all K models together) of K copies packed with torch.func and vmap, fp32
    (K=1 is the reference: one model through the same functional path)."""
    from torch.func import functional_call, grad_and_value, replace_all_batch_norm_modules_, \
        stack_module_state, vmap

    p, options = protocol_for(arch)
    models = [build_model(arch, options=options).to(DEVICE) for _ in range(k)]
    for model in models:  # vmap cannot update running statistics in place: batch stats only
        replace_all_batch_norm_modules_(model)
    params, buffers = stack_module_state(models)
    base = models[0].to("meta")

    def loss(prm, buf, x, y):  # fp32: autocast's casts have no batching rule in backward
        return deep_supervision_loss(functional_call(base, (prm, buf), (x,)), y, 0.3)

    step = vmap(grad_and_value(loss), in_dims=(0, 0, None, None))
    batch = batches(8 * p.batch_size, p.batch_size, False)
    for i in range(3):
        grads, _ = step(params, buffers, *batch(i))
    sync()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        grads, _ = step(params, buffers, *batch(steps))
        with torch.no_grad():  # plain SGD: the update is not what is measured
            for name in params:
                params[name].sub_(0.01 * grads[name])
        steps += 1
        sync()
    return steps * p.batch_size * k / (time.perf_counter() - t0)


def real_trial(arch: str, epochs: int, n_train: int) -> dict:
    """One trial through run_trial on synthetic data: ``n_train`` training images (CIFAR-10's
    45k by default), the profile's validation size."""
    p, options = protocol_for(arch)
    p = dataclasses.replace(p, epochs=epochs)
    n_val, n_test = p.val_size, min(10000, n_train)
    make = lambda n: ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8),
                              torch.randint(0, 10, (n,)))
    splits = Splits(make(n_train), make(n_val), make(n_test), 10)
    from initsearch.recipe import BASELINES

    config = TrialConfig(0, BASELINES["pytorch_default"].to_dict(), p.to_dict())
    t0 = time.perf_counter()
    metrics = list(run_trial(config, splits, lambda: build_model(arch, options=options)))
    wall = time.perf_counter() - t0
    train = sum(m["train_seconds"] for m in metrics)
    return {"wall_s": wall, "train_s_per_epoch": train / epochs,
            "epoch_s": (wall - metrics[0].get("init_seconds", 0.0)) / epochs,
            "img_s": n_train * epochs / train, "p": p}


def halving_epochs(p, budget: int = 50, baselines: int = 9) -> float:
    """Trial-epochs of a search: baselines at full length, candidates under successive halving
    (a fraction 1/eta**r reaches rung r, the rungs at min_resource * eta**r epochs)."""
    eta, first = p.pruner.get("reduction_factor", 3), p.pruner.get("min_resource", 1)
    rungs = []
    r = first
    while r < p.epochs:
        rungs.append(r)
        r *= eta
    stops = rungs + [p.epochs]
    per = sum(stop * (eta ** -i - (eta ** -(i + 1) if i + 1 < len(stops) else 0))
              for i, stop in enumerate(stops))
    return baselines * p.epochs + (budget - baselines) * per


CONVENTIONAL = r'''
import json, sys, time, torch, torchvision
from torchvision import transforms as T
t0 = time.perf_counter()
sys.path.insert(0, sys.argv[3])
from initsearch.archs import build_model
root, epochs, device, workers = sys.argv[1], int(sys.argv[2]), sys.argv[4], int(sys.argv[5])
options = json.loads(sys.argv[6])
tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                T.Normalize((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))])
data = torchvision.datasets.ImageFolder(root, tf)
loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True, num_workers=workers,
                                     pin_memory=device == "cuda", drop_last=True,
                                     persistent_workers=workers > 0)
model = build_model("resnet_ds", options=options).to(device)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
t1 = time.perf_counter()
for _ in range(epochs):
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        main, aux = out if isinstance(out, tuple) else (out, ())
        loss = torch.nn.functional.cross_entropy(main, y) + sum(
            0.3 * torch.nn.functional.cross_entropy(a, y) for a in aux)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
torch.cuda.synchronize() if device == "cuda" else None
print(time.perf_counter() - t1, len(data) * epochs)
'''


def conventional(n_images: int, epochs: int, workers: int) -> dict:
    """A fresh process per trial (as a conventional search runs each trial), JPEG files decoded
    by ``workers`` DataLoader workers, fp32, resnet_ds at the profile's size; wall from process
    start to the end of training."""
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="cifar-jpeg-"))
    gen = torch.Generator().manual_seed(0)
    for i in range(n_images):
        folder = root / f"class{i % 10}"
        folder.mkdir(exist_ok=True)
        pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    options = json.dumps(protocol_for("resnet_ds")[1])
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CONVENTIONAL, str(root), str(epochs),
                               str(Path(__file__).resolve().parents[1]), DEVICE.type,
                               str(workers), options], capture_output=True, text=True, check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wall = time.perf_counter() - t0
    train_s, images = done.stdout.split()
    return {"wall_s": wall, "train_s": float(train_s), "img_s": float(images) / float(train_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per row")
    ap.add_argument("--only", nargs="*", default=list(ARCHS))
    ap.add_argument("--compile", nargs="*", default=["resnet_ds", "vit"],
                    help="archs to also time with torch.compile (each costs a compilation)")
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--profile", default="gpu", help="the protocol whose sizes are measured")
    ap.add_argument("--concurrency", nargs="*", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--packed", nargs="*", type=int, default=[1, 4, 8])
    ap.add_argument("--train-images", type=int, default=45000, help="the real trial's training set")
    ap.add_argument("--conventional-images", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=8, help="the conventional DataLoader's workers")
    args = ap.parse_args()
    global PROFILE
    PROFILE = args.profile
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {os.cpu_count()} CPUs", flush=True)
    out: dict = {"device": name, "torch": torch.__version__}

    print("\n| arch | options | batch | fp32 img/s | bf16 img/s | bf16+compile img/s | compile s |"
          " peak MiB (fp32) |\n|---|---|---|---|---|---|---|---|", flush=True)
    for arch in args.only:
        rows = {m: train_rate(arch, m, args.seconds) for m in ("fp32", "bf16")}
        if arch in args.compile:
            rows["bf16+compile"] = train_rate(arch, "bf16+compile", args.seconds)
        comp = rows.get("bf16+compile")
        compiled = (f"{comp['img_s']:,.0f} | {comp['warmup_s']:.0f}" if comp else "- | -")
        print(f"| {arch} | {rows['fp32']['options']} | {rows['fp32']['batch']} | "
              f"{rows['fp32']['img_s']:,.0f} | {rows['bf16']['img_s']:,.0f} | {compiled} | "
              f"{rows['fp32']['peak_mib']:,.0f} |", flush=True)
        out[arch] = rows

    arch = "resnet_ds"
    print(f"\n{arch}, concurrent trial processes on the GPU (bf16 eager), total img/s:", flush=True)
    out["concurrent"] = {}
    for k in args.concurrency:
        out["concurrent"][k] = concurrent(arch, "bf16", k, args.seconds)
        print(f"  K={k}: {out['concurrent'][k]:,.0f}", flush=True)
    print(f"\n{arch}, K models packed with torch.func.vmap (fp32), total img/s:", flush=True)
    out["packed"] = {}
    for k in args.packed:
        try:
            out["packed"][k] = packed(arch, k, args.seconds)
            print(f"  K={k}: {out['packed'][k]:,.0f}", flush=True)
        except Exception as exc:  # vmap may not cover every op: say so, keep going
            print(f"  K={k}: failed ({type(exc).__name__}: {str(exc).splitlines()[0][:150]})")

    trial = real_trial(arch, epochs=2, n_train=args.train_images)
    trial.pop("p")
    p = protocol_for(arch)[0]  # the full protocol (the timed trial ran 2 of its epochs)
    # the race's first round: the default, the 8 other resnet_ds baselines and 3 candidates
    confirm_epochs = 12 * p.confirm_seeds * (p.confirm_epochs or p.epochs)
    search_epochs = halving_epochs(p)
    k = max(1, round(1 / p.gpus_per_trial)) if p.gpus_per_trial else 1
    speedup = (out["concurrent"][k] / out["concurrent"][1]
               if {1, k} <= out["concurrent"].keys() else 1.0)
    per_epoch = trial["epoch_s"]
    print(f"\none real trial (run_trial, precision {p.precision} and compile {p.compile} as the "
          f"{PROFILE} profile sets them, {args.train_images:,} train images): "
          f"{per_epoch:.1f} s/epoch incl. eval, {trial['img_s']:,.0f} train img/s", flush=True)
    print(f"projected 50-trial {arch} search on the {PROFILE} profile: {search_epochs:.0f} trial-epochs "
          f"x {per_epoch:.1f} s / {speedup:.2f} (K={k} concurrent, measured above at bf16) = "
          f"{search_epochs * per_epoch / speedup / 60:.0f} min; the race's first round (12 recipes x "
          f"{p.confirm_seeds} seeds x {p.confirm_epochs or p.epochs} epochs = {confirm_epochs} "
          f"trial-epochs, later rounds one seed per survivor): "
          f"{confirm_epochs * per_epoch / speedup / 60:.0f} min", flush=True)
    out["trial"] = trial

    n = args.conventional_images
    conv = conventional(n, 3, args.workers)
    ours = train_rate(arch, "fp32", args.seconds)["img_s"]
    print(f"\nconventional pipeline (fresh process, ImageFolder JPEGs, DataLoader {args.workers} "
          f"workers, fp32): {conv['img_s']:,.0f} train img/s, {conv['wall_s']:.1f} s wall for 3 "
          f"epochs of {n:,} images "
          f"(training alone {conv['train_s']:.1f} s); the product's loop in the same run: "
          f"{ours:,.0f} img/s = {ours / conv['img_s']:.1f}x", flush=True)
    out["conventional"], out["ours_fp32"] = conv, ours
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
