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

A protocol file is checked by the pydantic models below (:class:`ProtocolFile`: each key's type
and range, the optimizer a union on its ``name``), then by the rules that relate keys. The models
only check: :class:`Protocol` is built from the file's own values, so that its content hash does
not move with pydantic's coercions (``warmup_epochs: 0`` stays the int 0, not 0.0).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from initsearch.errors import UsageError
from initsearch.recipe import StepInit
from initsearch.schema import StrictModel, refuse, validate

if TYPE_CHECKING:
    import optuna

FORMAT, VERSION = "initsearch.protocol", 1
TRIALS_DIR = Path(__file__).resolve().parent.parent / "trials"
PRUNERS = ("successive_halving", "hyperband", "median", "none")
#: Keys that do not decide how a trial trains or is scored: the race's decision rule
#: (:class:`~initsearch.race.RaceRules`) and the placement of trials.
_NOT_CONTENT = ("name", "description", "archs", "threads_per_trial", "gpus_per_trial",
                "confirm_seeds", "confirm_max_seeds", "min_effect", "confirm_rank", "confirm_cost_ratio",
                "confirm_failures")
#: Keys added after protocols were first hashed, with their defaults: left out of
#: :meth:`Protocol.content_hash` while at the default, so a protocol that does not use them keeps
#: its hash. (``confirm_size`` is not among them: carving the confirm split moved the training
#: images, so every protocol hashes anew.)
_NEW_DEFAULTS = {"grad_clip": None, "precision": "fp32", "compile": False, "confirm_epochs": None,
                 "confirm_train_size": None, "stage": "search", "objective": "final",
                 "objective_target": None, "init_steps": {}}
OBJECTIVES = ("final", "auc", "epochs_to")
RANKS = ("mean", "lcb")
FAILURES = ("drop", "score")


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
    precision: str = "fp32"                    # fp32 | bf16 (autocast; fp32 master weights) | auto (bf16 where native)
    compile: bool = False                      # torch.compile the model for training and eval
    confirm_size: int = 5000                   # the confirm split, carved from the training set
    confirm_epochs: int | None = None          # the confirmation's training length (None: epochs)
    confirm_train_size: int | None = None      # the confirmation's training images (None: train_size)
    confirm_seeds: int = 3                     # seeds every racing recipe starts with (0: no confirmation)
    confirm_max_seeds: int = 10                # the race's budget: seeds per recipe at most
    min_effect: float = 0.01                   # the smallest accuracy difference worth acting on (1 pp)
    confirm_rank: str = "mean"                 # who leads a look: mean | lcb (lower 95 % bound)
    confirm_cost_ratio: float = 0.0            # a non-leader whose jobs cost > this x the median retires (0: off)
    confirm_failures: str = "drop"             # a racer that fails a seed: drop | score (as untrained; claims)
    objective: str = "final"                   # what a trial's score is: final | auc | epochs_to (score())
    objective_target: float | None = None      # epochs_to's accuracy target, e.g. 0.4
    init_steps: dict = field(default_factory=dict)  # {step: {option: value}} where a recipe leaves them unset
    stage: str = "search"                      # search | confirm (set by for_confirmation, not in files)
    archs: dict = field(default_factory=dict)  # {arch: {options: {...}, <key>: value}}: per-arch sizes and overrides

    def content_hash(self) -> str:
        """SHA-256 of everything that decides how a trial trains and is scored -- this protocol
        as applied to one architecture (:meth:`for_arch`); its name and description, the other
        architectures' sections, the trial placement (threads, GPU share) and the confirmation's
        seed count are left out."""
        d = {k: v for k, v in self.to_dict().items() if k not in _NOT_CONTENT
             and not (k in _NEW_DEFAULTS and v == _NEW_DEFAULTS[k])}  # keeps the hash it had
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def split_sizes(self) -> dict[str, Any]:
        """The keyword arguments of :func:`initsearch.data.load_splits` for this protocol: the
        training split holds as many images as the search or the confirmation trains on."""
        sizes = (self.train_size, self.confirm_train_size or self.train_size)
        return {"train_size": None if None in sizes else max(sizes), "val_size": self.val_size,
                "confirm_size": self.confirm_size, "test_size": self.test_size,
                "split_seed": self.split_seed}

    def for_confirmation(self) -> "Protocol":
        """How a confirmation job trains: ``confirm_epochs`` on ``confirm_train_size`` images,
        scored on the confirm split (``stage: confirm``) at its last epoch."""
        return replace(self, epochs=self.confirm_epochs or self.epochs,
                       train_size=self.confirm_train_size or self.train_size, stage="confirm")

    def score(self, curve: list[float]) -> float:
        """The objective's value of an accuracy curve (one accuracy per epoch, so far), in
        accuracy-like units in [0, 1], higher better -- so the search, its pruner (which compares
        trials at the same epoch) and the race read every objective alike:

        * ``final``: the accuracy at the last epoch;
        * ``auc``: the mean accuracy over the epochs, the area under the curve (a recipe that
          gets there sooner scores higher at the same final accuracy);
        * ``epochs_to``: how early ``objective_target`` is first reached, as the share of the
          training still ahead at that epoch: ``(E - e + 1) / E`` for first epoch ``e`` of
          ``E``, 0 when never reached. Mid-trial the bound assumes the next epoch reaches it
          (so a trial is never pruned for what it has not been given time to do).
        """
        if self.objective == "final":
            return curve[-1]
        if self.objective == "auc":
            return sum(curve) / len(curve)
        reached = next((e for e, acc in enumerate(curve, 1) if acc >= self.objective_target), None)
        if reached is None:
            reached = len(curve) + 1 if len(curve) < self.epochs else self.epochs + 1
        return (self.epochs - reached + 1) / self.epochs

    def untrained_score(self, num_classes: int) -> float:
        """What a network that learned nothing scores: chance accuracy (1/K) at every epoch --
        how a failed racer counts under ``confirm_failures: score``."""
        return self.score([1 / num_classes] * self.epochs)

    @property
    def score_column(self) -> str:
        """The search table's name for a trial's score (:func:`score_column`)."""
        return score_column(self.objective, self.objective_target)

    def objective_label(self) -> str:
        """The objective in words, for tables and evidence."""
        return {"final": "final accuracy", "auc": "mean accuracy over the epochs (AUC)",
                "epochs_to": f"share of training left on first reaching "
                             f"{100 * (self.objective_target or 0):.0f}% (epochs_to)"}[self.objective]

    def make_pruner(self) -> "optuna.pruners.BasePruner":
        """Optuna's pruner for the study (imported here: a Ray worker reads protocols, never
        prunes, and need not load Optuna)."""
        import optuna

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


def score_column(objective: str = "final", target: float | None = None) -> str:
    """What the search table calls a trial's score under ``objective``: ``val_acc`` (final),
    ``val_auc``, or ``val_epochs_to_40%`` (the share of training left on reaching 40 %)."""
    return {"final": "val_acc", "auc": "val_auc"}.get(objective) or f"val_epochs_to_{100 * (target or 0):.0f}%"


def machine() -> str:
    """The machine a measurement ran on, for tables: cores, CPU model, GPU, torch version."""
    import os
    import platform

    cpuinfo = Path("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in
                  (cpuinfo.read_text().splitlines() if cpuinfo.exists() else ())
                  if line.startswith("model name")), platform.processor() or platform.machine())
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores, {model}, {gpu}, torch {torch.__version__}"


def resolve_device(name: str) -> torch.device:
    """The protocol's ``device`` on this machine: ``auto`` is CUDA where a GPU is visible."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The protocol's ``precision`` as it runs on ``device``: ``auto`` is ``bf16`` where the
    device multiplies bf16 natively -- a CUDA GPU that supports it, or a CPU with AMX-BF16 tiles
    (Intel Sapphire Rapids and later: there bf16 autocast trains the ``cpu`` profile's CNNs ~1.6x
    faster than fp32) -- and ``fp32`` elsewhere (on an AVX2 CPU every bf16 op converts: ~8x
    slower). ``fp32`` and ``bf16`` are kept as they are. Measurements: BENCHMARKS.md."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and torch.cpu.get_capabilities().get("amx_bf16") else "fp32"


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
    """The protocol in ``raw`` (a file's YAML, read from ``where``), called ``name``.

    Raises:
        UsageError: one line naming the file, the key and what it must be.
    """
    what = f"protocol {where}"
    checked = validate(ProtocolFile, raw, what)
    body = {k: v for k, v in raw.items() if k not in ("format", "version")}
    if "seeds" in body:
        body["seeds"] = tuple(body["seeds"])
    protocol = Protocol(name=name, **body)
    try:
        protocol.make_pruner()
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what}: pruner {protocol.pruner}: {exc}") from None
    sgd = checked.optimizer if isinstance(checked.optimizer, Sgd) else None
    checks = [
        (protocol.train_size is None or protocol.train_size >= protocol.batch_size,
         "train_size must be at least batch_size"),
        (protocol.confirm_seeds in (0,) or protocol.confirm_seeds >= 3,
         "confirm_seeds must be 0 (no confirmation) or >= 3 (no test runs on fewer paired seeds)"),
        (protocol.confirm_cost_ratio == 0 or protocol.confirm_cost_ratio > 1,
         "confirm_cost_ratio must be 0 (off) or above 1 (a job this many times the median's cost)"),
        (protocol.confirm_max_seeds >= protocol.confirm_seeds,
         "confirm_max_seeds must be >= confirm_seeds (the race starts with confirm_seeds)"),
        (protocol.confirm_train_size is None or protocol.confirm_train_size >= protocol.batch_size,
         "confirm_train_size must be at least batch_size"),
        (not (sgd and sgd.nesterov and sgd.momentum == 0),
         "optimizer.nesterov needs momentum > 0; set nesterov: false or a momentum"),
        ((protocol.objective == "epochs_to") == (protocol.objective_target is not None),
         "objective_target is the accuracy epochs_to counts to: set both, or neither"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(f"{what}: {msg}")
    for step, options in protocol.init_steps.items():  # the step's own check: names and ranges
        try:
            StepInit(step, options)
        except UsageError as exc:
            raise UsageError(f"{what}: init_steps.{step}: {exc}") from None
    _check_archs(protocol, where)
    return protocol


_RATE = "a number >= 0"


class Sgd(StrictModel):
    """SGD with momentum; the defaults are :func:`initsearch.trial.make_optimizer`'s."""

    name: Literal["sgd"] = "sgd"
    lr: float = Field(ge=0, description=_RATE)
    momentum: float = Field(0.9, ge=0, description=_RATE)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, description=_RATE)


class AdamW(StrictModel):
    """AdamW; the defaults are :func:`initsearch.trial.make_optimizer`'s."""

    name: Literal["adamw"]
    lr: float = Field(ge=0, description=_RATE)
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.9, 0.999], min_length=2, max_length=2,
        description="two numbers in [0, 1), e.g. [0.9, 0.999]")
    eps: float = Field(1e-8, ge=0, description=_RATE)
    weight_decay: float = Field(0.01, ge=0, description=_RATE)


_OPTIMIZERS: dict[str, type[StrictModel]] = {"sgd": Sgd, "adamw": AdamW}


def _optimizer_keys(value: Any) -> Any:
    """Name the optimizer (absent: sgd), and refuse a missing lr or an unknown key with the fix
    (a key of the other optimizer: switch to it). An unknown name is the union's to report."""
    if not isinstance(value, dict):
        return value
    value = {"name": "sgd", **value}
    model = _OPTIMIZERS.get(value["name"]) if isinstance(value["name"], str) else None
    if model is None:
        return value
    unknown = set(value) - set(model.model_fields)
    if unknown or "lr" not in value:
        fix = "".join(f"; {', '.join(sorted(unknown & set(other.model_fields)))} belong(s) to "
                      f"{o}: set name: {o}" for o, other in _OPTIMIZERS.items()
                      if other is not model and unknown & set(other.model_fields))
        raise refuse(f"needs lr and takes only {', '.join(model.model_fields)} for {value['name']}"
                     f"{f', not {sorted(unknown, key=str)}' if unknown else ''}{fix}")
    return value


Optimizer = Annotated[Sgd | AdamW, Field(discriminator="name"), BeforeValidator(_optimizer_keys)]


class Pruner(BaseModel):
    """``name`` picks Optuna's pruner; the other keys are its options, checked by building it
    (:meth:`Protocol.make_pruner`)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: Literal[PRUNERS] = "successive_halving"


def _positive_clip(value: float) -> float:
    """``grad_clip`` when on: a norm > 0 (null, off, never gets here)."""
    if value <= 0:
        raise refuse(f"must be > 0 (the max global gradient norm) or null (off), not {value!r}")
    return value


class _Keys(StrictModel):
    """Every protocol key with its type and range. Each may be left out -- :class:`Protocol`
    holds the defaults, so a default of None here only means "absent" and is never used."""

    description: str = None
    device: Literal["auto", "cpu", "cuda"] = None
    train_size: int | None = Field(None, ge=1)
    val_size: int = Field(None, ge=1)
    test_size: int | None = Field(None, ge=1)
    split_seed: int = None
    epochs: int = Field(None, ge=1, description="an integer >= 1")
    pruner: Pruner = None
    batch_size: int = Field(None, ge=1)
    eval_batch_size: int = Field(None, ge=1)
    optimizer: Optimizer = None
    lr_schedule: Literal["cosine", "linear", "constant"] = None
    warmup_epochs: float = Field(None, ge=0)
    grad_clip: Annotated[float, AfterValidator(_positive_clip)] | None = None
    aux_loss_weight: float = Field(None, ge=0)
    label_smoothing: float = Field(None, ge=0, le=1)
    crop_padding: int = Field(None, ge=0)
    flip: bool = None
    seeds: list[int] = Field(None, min_length=1)
    threads_per_trial: int = Field(None, ge=1)
    gpus_per_trial: float = Field(None, ge=0)
    channels_last: bool = None
    precision: Literal["fp32", "bf16", "auto"] = None
    compile: bool = None
    confirm_seeds: int = Field(None, ge=0)
    confirm_size: int = Field(None, ge=1)
    confirm_epochs: int | None = Field(None, ge=1)
    confirm_train_size: int | None = Field(None, ge=1)
    confirm_max_seeds: int = Field(None, ge=3)
    min_effect: float = Field(None, gt=0, lt=1, description="an accuracy difference in (0, 1), e.g. 0.01 for 1 pp")
    confirm_rank: Literal[RANKS] = None
    confirm_cost_ratio: float = Field(None, ge=0, description="0 (off) or a ratio > 1, e.g. 4")
    confirm_failures: Literal[FAILURES] = None
    objective: Literal[OBJECTIVES] = None
    objective_target: float | None = Field(None, gt=0, lt=1, description="an accuracy in (0, 1), e.g. 0.4")
    init_steps: dict[str, dict[str, Any]] = None


class ProtocolFile(_Keys):
    """A protocol file. Its ``archs`` sections are checked one by one, each as an
    :class:`ArchSection` and once applied (:func:`_check_archs`), so an error names the arch."""

    format: Literal[FORMAT]
    version: Literal[VERSION]
    archs: dict[str, dict[str, Any]] = {}


class ArchSection(_Keys):
    """``archs.<arch>``: the arch's sizes (``options``) and the protocol keys it overrides;
    its ``optimizer`` may give only the keys it changes (merged key by key,
    :meth:`Protocol.for_arch`)."""

    options: dict[str, Any] = {}
    optimizer: dict[str, Any] = None


def _merge_optimizer(base: dict, override: dict) -> dict:
    """``override`` over ``base`` key by key when both name the same optimizer; else ``override``."""
    same = override.get("name", base.get("name", "sgd")) == base.get("name", "sgd")
    return {**base, **override} if same else dict(override)


def _check_archs(protocol: Protocol, where: str) -> None:
    """Each ``archs`` section names a built-in architecture, is a valid :class:`ArchSection`,
    and gives a valid protocol once applied (:meth:`Protocol.for_arch`)."""
    from initsearch.archs import ARCHS

    for arch in protocol.archs:
        if arch not in ARCHS:
            raise UsageError(f"protocol {where}: archs.{arch}: unknown architecture; "
                             f"choose from {', '.join(ARCHS)}")
        validate(ArchSection, protocol.archs[arch], f"protocol {where} (archs.{arch})")
        applied = {k: v for k, v in protocol.for_arch(arch)[0].to_dict().items()
                   if k not in ("name", "archs", "stage")}
        parse_protocol({"format": FORMAT, "version": VERSION, **applied}, protocol.name,
                       f"{where} (archs.{arch})")
