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
    run = sub.add_parser("run", help="search init recipes for an architecture, then race the best")
    run.add_argument("--budget", type=int, default=50, help="trials in the study, baselines included")
    _study_arguments(run)
    confirm = sub.add_parser("confirm", help="race recipe files (or a finished study's race) "
                                             "against the baselines under another protocol")
    confirm.add_argument("recipes", nargs="*", metavar="RECIPE",
                         help="recipe files (YAML or JSON) to race as candidates")
    confirm.add_argument("--from-study", metavar="STUDY",
                         help="race a finished study's candidates and baselines (under --home / "
                              "--storage) with their search scores")
    _study_arguments(confirm)
    claims = sub.add_parser("claims", help="list the seed papers' claims, or run them against "
                                           "their controls and say whether they reproduce")
    claims.add_argument("names", nargs="*", metavar="CLAIM", help="claims to run (default: list them)")
    claims.add_argument("--all", action="store_true", help="run every claim that can run here")
    claims.add_argument("--profile", help="trial protocol (default gpu or cpu)")
    claims.add_argument("--data", metavar="DIR", help="dataset directory (env INITSEARCH_DATA)")
    claims.add_argument("--home", help="folder holding mlruns/ (env INITSEARCH_HOME, default .)")
    claims.add_argument("--backend", choices=("ray", "local"), default="ray")
    claims.add_argument("--tracking-uri", help="MLflow store (as for run)")
    claims.add_argument("--no-progress", action="store_true", help="no progress bar")
    claims.add_argument("--confirm-max-seeds", type=int, metavar="N",
                        help="seeds per recipe at most (default: the profile's)")
    claims.add_argument("--min-effect", type=float, metavar="FRACTION",
                        help="the margin of a 'comparable' claim (default: the profile's)")
    claims.add_argument("--markdown", metavar="FILE",
                        help="also write the claims table as Markdown, rewritten after each claim")
    archs = sub.add_parser("archs", help="list architectures: sizes, params, FLOPs, roles, baselines")
    archs.add_argument("name", nargs="?", help="one architecture (default: all)")
    archs.add_argument("--profile", help="also show the sizes this trial protocol gives them")
    roles = sub.add_parser("roles", help="show how a model's layers are labelled (path, type, "
                                         "shape, role) and which baselines apply")
    roles.add_argument("--arch", help="built-in architecture (default resnet_ds)")
    roles.add_argument("--model", metavar="MODULE:FUNCTION",
                       help="your own model factory, or timm:NAME for a timm model")
    roles.add_argument("--arch-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="architecture option, repeatable (as for run)")
    roles.add_argument("--profile", help="size the model as this protocol does (default gpu or cpu)")
    roles.add_argument("--space", help="apply this space's role_overrides (default <arch> or default)")
    sub.add_parser("spaces", help="list search spaces")
    schemes = sub.add_parser("schemes", help="list init schemes and steps (and measure their cost)")
    schemes.add_argument("--measure", action="store_true",
                         help="time each data-dependent step on a profile's model and real data")
    schemes.add_argument("--data", metavar="DIR", help="dataset directory (env INITSEARCH_DATA)")
    schemes.add_argument("--profile", help="trial protocol to measure on; default gpu or cpu")
    sub.add_parser("profiles", help="list trial protocols")
    report = sub.add_parser("report", help="print a study's confirmed comparison and verdict, "
                                           "write its plots as PNG")
    report.add_argument("study", nargs="?", help="the study (default: the newest under --home)")
    report.add_argument("--home", help="folder holding mlruns/ (env INITSEARCH_HOME, default .)")
    report.add_argument("--out", metavar="DIR", help="folder for the plots (default report-<study>/)")
    report.add_argument("--storage", metavar="URL",
                        help="the Optuna storage the study is in, as given to run (default: the "
                             "journals under --home)")
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 on the project's store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--home", help="folder holding mlruns/ (env INITSEARCH_HOME, default .)")
    ui.add_argument("--tracking-uri", help="another local store the runs were written to (a "
                                            "database URI, as given to run); default <home>/mlruns")
    return p


def _study_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments ``run`` and ``confirm`` share: the model, the data, the protocol, where the
    study lives and runs, and the race."""
    p.add_argument("--arch", help="built-in architecture (initsearch archs); default resnet_ds")
    p.add_argument("--model", metavar="MODULE:FUNCTION",
                   help="your own model factory instead of --arch, or timm:NAME for a timm model")
    p.add_argument("--arch-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture option, repeatable (e.g. depth=14, norm=none)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data", metavar="DIR", help="dataset directory (env INITSEARCH_DATA)")
    p.add_argument("--profile", help="trial protocol (initsearch profiles); default gpu or cpu")
    p.add_argument("--space", help="search space (initsearch spaces); default <arch> or default")
    p.add_argument("--backend", choices=("ray", "local"), default="ray")
    p.add_argument("--study", help="study name (default <arch>-<dataset>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue --study (or the newest one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", metavar="final|auc|epochs_to:TARGET",
                   help="what a trial scores: the last epoch's accuracy (final), the mean over the "
                        "epochs (auc: trains fastest), or how early it first reaches an accuracy "
                        "(epochs_to:0.4); default: the profile's objective, final")
    p.add_argument("--tracking-uri", help="MLflow store: http://host:port of a tracking server, "
                   "or a database URI (env MLFLOW_TRACKING_URI; default sqlite in ./mlruns)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage: an RDB URL such as postgresql://user:pw@host/db lets "
                   "several drivers share the study (default: a journal file in ./mlruns/optuna)")
    p.add_argument("--wait-for-others", type=float, default=3600.0, metavar="SECONDS",
                   help="on a study shared with other drivers, how long to wait for their "
                        "trials in flight before reporting the study as partial (default 3600)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run trials on this Ray cluster (env RAY_ADDRESS; default: start Ray here)")
    p.add_argument("--ray-storage", metavar="PATH_OR_URI",
                   help="Tune's storage, shared by the cluster's nodes (default ./mlruns/ray)")
    p.add_argument("--out", default=None, help="best recipe file (default best-<study>.yaml)")
    p.add_argument("--gpus-per-trial", type=float, help="GPU share per trial, fractions allowed")
    p.add_argument("--home", help="folder holding mlruns/ (env INITSEARCH_HOME, default .)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cache", action="store_true",
                   help="train every trial, even one whose result the store already has "
                        "(same model, recipe, protocol, data and code), and do not replay an "
                        "earlier study's draws")
    p.add_argument("--confirm-top", type=int, default=3, metavar="K",
                   help="best distinct candidates that race the default and every applicable "
                        "baseline on fresh seeds (default 3)")
    p.add_argument("--confirm-seeds", type=int, metavar="S",
                   help="seeds every racing recipe starts with, >= 3; 0 turns the "
                        "confirmation off (default: the profile's confirm_seeds, 3)")
    p.add_argument("--confirm-max-seeds", type=int, metavar="N",
                   help="the race's budget: seeds per recipe at most (default: the profile's)")
    p.add_argument("--min-effect", type=float, metavar="FRACTION",
                   help="smallest accuracy difference worth acting on, e.g. 0.01 for 1 pp "
                        "(default: the profile's)")
    p.add_argument("--confirm-rank", choices=("mean", "lcb"),
                   help="who leads the race: best mean, or best lower 95%% bound (dead seeds "
                        "cost more); default: the profile's")
    p.add_argument("--confirm-cost-ratio", type=float, metavar="X",
                   help="retire a non-leading recipe whose jobs cost over X times the median "
                        "(0: never; default: the profile's)")
    p.add_argument("--confirm-epochs", type=int, metavar="N",
                   help="the race's training length (default: the profile's confirm_epochs)")
    p.add_argument("--confirm-train-size", type=int, metavar="N",
                   help="the race's training images (default: the profile's)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return {"run": _run, "confirm": _confirm, "claims": _claims, "archs": _archs, "roles": _roles, "spaces": _spaces,
                "schemes": _schemes, "profiles": _profiles, "report": _report,
                "ui": _ui}[args.command](args)
    except UsageError as exc:
        print(f"initsearch: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("initsearch: interrupted; completed trials are recorded, continue with --resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141


def _settings(args: argparse.Namespace) -> tuple[dict, "RunConfig", "ConfirmConfig"]:
    """What ``run`` and ``confirm`` take alike: the study's arguments, its run and its race."""
    from initsearch.settings import ConfirmConfig, RunConfig

    if args.model and args.arch:
        raise UsageError("pass either --arch or --model, not both")
    run = RunConfig(name=args.study, resume=args.resume, backend=args.backend,
                    gpus_per_trial=args.gpus_per_trial, home=args.home,
                    tracking_uri=args.tracking_uri, progress=not args.no_progress,
                    storage=args.storage, ray_address=args.ray_address, ray_storage=args.ray_storage,
                    cache=not args.no_cache, wait_for_others=args.wait_for_others)
    confirm = ConfirmConfig(top=args.confirm_top, seeds=args.confirm_seeds,
                            max_seeds=args.confirm_max_seeds, min_effect=args.min_effect,
                            rank=args.confirm_rank, epochs=args.confirm_epochs,
                            train_size=args.confirm_train_size, cost_ratio=args.confirm_cost_ratio)
    study = dict(arch=args.model or args.arch or "resnet_ds", dataset=args.dataset,
                 data_dir=args.data, profile=args.profile, space=args.space,
                 arch_options=key_values(args.arch_opt, "--arch-opt"), seed=args.seed,
                 objective=args.objective)
    return study, run, confirm


def _run(args: argparse.Namespace) -> int:
    from initsearch.study import search

    study, run, confirm = _settings(args)
    result = search(budget=args.budget, run=run, confirm=confirm, **study)
    print(result.comparison())
    _finish(args, result)
    return 0


def _confirm(args: argparse.Namespace) -> int:
    from initsearch.recipe import Recipe
    from initsearch.study import confirm_recipes

    study, run, confirm = _settings(args)
    recipes = [Recipe.load(path) for path in args.recipes]
    result = confirm_recipes(recipes, from_study=args.from_study, run=run, confirm=confirm, **study)
    _finish(args, result)
    return 0


def _finish(args: argparse.Namespace, result) -> None:
    """The race's table, the study's figures, the recipe file, the review link and the verdict."""
    if result.verdict.rows:
        print("\n" + result.verdict.table())
    s = result.stats
    print(f"\nstudy {result.study_name}: {s['n_complete']} complete, {s['n_pruned']} pruned, "
          f"{s['n_fail']} failed in {s['wall_seconds']:.0f} s, of which {s['confirm_seconds']:.0f} s "
          f"confirming ({100 * s['outside_compute_share']:.1f}% outside init/training/eval"
          + (f"; {s['cached_trials']} trials replayed from the result cache" if s["cached_trials"] else "")
          + (f", {s['replayed_draws']} of them an earlier study's draws" if s["replayed_draws"] else "")
          + ")")
    if result.best is not None:
        out = result.best.save(args.out or f"best-{result.study_name}.yaml")
        print(f"recommended recipe ({result.best.name}, with its evidence) written to {out}")
    print(f"review: {result.review}")
    print(f"\nverdict: {result.verdict.text}")


def _claims(args: argparse.Namespace) -> int:
    from initsearch.claims import CLAIMS, format_claims, format_findings, format_markdown, run_claim
    from initsearch.protocol import default_profile
    from initsearch.settings import ConfirmConfig, RunConfig

    unknown = [n for n in args.names if n not in CLAIMS]
    if unknown:
        raise UsageError(f"unknown claim {unknown[0]!r}; `initsearch claims` lists them")
    if not args.names and not args.all:
        print(format_claims(list(CLAIMS.values())))
        return 0
    run = RunConfig(backend=args.backend, home=args.home, tracking_uri=args.tracking_uri,
                    progress=not args.no_progress)
    confirm = ConfirmConfig(max_seeds=args.confirm_max_seeds, min_effect=args.min_effect)
    chosen = list(CLAIMS.values()) if args.all else [CLAIMS[n] for n in args.names]
    profile = args.profile or default_profile()
    markdown = Path(args.markdown) if args.markdown else None
    if markdown is not None and not markdown.parent.is_dir():
        raise UsageError(f"--markdown {args.markdown}: no folder {markdown.parent}; create it "
                         "or name a file in an existing folder")
    findings = []
    for claim in chosen:
        findings.append(run_claim(claim, profile=args.profile, data_dir=args.data, run=run,
                                  confirm=confirm))
        print(format_findings(findings[-1:], profile), flush=True)
        if markdown is not None:  # after each claim: a night's run killed at 5 a.m. keeps its rows
            markdown.write_text(format_markdown(findings, profile))
    if len(findings) > 1:
        print("\n" + format_findings(findings, profile))
    return 0


def _report(args: argparse.Namespace) -> int:
    from initsearch.report import report

    text, folder, files = report(args.study, args.home, args.out, args.storage)
    print(text)
    print(f"\nplots in {folder}/: {', '.join(files) or 'none yet (too few completed trials)'}")
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
        opts = " ".join(f"{k}={'|'.join(map(str, v))}" for k, v in s.options.items())
        where = "conv/linear" if s.weight_layers_only else "any layer"
        print(f"  {s.name:13s} {where:12s} {opts}")
    print("steps (after the layer schemes; static first, then data-dependent):")
    for st in STEPS.values():
        kind = "data" if st.needs_data else "static"
        opts = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in st.defaults.items())
        print(f"  {st.name:13s} {kind:7s} {st.summary}\n  {'':13s} {'':7s} defaults: {opts or '-'}")
    from initsearch.recipe import ABOUT, BASELINES

    print("published recipes (the baselines every search runs first, where they apply):")
    for name, recipe in BASELINES.items():
        print(f"  {name:15s} {ABOUT[name]}\n  {'':15s} = {recipe.summary()}")
    from initsearch.costs import format_costs, last_costs, measure_costs

    costs = measure_costs(args.profile, args.data) if args.measure else last_costs(args.profile)
    print("\n" + (format_costs(costs) if costs else "costs: not measured on this machine yet; "
                 "run `initsearch schemes --measure` (about 3 minutes on 2 CPU cores)"))
    return 0


def _one_thread() -> None:
    """Listing commands run many tiny ops: on a busy machine more threads only stall them."""
    import torch

    torch.set_num_threads(1)


def _refused(model, overrides=None, roles=None) -> dict[str, str]:
    """Baselines that do not apply to ``model``, with why (see :func:`recipe.why_not`)."""
    from initsearch.recipe import BASELINES, why_not
    from initsearch.roles import discover_roles

    roles = roles if roles is not None else discover_roles(model, overrides)
    return {name: why for name in BASELINES if (why := why_not(name, model, overrides, roles))}


def _archs(args: argparse.Namespace) -> int:
    from initsearch.archs import ARCHS, build_model, flops_per_image
    from initsearch.protocol import load_protocol
    from initsearch.recipe import BASELINES
    from initsearch.roles import ROLES, discover_roles

    if args.name and args.name not in ARCHS:
        raise UsageError(f"unknown arch {args.name!r}; choose one of: {', '.join(ARCHS)}")
    _one_thread()
    protocol = load_protocol(args.profile) if args.profile else None
    for a in ARCHS.values():
        if args.name and a.name != args.name:
            continue
        print(f"{a.name}  {a.description}")
        sizes = [("defaults", {})] + ([(protocol.name, protocol.for_arch(a.name)[1])]
                                      if protocol else [])
        for label, options in sizes:
            sized = build_model(a.name, options=options)
            params = sum(p.numel() for p in sized.parameters())
            shown = " ".join(f"{k}={v}" for k, v in {**a.defaults, **options}.items())
            print(f"  {label:10s} {params / 1e6:6.3f}M params {_mflops(flops_per_image(sized)):>8} "
                  f"MFLOPs/image  {shown}")
        model = build_model(a.name)  # roles and baselines at the defaults
        roles = discover_roles(model)
        present = [r for r in ROLES if r in roles.values()]
        print(f"  {'roles':10s} {', '.join(f'{r} {list(roles.values()).count(r)}' for r in present)}"
              f"; {roles.topology}, {len(roles.blocks)} residual blocks")
        refused = _refused(model, roles=roles)
        print(f"  {'baselines':10s} {', '.join(n for n in BASELINES if n not in refused)}")
        if a.defaults.get("norm") in ("batch", "layer"):  # the normalization-free variant may admit more
            more = set(refused) - set(_refused(build_model(a.name, options={"norm": "none"})))
            if more:
                print(f"  {'norm=none':10s} also {', '.join(n for n in BASELINES if n in more)}")
                refused = {n: why for n, why in refused.items() if n not in more}
        if refused:
            print(f"  {'not':10s} " + "; ".join(f"{n} ({why})" for n, why in refused.items()))
    if not args.name:
        print("\nany other model: --model package.module:function (your factory), or --model "
              "timm:NAME for a timm model (pretrained=False, num_classes=10, img_size=32 where "
              "the family takes it); `initsearch roles --model ...` shows how it is read")
    return 0


def _mflops(flops: int | None) -> str:
    return "?" if flops is None else f"{flops / 1e6:.1f}"


def _roles(args: argparse.Namespace) -> int:
    from initsearch.archs import flops_per_image
    from initsearch.plan import resolve_model
    from initsearch.recipe import BASELINES, Recipe
    from initsearch.roles import discover_roles
    from initsearch.space import load_space

    if args.model and args.arch:
        raise UsageError("pass either --arch or --model, not both")
    arch = args.model or args.arch or "resnet_ds"
    _one_thread()
    _, resolved = resolve_model(arch, arch_options=key_values(args.arch_opt, "--arch-opt"),
                                profile=args.profile)
    model, options = resolved.probe, resolved.options
    space = load_space(args.space or resolved.default_space)
    roles = discover_roles(model, space.role_overrides)
    rows = [(r["path"], r["type"], "x".join(map(str, r["shape"])) or "scalar", r["role"])
            for r in Recipe(role_overrides=space.role_overrides).plan(model, roles)]
    widths = [max(len(r[i]) for r in rows + [("path", "type", "shape", "role")]) for i in range(3)]
    print(f"{'path':{widths[0]}}  {'type':{widths[1]}}  {'shape':{widths[2]}}  role")
    for path, kind, shape, role in rows:
        print(f"{path:{widths[0]}}  {kind:{widths[1]}}  {shape:{widths[2]}}  {role}")
    params = sum(p.numel() for p in model.parameters())
    shown = " ".join(f"{k}={v}" for k, v in options.items())
    print(f"\n{arch}{' ' + shown if shown else ''}: {params / 1e6:.3f}M params, "
          f"{_mflops(flops_per_image(model))} MFLOPs/image; roles read from the {roles.source}; "
          f"{roles.topology}; space {space.name} (role_overrides: "
          f"{dict(space.role_overrides) or 'none'})")
    for b in roles.blocks:
        print(f"residual block {b.path or '(root)'}: branch {' -> '.join(b.branch)}"
              f"{f'; shortcut {b.shortcut}' if b.shortcut else ''}"
              f"{f'; scale {b.scale}' if b.scale else ''}"
              f"{f'; {b.norm}-norm' if b.norm else ''}")
    refused = _refused(model, space.role_overrides, roles)
    print(f"baselines that apply: {', '.join(n for n in BASELINES if n not in refused)}")
    for name, why in refused.items():
        print(f"  not {name}: {why}")
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
    from initsearch.settings import resolve_home
    from initsearch.tracking import check_tracking_uri, default_tracking_uri
    from initsearch.tracking.store import is_server

    home = resolve_home(args.home)
    uri = args.tracking_uri or default_tracking_uri(home)
    if is_server(uri):
        raise UsageError(f"{uri} is a tracking server: it serves its own UI; open {uri} instead")
    if args.tracking_uri is None and not (home / "mlruns" / "mlflow.db").exists():
        raise UsageError(f"no MLflow store in {home / 'mlruns'}; run a search first or pass --home")
    check_tracking_uri(uri)
    # One worker and no job runner: ~0.5 GB instead of ~3 GB, and nothing left in /dev/shm.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
           str(args.port), "--workers", "1", "--backend-store-uri", uri]
    base = f"http://127.0.0.1:{args.port}"
    latest = _latest_study_url(uri, base)
    print(f"MLflow UI on {base} (Ctrl-C stops it)" + (f"; newest study: {latest}" if latest else ""),
          file=sys.stderr)
    os.execv(sys.executable, cmd)
    return 0  # not reached


def _latest_study_url(uri: str, base: str) -> str | None:
    """The newest study's runs in the UI's model-training view, or None without one."""
    from mlflow.tracking import MlflowClient

    from initsearch.tracking import runs_url

    client = MlflowClient(uri)
    found = client.search_runs([e.experiment_id for e in client.search_experiments()],
                               "tags.role = 'search'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if not found or "study" not in found[0].data.tags:
        return None
    return runs_url(found[0].info.experiment_id, found[0].data.tags["study"], base)


if __name__ == "__main__":
    sys.exit(main())
