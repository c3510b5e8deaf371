"""Trial protocols: how a candidate recipe is trained and scored (files in ``trials/``).

A protocol fixes everything but the init, so that trials differ only by their recipe: the data
subset and its split, epochs (the highest fidelity) and the pruner's rungs, optimizer, learning
rate schedule, gradient clipping, batch size, auxiliary-loss weight, augmentation, seeds, and how
many CPU threads / GPU share a trial gets. See ``trials/cpu.yaml`` for every key with a comment.

The optimizer (``optimizer.name``, default ``sgd``) is SGD with momentum (``lr``, ``momentum``
0.9, ``nesterov`` true, ``weight_decay`` 0) or AdamW (``lr``, ``betas`` [0.9, 0.999], ``eps``
1e-8, ``weight_decay`` 0.01 -- PyTorch's defaults; ViT recipes such as DeiT use 0.05); absent
keys take these defaults. Weight decay never applies to biases, 1-d parameters or the
parameters of norm, embedding, token, layer-scale and scalar units (:func:`initsearch.trial.param_groups`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from initsearch.errors import UsageError

FORMAT, VERSION = "initsearch.protocol", 1
TRIALS_DIR = Path(__file__).resolve().parent.parent / "trials"
PRUNERS = ("successive_halving", "hyperband", "median", "none")
_NOT_CONTENT = ("name", "description", "archs", "threads_per_trial", "gpus_per_trial",
                "confirm_seeds")
#: Keys added after protocols were first hashed: left out of :meth:`Protocol.content_hash` while
#: off (None), so a protocol that does not use them keeps its hash.
_NEW_OFF = ("grad_clip",)
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool, "dict": dict,
          "tuple": (list, tuple)}


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    device: str = "auto"                       # auto | cpu | cuda
    train_size: int | None = None              # training images (None: all that are not val)
    val_size: int = 5000                       # carved from the training set
    test_size: int | None = None               # final reports only (None: the whole test set)
    split_seed: int = 0
    epochs: int = 9                            # the highest fidelity
    pruner: dict = field(default_factory=lambda: {"name": "successive_halving",
                                                  "min_resource": 1, "reduction_factor": 3})
    batch_size: int = 128
    eval_batch_size: int = 1000
    optimizer: dict = field(default_factory=lambda: {"lr": 0.05, "momentum": 0.9,
                                                     "nesterov": True, "weight_decay": 5e-4})
    lr_schedule: str = "cosine"                # cosine | linear | constant, over all `epochs`
    warmup_epochs: float = 0.0
    grad_clip: float | None = None             # max global gradient norm per step (None: off)
    aux_loss_weight: float = 0.3
    label_smoothing: float = 0.0
    crop_padding: int = 4
    flip: bool = True
    seeds: tuple[int, ...] = (0,)
    threads_per_trial: int = 1
    gpus_per_trial: float = 0.0                # fractions let several short trials share a GPU
    channels_last: bool = True
    confirm_seeds: int = 3                     # fresh seeds per recipe in the confirmation (0: off)
    archs: dict = field(default_factory=dict)  # {arch: {options: {...}, <key>: value}}: per-arch sizes and overrides

    def content_hash(self) -> str:
        """SHA-256 of everything that decides how a trial trains and is scored -- this protocol
        as applied to one architecture (:meth:`for_arch`); its name and description, the other
        architectures' sections, the trial placement (threads, GPU share) and the confirmation's
        seed count are left out."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_CONTENT
             and not (k in _NEW_OFF and v is None)}  # a key left off keeps the hash it had
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def make_pruner(self) -> optuna.pruners.BasePruner:
        opts = {k: v for k, v in self.pruner.items() if k != "name"}
        name = self.pruner.get("name", "successive_halving")
        if name == "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(**opts)
        if name == "hyperband":
            return optuna.pruners.HyperbandPruner(max_resource=self.epochs, **opts)
        if name == "median":
            return optuna.pruners.MedianPruner(**opts)
        return optuna.pruners.NopPruner()

    def for_arch(self, arch: str | None) -> tuple["Protocol", dict[str, Any]]:
        """This protocol as it applies to ``arch`` (a built-in name; None for a user's model):
        the ``archs.<arch>`` overrides applied (``optimizer`` merged key by key, so ``{lr: ...}``
        keeps the momentum -- unless it names another optimizer, which replaces it whole; every
        other key replaced whole), and the architecture options sized for this protocol."""
        section = dict(self.archs.get(arch, {}) if arch else {})
        options = section.pop("options", {})
        merged = {k: _merge_optimizer(self.optimizer, v) if k == "optimizer" else v
                  for k, v in section.items()}
        if "seeds" in merged:
            merged["seeds"] = tuple(merged["seeds"])
        return replace(self, **merged), dict(options)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Protocol":
        """Inverse of :meth:`to_dict` (for a protocol that travelled to a worker as plain data)."""
        return cls(**{**d, "seeds": tuple(d["seeds"])})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d


def available_profiles() -> dict[str, Path]:
    return {p.stem: p for p in sorted(TRIALS_DIR.glob("*.yaml"))}


def default_profile() -> str:
    """``gpu`` when a CUDA device is visible, else ``cpu``."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def load_protocol(name_or_path: str | None = None) -> Protocol:
    """Load a protocol by name (a file in ``trials/``) or path; None picks :func:`default_profile`."""
    name_or_path = name_or_path or default_profile()
    path = Path(name_or_path)
    if not path.suffix:
        profiles = available_profiles()
        if name_or_path not in profiles:
            raise UsageError(f"unknown profile {name_or_path!r}; choose one of: "
                             f"{', '.join(profiles)} or pass a path to a protocol file")
        path = profiles[name_or_path]
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read protocol {path}: {str(exc).splitlines()[0]}") from None
    return parse_protocol(raw, path.stem, str(path))


def parse_protocol(raw: Any, name: str, where: str) -> Protocol:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise UsageError(f"protocol {where}: needs 'format: {FORMAT}' and 'version: {VERSION}'")
    body = {k: v for k, v in raw.items() if k not in ("format", "version")}
    known = {f.name: f for f in fields(Protocol)}
    unknown = set(body) - set(known)
    if unknown:
        raise UsageError(f"protocol {where}: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {', '.join(k for k in known if k != 'name')}")
    for key, value in body.items():  # check each value against the field's annotation
        annotation = known[key].type
        base = annotation.split("[")[0].split("|")[0].strip()
        ok = (value is None and "None" in annotation) or (
            isinstance(value, _TYPES[base]) and (base == "bool" or not isinstance(value, bool)))
        if not ok:
            hint = _YAML_HINT if isinstance(value, str) and base == "float" else ""
            raise UsageError(f"protocol {where}: {key} must be {annotation}, not {value!r}{hint}")
    if "seeds" in body:
        body["seeds"] = tuple(body["seeds"])
    protocol = Protocol(name=name, **body)
    try:
        protocol.make_pruner()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"protocol {where}: pruner {protocol.pruner}: {exc}") from None
    checks = [
        (protocol.train_size is None or protocol.train_size >= protocol.batch_size,
         "train_size must be at least batch_size"),
        (protocol.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
        (isinstance(protocol.epochs, int) and protocol.epochs >= 1, "epochs must be an integer >= 1"),
        (protocol.pruner.get("name", "successive_halving") in PRUNERS,
         f"pruner.name must be one of {', '.join(PRUNERS)}"),
        (protocol.batch_size >= 1 and protocol.val_size >= 1, "batch_size and val_size must be >= 1"),
        (protocol.lr_schedule in ("cosine", "linear", "constant"),
         "lr_schedule must be cosine, linear or constant"),
        (len(protocol.seeds) >= 1, "seeds must list at least one seed"),
        (protocol.threads_per_trial >= 1, "threads_per_trial must be >= 1"),
        (protocol.gpus_per_trial >= 0, "gpus_per_trial must be >= 0"),
        (protocol.grad_clip is None or protocol.grad_clip > 0,
         f"grad_clip must be > 0 (the max global gradient norm) or null (off), not {protocol.grad_clip!r}"),
        (protocol.confirm_seeds >= 0 and protocol.confirm_seeds != 1,
         "confirm_seeds must be 0 (no confirmation) or >= 2 (a confidence interval needs two)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(f"protocol {where}: {msg}")
    _check_optimizer(protocol.optimizer, where)
    _check_archs(protocol, where)
    return protocol


#: Each optimizer's keys (``lr`` required, ``name`` picks the optimizer, default ``sgd``): a
#: number >= 0, ``nesterov`` true or false, ``betas`` two numbers in [0, 1).
OPTIMIZERS = {
    "sgd": {"lr": float, "momentum": float, "nesterov": bool, "weight_decay": float},
    "adamw": {"lr": float, "betas": tuple, "eps": float, "weight_decay": float},
}
_YAML_HINT = " (YAML reads 1.0e4 as text: write 1.0e+4)"


def _merge_optimizer(base: dict, override: dict) -> dict:
    """``override`` over ``base`` key by key when both name the same optimizer; else ``override``."""
    same = override.get("name", base.get("name", "sgd")) == base.get("name", "sgd")
    return {**base, **override} if same else dict(override)


def _check_optimizer(optimizer: dict, where: str) -> None:
    name = optimizer.get("name", "sgd")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise UsageError(f"protocol {where}: optimizer.name must be {' or '.join(OPTIMIZERS)}, "
                         f"not {name!r}")
    table = OPTIMIZERS[name]
    unknown = set(optimizer) - set(table) - {"name"}
    if unknown or "lr" not in optimizer:
        fix = "".join(f"; {', '.join(sorted(unknown & set(t)))} belong(s) to {o}: set name: {o}"
                      for o, t in OPTIMIZERS.items() if o != name and unknown & set(t))
        raise UsageError(f"protocol {where}: optimizer needs lr and takes only "
                         f"{', '.join(['name', *table])} for {name}"
                         f"{f', not {sorted(unknown)}' if unknown else ''}{fix}")
    for key, kind in table.items():
        value = optimizer.get(key)
        if key not in optimizer:
            continue
        if kind is tuple:
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                    for b in value)):
                hint = _YAML_HINT if any(isinstance(b, str) for b in
                                         (value if isinstance(value, (list, tuple)) else ())) else ""
                raise UsageError(f"protocol {where}: optimizer.{key} must be two numbers in [0, 1), "
                                 f"e.g. [0.9, 0.999], not {value!r}{hint}")
        elif (isinstance(value, bool) != (kind is bool) or not isinstance(value, (bool, int, float))
              or (kind is float and not value >= 0)):
            hint = _YAML_HINT if isinstance(value, str) else ""
            raise UsageError(f"protocol {where}: optimizer.{key} must be "
                             f"{'true or false' if kind is bool else 'a number >= 0'}, "
                             f"not {value!r}{hint}")
    if name == "sgd" and optimizer.get("nesterov", True) and optimizer.get("momentum", 0.9) == 0:
        raise UsageError(f"protocol {where}: optimizer.nesterov needs momentum > 0; "
                         "set nesterov: false or a momentum")


def _check_archs(protocol: Protocol, where: str) -> None:
    """``archs`` maps built-in architectures to ``{options: {...}, <protocol key>: value}``;
    each must give a valid protocol once applied (:meth:`Protocol.for_arch`)."""
    from initsearch.archs import ARCHS

    allowed = {f.name for f in fields(Protocol)} - {"name", "archs"}
    for arch, section in protocol.archs.items():
        if arch not in ARCHS:
            raise UsageError(f"protocol {where}: archs.{arch}: unknown architecture; "
                             f"choose from {', '.join(ARCHS)}")
        if not isinstance(section, dict) or not isinstance(section.get("options", {}), dict) \
                or set(section) - allowed - {"options"}:
            raise UsageError(f"protocol {where}: archs.{arch} must be {{options: {{...}}, "
                             f"<protocol key>: value}} with keys among: {', '.join(sorted(allowed))}")
        if "optimizer" in section and not isinstance(section["optimizer"], dict):
            raise UsageError(f"protocol {where}: archs.{arch}.optimizer must be a mapping")
        applied = {k: v for k, v in protocol.for_arch(arch)[0].to_dict().items()
                   if k not in ("name", "archs")}
        parse_protocol({"format": FORMAT, "version": VERSION, **applied}, protocol.name,
                       f"{where} (archs.{arch})")
