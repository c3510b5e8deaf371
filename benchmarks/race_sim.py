"""Benchmark: error rates of the racing confirmation by simulation, against the fixed design.

Each simulated confirmation has ``--entries`` recipes, PyTorch's default among them, as a
``resnet_ds`` race has (the default, 8 baselines, 3 candidates). Recipe ``i`` on seed ``s``
scores ``mu_i + b_s + e_is``: ``b_s`` is shared by every recipe on that seed (common random
numbers: what pairing removes), ``e_is`` is the recipe's own noise (``--noise``; 1.5 pp gives a
paired difference a seed-to-seed spread of 2.1 pp, the order measured on the ``cpu`` profile).
Scenarios:

* ``null``: every recipe equal -- any recommendation other than the default is false;
* ``+delta`` and ``+3 delta``: one recipe better by that much -- power is recommending it;
* ``dead default``: the default stays at chance, one recipe trains on every seed 10 pp above
  it, the others are as good but leave a seed at chance with probability 0.3;
* ``cpu, 6 epochs``: the means measured for the 9 ``resnet_ds`` baselines at the ``cpu`` race's
  fidelity (BENCHMARKS.md: the default 39.3 %, LION-DG +0.3, ZerO -6.1, ...) and 3 candidates
  level with the default -- what the main job races; nothing is 3 x delta better.

The race (:func:`initsearch.race.race`) is compared with the fixed design it replaces: 3 seeds,
each recipe tested against the default (paired t, Holm at 0.05), the best mean among the
significant ones recommended. Printed: the share of races that recommend a non-default recipe
(false under ``null``), that recommend the better one, the verdict kinds, and seeds per recipe.

    python benchmarks/race_sim.py [--races 4000] [--entries 12] [--noise 0.015] [--delta 0.01] \
        [--max-seeds 10]
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np

from common import machine

from initsearch.race import RaceRules, race
from initsearch.stats import holm, paired

REFERENCE = "default"
#: confirm-split means (%) of the resnet_ds baselines at 6 epochs (benchmarks/confirm_fidelity.py):
#: the default, LION-DG, emergence, LSUV, He, LSUV+LION-DG, RISOTTO, GradInit, ZerO; then 3
#: candidates level with the default
CPU_6_EPOCHS = [39.33, 39.68, 38.81, 38.28, 37.93, 37.64, 37.38, 34.41, 33.23, 39.33, 39.33, 39.33]


def scores(mu: np.ndarray, seeds: int, noise: float, rng: np.random.Generator,
           dead: np.ndarray | None = None, chance: float = 0.1) -> np.ndarray:
    """``(entries, seeds)`` accuracies; ``dead[i]``: probability recipe i stays at chance on a seed."""
    acc = mu[:, None] + rng.normal(0, 0.02, seeds)[None, :] + rng.normal(0, noise, (len(mu), seeds))
    if dead is not None:
        acc = np.where(rng.random(acc.shape) < dead[:, None], chance, acc)
    return acc


def run_race(acc: np.ndarray, names: list[str], rules: RaceRules) -> tuple[str, str | None, int]:
    """The race's verdict on these scores: (kind, recommended or None, jobs trained). The race
    reads only the seeds it asks for, so handing it every seed at once gives the same verdict
    as training round by round; an entry dropped at a look trained that look's seeds."""
    table = {m: {s: float(acc[i, s]) for s in range(acc.shape[1])} for i, m in enumerate(names)}
    out = race(names, REFERENCE, table, list(range(acc.shape[1])), rules)
    jobs = sum(out.looks[look - 1].seeds for look, _ in out.dropped.values())
    jobs += out.seeds * len(out.survivors)
    if out.stop == "winner" or (out.stop == "budget" and REFERENCE not in out.survivors):
        return out.stop, out.leader, jobs
    return out.stop, None, jobs


def fixed_design(acc: np.ndarray, names: list[str], chance: float) -> tuple[str, str | None, int]:
    """Today's design: 3 seeds, each recipe vs the default, Holm at 0.05, the best significant mean."""
    a = acc[:, :3]
    ref = names.index(REFERENCE)
    others = [i for i in range(len(names)) if i != ref]
    family = holm([paired(list(a[i]), list(a[ref])) for i in others])
    sure = [i for i, c in zip(others, family) if c.better() and a[i].mean() > chance]
    if not sure:
        return "no difference", None, a.size
    return "recommend", names[max(sure, key=lambda i: a[i].mean())], a.size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--races", type=int, default=4000)
    ap.add_argument("--entries", type=int, default=12)
    ap.add_argument("--noise", type=float, default=0.015)
    ap.add_argument("--delta", type=float, default=0.01)
    ap.add_argument("--max-seeds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    names = [REFERENCE] + [f"r{i}" for i in range(1, args.entries)]
    chance = 0.112
    rules = RaceRules(max_seeds=args.max_seeds, min_effect=args.delta, chance=chance)
    base = np.full(args.entries, 0.45)
    scenarios = {
        "null": (base, None, None),
        "+delta": (base + np.eye(args.entries)[1] * args.delta, None, "r1"),
        "+3 delta": (base + np.eye(args.entries)[1] * 3 * args.delta, None, "r1"),
        "dead default": (np.where(np.arange(args.entries) == 0, chance, 0.45),
                         np.where(np.arange(args.entries) > 1, 0.3, 0.0), "r1"),
    }
    if args.entries == 12:
        scenarios["cpu, 6 epochs"] = (np.array(CPU_6_EPOCHS) / 100, None, None)
    t0 = time.perf_counter()
    print(f"{machine()}; {args.races} races per row, {args.entries} recipes, noise "
          f"{100 * args.noise:.1f} pp per recipe (+2 pp shared per seed), delta "
          f"{100 * args.delta:.1f} pp, race {rules.min_seeds}..{rules.max_seeds} seeds at "
          f"{rules.level:.4f} per look\n")
    print("| scenario | design | recommends a non-default | recommends the better one | "
          "verdicts | seeds per recipe (mean) |")
    print("|---|---|---|---|---|---|")
    for label, (mu, dead, better) in scenarios.items():
        for design in ("fixed 3 seeds", "race"):
            kinds, wrong, right, jobs = collections.Counter(), 0, 0, 0
            for _ in range(args.races):
                acc = scores(mu, args.max_seeds, args.noise, rng, dead, chance=0.1)
                kind, chosen, used = (fixed_design(acc, names, chance) if design.startswith("fixed")
                                      else run_race(acc, names, rules))
                kinds[kind] += 1
                jobs += used
                wrong += chosen is not None and chosen != REFERENCE and chosen != better
                right += chosen is not None and chosen == better
            n = args.races
            verdicts = ", ".join(f"{k} {100 * v / n:.1f}%" for k, v in kinds.most_common())
            print(f"| {label} | {design} | {100 * (wrong + right) / n:.1f}% (wrong one "
                  f"{100 * wrong / n:.1f}%) | {'-' if better is None else f'{100 * right / n:.1f}%'} "
                  f"| {verdicts} | {jobs / n / args.entries:.2f} |", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
