"""Benchmark: how long must a confirmation train, and on how many images must it score?

Two questions the ``cpu`` profile's confirmation keys answer by measurement (issue 17):

* **fidelity** (``confirm_epochs``): every baseline that applies to the profile's ResNet-DS
  trains for each of ``--epochs`` (cosine to zero over that many epochs, as a trial does) on
  the profile's training images; the ranking of the baselines' mean held-out accuracy at each
  length is compared with the ranking at the longest (Kendall tau, scipy). A confirmation
  length is good enough when it ranks the baselines as training 4x longer does.
* **confirm split size** (``confirm_size``): two recipes' predictions on the same held-out
  images disagree on a fraction ``q`` of them; the image-sampling standard error of their
  paired accuracy difference on ``n`` images is ``sqrt((q - d^2) / n)`` (``d`` the difference).
  The table gives ``q`` per pair and the ``n`` that brings the error to 0.7 pp; evaluation's
  cost per 1,000 images is timed on the same model.

The held-out images are carved from CIFAR-10's training set (never its test set), disjoint
from the training images. One process per seed, one thread each, as the search runs trials.

    python benchmarks/confirm_fidelity.py --data ../shared/data/cifar10 [--epochs 4 6 24] \
        [--seeds 0 1] [--heldout 6000] [--json fidelity.json] [--reuse earlier.json]

``--reuse`` reads the runs of an earlier ``--json`` and trains only the (seed, epochs) pairs it
lacks (the same recipe, seed and length train bit-identically on the same machine).
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import multiprocessing as mp
import statistics
import time

import torch
from scipy import stats

from common import machine

from initsearch.archs import build_model
from initsearch.data import Augment, ImageSet, load_cifar10, standardize
from initsearch.protocol import load_protocol
from initsearch.schemes import InitData
from initsearch.space import load_space
from initsearch.trial import deep_supervision_loss, lr_factors, make_optimizer, train_step


def _carve(data_dir: str, train_size: int, heldout: int) -> tuple[ImageSet, ImageSet]:
    train, _ = load_cifar10(data_dir)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(12345))
    return train.take(order[heldout:heldout + train_size]), train.take(order[:heldout])


def _run_seed(seed: int, data_dir: str, epochs_list: list[int], heldout: int) -> list[dict]:
    if not epochs_list:
        return []
    import dataclasses

    torch.set_num_threads(1)
    p, opts = load_protocol("cpu").for_arch("resnet_ds")
    p = dataclasses.replace(p, precision="fp32")
    train, held = _carve(data_dir, p.train_size, heldout)
    model_fn = functools.partial(build_model, "resnet_ds", options=opts)
    baselines = load_space("resnet_ds").bind(model_fn()).baselines()
    prepare = functools.partial(standardize, channels_last=p.channels_last)
    steps = len(train) // p.batch_size
    out = []
    for epochs in epochs_list:
        pe = dataclasses.replace(p, epochs=epochs)
        factors = lr_factors(pe, steps)
        for name, recipe in baselines.items():
            torch.manual_seed(seed)
            model = model_fn().to(memory_format=torch.channels_last)
            init = InitData(train.x, train.y, seed=seed, prepare=prepare, loss=functools.partial(
                deep_supervision_loss, aux_weight=p.aux_loss_weight))
            plan = recipe.apply(model, data=init, seed=seed).plan
            opt = make_optimizer(model, plan, p.optimizer)
            base = [g["lr"] for g in opt.param_groups]
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            for e in range(epochs):
                model.train()
                aug = Augment.draw(len(train), pad=p.crop_padding, flip=p.flip, generator=gen)
                order = torch.randperm(len(train), generator=gen)
                for i in range(steps):
                    for g, lr in zip(opt.param_groups, base):
                        g["lr"] = lr * factors[e * steps + i]
                    idx = order[i * p.batch_size:(i + 1) * p.batch_size]
                    train_step(model, opt, aug.take(idx)(prepare(train.x[idx])), train.y[idx], pe)
            t1 = time.perf_counter()
            model.eval()
            with torch.inference_mode():
                pred = torch.cat([model(prepare(held.x[i:i + 128])).argmax(1)
                                  for i in range(0, len(held), 128)])
            t2 = time.perf_counter()
            correct = (pred == held.y)
            out.append({"seed": seed, "epochs": epochs, "recipe": name,
                        "acc": float(correct.float().mean()), "train_seconds": t1 - t0,
                        "eval_seconds_per_1000": 1000 * (t2 - t1) / len(held),
                        "correct": correct.to(torch.uint8).tolist()})
            print(f"seed {seed} epochs {epochs:>2} {name:<14} {100 * out[-1]['acc']:.2f}% "
                  f"({t1 - t0:.0f} s)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--epochs", type=int, nargs="+", default=[4, 6, 24])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--heldout", type=int, default=6000)
    ap.add_argument("--json")
    ap.add_argument("--reuse", help="an earlier --json whose runs are kept, not trained again")
    args = ap.parse_args()
    t0 = time.perf_counter()
    earlier = json.load(open(args.reuse)) if args.reuse else []
    have = {(x["seed"], x["epochs"]) for x in earlier}
    todo = [(s, args.data, [e for e in args.epochs if (s, e) not in have], args.heldout)
            for s in args.seeds]
    with mp.get_context("spawn").Pool(len(args.seeds)) as pool:
        runs = list(itertools.chain(*pool.starmap(_run_seed, todo)))
    runs += [x for x in earlier if x["seed"] in args.seeds and x["epochs"] in args.epochs]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f)
    print(f"\n{machine()}; {len(args.seeds)} seeds, held-out {args.heldout} images, "
          f"{time.perf_counter() - t0:.0f} s")
    longest = max(args.epochs)
    mean = {(e, r): statistics.fmean(x["acc"] for x in runs if x["epochs"] == e and x["recipe"] == r)
            for e in args.epochs for r in {x["recipe"] for x in runs}}
    recipes = sorted({r for _, r in mean}, key=lambda r: -mean[(longest, r)])
    print("\nheld-out accuracy %, mean over seeds (rows sorted by the longest run)")
    print("recipe".ljust(15) + "".join(f"{e:>4} ep" .rjust(9) for e in args.epochs))
    for r in recipes:
        print(r.ljust(15) + "".join(f"{100 * mean[(e, r)]:9.2f}" for e in args.epochs))
    print("\nKendall tau of the baselines' ranking against the longest run")
    for e in args.epochs[:-1]:
        tau = stats.kendalltau([mean[(e, r)] for r in recipes], [mean[(longest, r)] for r in recipes])
        per_seed = []
        for s in args.seeds:
            acc = {(x["epochs"], x["recipe"]): x["acc"] for x in runs if x["seed"] == s}
            per_seed.append(stats.kendalltau([acc[(e, r)] for r in recipes],
                                             [acc[(longest, r)] for r in recipes]).statistic)
        print(f"  {e:>2} epochs vs {longest}: tau {tau.statistic:+.2f} (p {tau.pvalue:.3f}); "
              f"per seed {', '.join(f'{t:+.2f}' for t in per_seed)}")
    print("\npaired image-sampling error: disagreement q of two recipes' predictions (same seed)")
    for e in args.epochs:
        qs = []
        for s in args.seeds:
            rows = [x for x in runs if x["seed"] == s and x["epochs"] == e]
            for a, b in itertools.combinations(rows, 2):
                ca, cb = torch.tensor(a["correct"]), torch.tensor(b["correct"])
                q = float((ca != cb).float().mean())
                d = a["acc"] - b["acc"]
                qs.append(q - d * d)
        q = statistics.median(qs)
        need = math.ceil(q / 0.007 ** 2)
        print(f"  {e:>2} epochs: median q-d^2 {q:.3f} (max {max(qs):.3f}); SE on 1,000 images "
              f"{100 * math.sqrt(q / 1000):.2f} pp; images for 0.7 pp: {need} "
              f"(worst pair {math.ceil(max(qs) / 0.007 ** 2)})")
    ev = statistics.median(x["eval_seconds_per_1000"] for x in runs)
    tr = statistics.median(x["train_seconds"] / x["epochs"] for x in runs)
    print(f"\nevaluation {ev:.2f} s per 1,000 images; training {tr:.1f} s per epoch (median)")


if __name__ == "__main__":
    main()
