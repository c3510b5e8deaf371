"""Benchmark: timm's zoo read and initialised without overrides, one model per family.

For every model module of the installed timm (``timm.list_modules()``: a family), the model with
the fewest parameters (counted on the meta device) is built with ``pretrained=False`` and
``num_classes=10`` at the smallest input it accepts among 32, 64, ..., 224, 240 and 256 pixels
(``img_size`` passed where the family takes it). Then ``discover_roles`` runs at that input
(timed; "read from" says whether the graph was traced symbolically or on an example batch, or
names were read), and every published baseline is applied to a copy -- data steps on 16 random
images at that size, GradInit cut to 2 iterations (what is checked is that it runs, not its
budget) -- and the copy's output on 2 images must be finite. Each baseline is ``ok``, ``refused`` (its one-line reason, e.g. a
missing role) or ``FAILS`` (it applied and gave a non-finite output, or raised something other
than a usage error).

    python benchmarks/timm_zoo.py [--families beit,cait] [--picks FILE] [--markdown FILE]
                                  [--max-params 60e6]

Baselines are applied only to models up to ``--max-params`` parameters (default 60 M: a 400 M
ViT's GradInit double backward takes tens of minutes on 2 cores); larger ones list discovery
alone.

``--picks FILE`` keeps the family -> model choice (JSON; written when absent): choosing builds
all ~1,400 models on the meta device, about 4 minutes.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from common import machine

from initsearch.errors import UsageError
from initsearch.recipe import BASELINES, StepInit, why_not
from initsearch.roles import discover_roles
from initsearch.schemes.base import InitData

SIZES = (32, 64, 96, 128, 160, 224, 240, 256)


def smallest_model(family: str) -> str | None:
    """The family's model with the fewest parameters (built on the meta device: no memory)."""
    import timm

    best = None
    for name in timm.list_models(module=family):
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False, num_classes=10)
        except Exception:  # noqa: BLE001 -- a model that needs extra arguments is skipped
            continue
        n = sum(p.numel() for p in model.parameters())
        if best is None or n < best[1]:
            best = (name, n)
    return best and best[0]


def build(name: str) -> tuple[torch.nn.Module, int]:
    """The model at the smallest input size it accepts, and that size."""
    import timm

    for size in SIZES:
        for kwargs in ({"img_size": size}, {}):
            try:
                model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
                with torch.no_grad():
                    model.eval()(torch.randn(2, 3, size, size))
                return model.train(), size
            except Exception:  # noqa: BLE001 -- too small, or no img_size argument: try the next
                continue
    raise RuntimeError(f"{name} runs at none of {SIZES}")


def _read_from(source: str) -> str:
    return "graph on example" if source.startswith("graph (traced on") else source.split()[0]


def check_baseline(name: str, model: torch.nn.Module, roles, size: int) -> str:
    """``ok``, ``refused: why`` or ``FAILS: why`` for one baseline on a copy of ``model``."""
    recipe = BASELINES[name]
    recipe = replace(recipe, steps=tuple(StepInit(s.name, {"iters": 2, "batch_size": 4})
                                         if s.name == "gradinit" else s for s in recipe.steps))
    try:
        why = why_not(name, model, roles=roles, input_shape=(3, size, size))
        if why:
            return f"refused: {why}"
        trial = copy.deepcopy(model)
        x = torch.randn(16, 3, size, size)
        recipe.apply(trial, data=InitData(x, torch.randint(0, 10, (16,))), seed=0, roles=roles)
        with torch.no_grad():
            out = trial.eval()(x[:2])
        if not torch.isfinite(out).all():
            return "FAILS: non-finite output"
        return "ok"
    except UsageError as exc:
        return f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001 -- what a user would meet
        return f"FAILS: {type(exc).__name__}: {str(exc)[:120]}"


def main() -> None:
    import timm

    ap = argparse.ArgumentParser()
    ap.add_argument("--families", help="comma-separated timm modules (default: all)")
    ap.add_argument("--picks", help="JSON file of the family -> model choice (read, or written)")
    ap.add_argument("--markdown", help="also write the table here")
    ap.add_argument("--max-params", type=float, default=60e6, help="apply baselines up to this size")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    families = args.families.split(",") if args.families else timm.list_modules()
    picks = json.loads(Path(args.picks).read_text()) if args.picks and Path(args.picks).exists() else {}
    lines = [f"machine: {machine()}; timm {timm.__version__}; 1 thread", "",
             "| family | model | input | discover s | read from | topology | units | blocks | baselines ok | refused | fails |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for family in families:
        name = picks[family] if family in picks else picks.setdefault(family, smallest_model(family))
        if name is None:
            row = f"| {family} | - | - | - | - | - | - | - | - | - | no model builds without arguments |"
        else:
            try:
                model, size = build(name)
                t0 = time.perf_counter()
                roles = discover_roles(model, input_shape=(3, size, size))
                took = time.perf_counter() - t0
                params = sum(p.numel() for p in model.parameters())
                verdicts = ({b: check_baseline(b, model, roles, size) for b in BASELINES}
                            if params <= args.max_params else {})
                ok = [b for b, v in verdicts.items() if v == "ok"]
                refused = [f"{b} ({v[9:70]})" for b, v in verdicts.items() if v.startswith("refused")]
                fails = [f"{b} ({v[7:90]})" for b, v in verdicts.items() if v.startswith("FAILS")]
                skipped = "" if verdicts else f"not applied ({params / 1e6:.0f} M params)"
                row = (f"| {family} | {name} | {size} | {took:.2f} | {_read_from(roles.source)} | "
                       f"{roles.topology} | {len(roles)} | "
                       f"{len(roles.blocks)} | {', '.join(ok) or skipped} | {'; '.join(refused)} | {'; '.join(fails)} |")
            except UsageError as exc:
                row = f"| {family} | {name} | - | - | - | - | - | - | - | - | NOT READ: {str(exc)[:200]} |"
            except Exception as exc:  # noqa: BLE001
                row = f"| {family} | {name} | - | - | - | - | - | - | - | - | ERROR {type(exc).__name__}: {str(exc)[:150]} |"
        lines.append(row)
        print(row, flush=True)
    if args.picks:
        Path(args.picks).write_text(json.dumps(picks, indent=1) + "\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
