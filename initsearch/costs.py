"""What each init step costs on a trial protocol: seconds, forward/backward passes, and that time
as a fraction of one training epoch of the same protocol (so a trial's init can be sized
against its training). ``initsearch schemes --measure`` measures and keeps the figures in the
cache folder; plain ``initsearch schemes`` shows the last measurement on this machine.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from initsearch.data import cache_root, load_splits
from initsearch.errors import UsageError
from initsearch.plan import resolve_model
from initsearch.protocol import default_profile, machine
from initsearch.recipe import Recipe, RoleInit, StepInit
from initsearch.schemes import STEPS
from initsearch.trial import TrialConfig, run_trial

#: The step settings measured: every step at its defaults (as a trial runs it).
MEASURED = tuple(StepInit(name) for name in STEPS)


def measure_costs(profile: str | None = None, data_dir: str | None = None, arch: str = "resnet_ds",
                  arch_options: dict | None = None, steps: tuple[StepInit, ...] = MEASURED,
                  seed: int = 0) -> dict:
    """Apply He + each step once to the profile's model on its real training split, with the
    profile's threads and device; time one training epoch of plain He for reference. A step
    that refuses the model (T-Fixup without attention, Fixup without branch scalars, ...) is
    listed with its reason instead of a cost."""
    protocol, model = resolve_model(arch, arch_options=arch_options,
                                    profile=profile or default_profile())
    protocol = dataclasses.replace(protocol, epochs=1, seeds=(seed,))
    splits = load_splits("cifar10", data_dir, **protocol.split_sizes())
    torch.set_num_threads(protocol.threads_per_trial)
    he = {r: RoleInit("he") for r in ("stem", "conv", "branch_last", "shortcut", "classifier")}
    rows = []
    for step in steps:
        recipe = Recipe(he, step.label, steps=(step,))
        config = TrialConfig(0, recipe.to_dict(), protocol.to_dict())
        try:
            first = next(run_trial(config, splits, model.factory))  # applies the recipe, trains one epoch
        except UsageError as exc:
            rows.append({"step": step.label, "data": step.needs_data, "refused": str(exc)})
            continue
        rows.append({"step": step.label, "data": step.needs_data,
                     "seconds": first["init_seconds"], "passes": first["init_passes"],
                     "epoch_seconds": first["train_seconds"]})
    ran = [r for r in rows if "refused" not in r]
    if not ran:
        raise UsageError(f"no step of {', '.join(s.label for s in steps)} applies to {arch}; "
                         "pass an arch they apply to")
    epoch = sorted(r["epoch_seconds"] for r in ran)[len(ran) // 2]  # median over the runs
    for r in ran:
        r["epochs"] = r["seconds"] / epoch
    costs = {"profile": protocol.name, "arch": arch, "arch_options": model.options,
             "device": protocol.device, "threads": protocol.threads_per_trial,
             "train_size": protocol.train_size, "batch_size": protocol.batch_size,
             "epoch_seconds": epoch, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
             "rows": rows}
    _stored(protocol.name).parent.mkdir(parents=True, exist_ok=True)
    _stored(protocol.name).write_text(json.dumps(costs, indent=1))
    return costs


def last_costs(profile: str | None = None) -> dict | None:
    """The last measurement of ``profile`` (default: this machine's) on this machine, if any."""
    path = _stored(profile or default_profile())
    return json.loads(path.read_text()) if path.exists() else None


def _stored(profile: str) -> Path:
    return cache_root() / f"scheme-costs-{profile}.json"


def format_costs(costs: dict) -> str:
    head = (f"init cost on profile {costs['profile']} ({costs['arch']} {costs['arch_options']}, "
            f"{costs['train_size']} images, {costs['threads']} thread(s), {costs['machine']}, "
            f"{costs['date']}); "
            f"one training epoch = {costs['epoch_seconds']:.2f} s")
    lines = [head, f"{'step':26s} {'kind':6s} {'seconds':>8s} {'passes':>7s} {'x epoch':>8s}"]
    for r in costs["rows"]:
        kind = f"{r['step']:26s} {'data' if r['data'] else 'static':6s}"
        lines.append(f"{kind}  does not apply: {r['refused']}" if "refused" in r else
                     f"{kind} {r['seconds']:8.2f} {r['passes']:7d} {r['epochs']:8.3f}")
    lines.append("passes = forward + backward passes over a batch (a double backward counts 2)")
    return "\n".join(lines)
