"""The ``initsearch`` command line: run a search, list what exists, open the MLflow UI.

Usage errors print one line, ``initsearch: error: <problem>; <fix>``, and exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from initsearch.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="initsearch", description="Search weight initializations like hyperparameters.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="search init recipes for an architecture")
    run.add_argument("--arch", help="built-in architecture (initsearch archs); default resnet_ds")
    run.add_argument("--model", metavar="MODULE:FUNCTION",
                     help="your own model factory instead of --arch")
    run.add_argument("--arch-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="architecture option, repeatable (e.g. depth=14, norm=none)")
    run.add_argument("--budget", type=int, default=50, help="trials in the study, baselines included")
    run.add_argument("--dataset", default="cifar10")
    run.add_argument("--data", metavar="DIR", help="dataset directory (env INITSEARCH_DATA)")
    run.add_argument("--profile", help="trial protocol (initsearch profiles); default gpu or cpu")
    run.add_argument("--space", help="search space (initsearch spaces); default <arch> or default")
    run.add_argument("--backend", choices=("ray", "local"), default="ray")
    run.add_argument("--study", help="study name (default <arch>-<dataset>-<time>)")
    run.add_argument("--resume", action="store_true", help="continue --study (or the newest one)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--tracking-uri", help="MLflow store (default sqlite in ./mlruns)")
    run.add_argument("--out", default=None, help="best recipe file (default best-<study>.yaml)")
    run.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, fractions allowed")
    run.add_argument("--home", help="folder holding mlruns/ (env INITSEARCH_HOME, default .)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub.add_parser("archs", help="list built-in architectures")
    sub.add_parser("spaces", help="list search spaces")
    schemes = sub.add_parser("schemes", help="list init schemes and steps (and measure their cost)")
    schemes.add_argument("--measure", action="store_true",
                         help="time each data-dependent step on a profile's model and real data")
    schemes.add_argument("--data", metavar="DIR", help="dataset directory (env INITSEARCH_DATA)")
    schemes.add_argument("--profile", help="trial protocol to measure on; default gpu or cpu")
    sub.add_parser("profiles", help="list trial protocols")
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 on the project's store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--home", help="folder holding mlruns/ (env INITSEARCH_HOME, default .)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return {"run": _run, "archs": _archs, "spaces": _spaces, "schemes": _schemes,
                "profiles": _profiles, "ui": _ui}[args.command](args)
    except UsageError as exc:
        print(f"initsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("initsearch: interrupted; completed trials are recorded, continue with --resume",
              file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from initsearch.search import search

    if args.model and args.arch:
        raise UsageError("pass either --arch or --model, not both")
    result = search(args.model or args.arch or "resnet_ds", dataset=args.dataset, data_dir=args.data,
                    budget=args.budget, profile=args.profile, space=args.space,
                    arch_options=key_values(args.arch_opt, "--arch-opt"),
                    backend=args.backend, seed=args.seed, study=args.study, resume=args.resume,
                    tracking_uri=args.tracking_uri, gpus_per_trial=args.gpus_per_trial,
                    home=args.home, progress=not args.no_progress)
    out = Path(args.out or f"best-{result.study_name}.yaml")
    if result.best is not None:
        result.best.save(out)
    print(result.comparison())
    s = result.stats
    print(f"\nstudy {result.study_name}: {s['n_complete']} complete, {s['n_pruned']} pruned, "
          f"{s['n_fail']} failed in {s['wall_seconds']:.0f} s "
          f"({100 * s['outside_compute_share']:.1f}% outside training/eval steps)")
    if result.best is not None:
        print(f"best recipe (trial {result.best.meta['trial']}) written to {out}")
    print(f"review: initsearch ui  (MLflow run {result.parent_run_id})")
    return 0


def key_values(pairs: list[str], flag: str) -> dict:
    """``["depth=14", "norm=none"]`` -> ``{"depth": 14, "norm": "none"}`` (values read as YAML)."""
    import yaml

    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"{flag} {pair!r} must be KEY=VALUE, e.g. {flag} depth=14")
        out[key] = yaml.safe_load(value)
    return out


def _schemes(args: argparse.Namespace) -> int:
    from initsearch.schemes import SCHEMES, STEPS

    print("layer schemes (chosen per role):")
    for s in SCHEMES.values():
        opts = " ".join(f"{k}={'|'.join(v)}" for k, v in s.options.items())
        where = "conv/linear" if s.weight_layers_only else "any layer"
        print(f"  {s.name:12s} {where:12s} {opts}")
    print("steps (after the layer schemes; static first, then data-dependent):")
    for st in STEPS.values():
        kind = "data" if st.needs_data else "static"
        opts = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in st.defaults.items())
        print(f"  {st.name:12s} {kind:7s} {st.summary}\n  {'':12s} {'':7s} defaults: {opts or '-'}")
    from initsearch.costs import format_costs, last_costs, measure_costs

    costs = measure_costs(args.profile, args.data) if args.measure else last_costs(args.profile)
    print("\n" + (format_costs(costs) if costs else "costs: not measured on this machine yet; "
                 "run `initsearch schemes --measure` (about 3 minutes on 2 CPU cores)"))
    return 0


def _archs(_: argparse.Namespace) -> int:
    from initsearch.archs import ARCHS

    for a in ARCHS.values():
        print(f"{a.name:12s} {a.description}  defaults: {a.defaults}")
    return 0


def _spaces(_: argparse.Namespace) -> int:
    from initsearch.space import available_spaces, load_space

    for name in available_spaces():
        s = load_space(name)
        print(f"{name:12s} roles: {', '.join(s.roles)}  -- {' '.join(s.description.split())}")
    return 0


def _profiles(_: argparse.Namespace) -> int:
    from initsearch.protocol import available_profiles, default_profile, load_protocol

    default = default_profile()
    for name in available_profiles():
        p = load_protocol(name)
        mark = " (default here)" if name == default else ""
        print(f"{name:8s}{mark} {' '.join(p.description.split())}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from initsearch.search import resolve_home
    from initsearch.tracking import default_tracking_uri

    home = resolve_home(args.home)
    if not (home / "mlruns" / "mlflow.db").exists():
        raise UsageError(f"no MLflow store in {home / 'mlruns'}; run a search first or pass --home")
    # One worker and no job runner: ~0.5 GB instead of ~3 GB, and nothing left in /dev/shm.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
           str(args.port), "--workers", "1", "--backend-store-uri", default_tracking_uri(home)]
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    os.execv(sys.executable, cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
