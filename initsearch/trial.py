"""Trial: train one recipe under one protocol and yield per-epoch metrics.

This is the only training loop; both search backends run it (Ray inside a worker, the local
backend in-process). The trial is a generator: after each epoch it yields
``{epoch, train_loss, val_loss, val_acc, train_seconds, eval_seconds}`` (plus ``init_seconds``
and ``init_passes`` -- the init's cost -- after the first, ``test_acc`` after the last epoch, and
for a confirmation job, ``stage: confirm``, ``confirm_acc`` on the confirm split after the last
epoch -- after every epoch when the protocol's ``objective`` reads the whole curve: what its race
decides on; ``val_acc`` is always the select split's) and
the caller decides whether to go on -- that is where pruning happens. A trial whose result the
store already has (:mod:`initsearch.cache`) replays those epochs first, marked ``cached``, and
trains only if asked for more: from scratch, the seconds of the epochs it trained again reported
as ``retrain_seconds`` with the first new epoch.

The splits go to the training device once per process, as uint8 (:func:`on_device`); each
minibatch is standardized and augmented on the fly from crops and flips drawn for the whole
epoch (no DataLoader, no host sync inside an epoch). With several seeds the replicas train in
lockstep and the metrics are their means. bf16 autocast with fp32 master weights
(``precision: bf16``, or ``auto``: where the device computes bf16 natively,
:func:`~initsearch.protocol.resolve_precision`); on CUDA cuDNN autotuning; optionally ``torch.compile`` (``compile:
true``).

The optimizer is the protocol's (:func:`make_optimizer`: SGD with Nesterov momentum, or AdamW)
over two parameter groups (:func:`param_groups`): weight decay on conv/linear weights, none on
biases, 1-d parameters and the units whose role (from the recipe's plan) is a norm, embedding,
token, layer scale or scalar. The learning rate warms up linearly for ``warmup_epochs``, then
follows ``lr_schedule`` (:func:`lr_factors`, a table written into the groups each step); with
``grad_clip`` the global gradient norm is clipped every step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from initsearch.data import Augment, ImageSet, Splits, standardize
from initsearch.protocol import Protocol, resolve_device, resolve_precision
from initsearch.recipe import Recipe, StepInit
from initsearch.roles import Roles, tensors, units
from initsearch.schemes import InitData


#: How far GradInit moved the init, after the first epoch of a recipe with a GradInit step (the
#: smallest and largest learned scale, constraint steps and iterations, mean over the seeds): a
#: reader sees when it did nothing.
GRADINIT_METRICS = ("gradinit_scale_min", "gradinit_scale_max", "gradinit_constraint_steps",
                    "gradinit_iterations")
#: The keys a trial yields each epoch (``test_acc`` only after the last one).
METRICS = ("epoch", "train_loss", "val_loss", "val_acc", "confirm_acc", "test_acc", "train_seconds",
           "eval_seconds", "init_seconds", "init_passes", "retrain_seconds", *GRADINIT_METRICS)
#: The metrics that are seconds of compute (a trial's cost is their sum over its epochs).
SECONDS = ("init_seconds", "train_seconds", "eval_seconds", "retrain_seconds")


@dataclass(frozen=True)
class TrialConfig:
    """Everything a worker needs to run one trial (plain data, so Ray can ship it)."""

    number: int
    recipe: dict
    protocol: dict
    cached: tuple[dict, ...] = ()  # epochs 1..k of the same trial, read from the store

    def to_dict(self) -> dict:
        return {"number": self.number, "recipe": self.recipe, "protocol": self.protocol,
                "cached": list(self.cached)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        return cls(d["number"], d["recipe"], d["protocol"], tuple(d.get("cached", ())))


def diverged(metrics: dict) -> str | None:
    """Why an epoch's metrics end the trial as diverged (``"diverged at epoch 3: train_loss
    nan"``), or None: a non-finite training or validation loss is a result, not a score."""
    for key in ("train_loss", "val_loss"):
        value = float(metrics.get(key, 0.0))
        if not math.isfinite(value):
            return f"diverged at epoch {int(metrics['epoch'])}: {key} {value}"
    return None


def failure_text(exc: BaseException) -> str:
    """What to record when a trial raised: ``out of memory: ...`` for a CUDA (or CPU allocator)
    out-of-memory error -- after emptying the CUDA cache, so the next trial on that device starts
    clean -- else the last frames of the traceback."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return f"out of memory: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
    return "".join(traceback.format_exception(exc, limit=-3))


def deep_supervision_loss(out, y: torch.Tensor, aux_weight: float,
                          label_smoothing: float = 0.0) -> torch.Tensor:
    """``CE(main) + aux_weight * sum_k CE(aux_k)``; a plain CE when the model has one head."""
    main, aux = out if isinstance(out, tuple) else (out, ())
    loss = F.cross_entropy(main, y, label_smoothing=label_smoothing)
    for logits in aux:
        loss = loss + aux_weight * F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    return loss


#: Roles whose units' parameters never decay (biases and 1-d parameters never decay either).
NO_DECAY_ROLES = ("norm", "embedding", "pos_embedding", "token", "layer_scale", "branch_scale",
                  "scalar_bias")


def param_groups(model: nn.Module, plan: list[dict], weight_decay: float) -> list[dict]:
    """Two optimizer groups covering every parameter of ``model`` once: ``weight_decay`` on the
    rest, none on every parameter with ``ndim <= 1`` (biases, norm affines, scalars) and on the
    parameters of the plan rows whose role is in :data:`NO_DECAY_ROLES`; parameters no row
    names decay when ``ndim > 1``. A row's ``path`` names a unit (:func:`initsearch.roles.units`:
    a layer's own parameters, or a tensor a container owns directly, such as a class token)."""
    found = units(model)
    exempt = {id(t) for row in plan if row["role"] in NO_DECAY_ROLES
              for t in tensors(found[row["path"]])}
    decay, rest = [], []
    for q in model.parameters():  # shared parameters once, in registration order
        (rest if q.ndim <= 1 or id(q) in exempt else decay).append(q)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, plan: list[dict], config: dict) -> torch.optim.Optimizer:
    """The protocol's optimizer (``config`` is its ``optimizer`` mapping, checked by
    :mod:`initsearch.protocol`) over :func:`param_groups`: ``name`` ``sgd`` (default; momentum
    0.9, Nesterov, weight_decay 0) or ``adamw`` (betas (0.9, 0.999), eps 1e-8, weight_decay 0.01)."""
    name = config.get("name", "sgd")
    if name == "sgd":
        return torch.optim.SGD(param_groups(model, plan, config.get("weight_decay", 0)),
                               lr=config["lr"], momentum=config.get("momentum", 0.9),
                               nesterov=config.get("nesterov", True))
    if name == "adamw":
        return torch.optim.AdamW(param_groups(model, plan, config.get("weight_decay", 0.01)),
                                 lr=config["lr"], betas=tuple(config.get("betas", (0.9, 0.999))),
                                 eps=config.get("eps", 1e-8))
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


def lr_factors(p: Protocol, steps_per_epoch: int) -> list[float]:
    """The learning-rate factor of every step of all ``p.epochs`` (:func:`lr_factor`), computed
    once: the loop writes ``base_lr * factor`` into each group, the value LambdaLR would set,
    without its per-step Python machinery."""
    total, warmup = p.epochs * steps_per_epoch, round(p.warmup_epochs * steps_per_epoch)
    return [lr_factor(s, total, warmup, p.lr_schedule) for s in range(total)]


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               p: Protocol) -> torch.Tensor:
    """One optimizer step on a minibatch (the loss detached): forward and loss under bf16
    autocast when ``p.precision`` is ``bf16`` (the weights and the step stay fp32); the global
    gradient norm is clipped to ``p.grad_clip`` after the backward pass, before the step."""
    with _autocast(x.device, p):
        loss = deep_supervision_loss(model(x), y, p.aux_loss_weight, p.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if p.grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
    opt.step()
    return loss.detach()


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine / linear decay to 0, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return {"cosine": 0.5 * (1 + math.cos(math.pi * t)), "linear": 1 - t, "constant": 1.0}[schedule]


@dataclass
class _Replica:
    model: nn.Module
    forward: nn.Module  # the model, or its torch.compile'd wrapper (same parameters)
    opt: torch.optim.Optimizer
    base_lrs: list[float]
    gen: torch.Generator


def run_trial(config: TrialConfig, splits: Splits, model_fn: Callable[[], nn.Module],
              roles: Roles | None = None) -> Iterator[dict]:
    """Train ``config.recipe`` under ``config.protocol``; yield metrics after every epoch.
    ``roles``: the model's roles under the recipe's overrides, if already discovered (a search
    discovers them once and hands them to every trial). Epochs in ``config.cached`` are
    yielded first (with ``cached: True``); training starts only if the caller asks for more,
    and then from scratch, yielding only the epochs after them (the first of them with
    ``retrain_seconds``: what training the cached epochs again cost)."""
    for metrics in config.cached:
        yield {**metrics, "cached": True}
    if len(config.cached) < config.protocol["epochs"]:
        redone = 0.0  # the cached epochs, trained again (there is no checkpoint to go on from)
        for metrics in _train(config, splits, model_fn, roles):
            if metrics["epoch"] <= len(config.cached):
                redone += sum(metrics.get(k, 0.0) for k in SECONDS)
                continue
            if redone:  # spent now, so it counts: once, with the first new epoch
                metrics["retrain_seconds"], redone = redone, 0.0
            yield metrics


def on_device(splits: Splits, device: torch.device) -> tuple[ImageSet, ImageSet, ImageSet, ImageSet]:
    """``splits`` on ``device`` as uint8, uploaded once per process: later trials on the same
    data and device (a Ray worker runs many) reuse the copy; only the newest is kept."""
    key = (splits.fingerprint, str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()
        _ON_DEVICE[key] = tuple(ImageSet(s.x.to(device), s.y.to(device))
                                for s in (splits.train, splits.val, splits.confirm, splits.test))
    return _ON_DEVICE[key]


_ON_DEVICE: dict[tuple[str, str], tuple[ImageSet, ...]] = {}


def _gradinit_moved(report: dict) -> dict[str, float]:
    scales = list(report["scales"].values()) or [1.0]
    return {"gradinit_scale_min": min(scales), "gradinit_scale_max": max(scales),
            "gradinit_constraint_steps": report["constraint_steps"],
            "gradinit_iterations": report["iterations"]}


def with_protocol_steps(recipe: Recipe, p: Protocol) -> Recipe:
    """``recipe`` with the protocol's ``init_steps`` options wherever the recipe leaves a step's
    option unset (the ``smoke`` profile caps GradInit's iterations so that tests take seconds;
    every other profile runs the paper's count)."""
    if not p.init_steps:
        return recipe
    steps = tuple(StepInit(s.name, {**p.init_steps.get(s.name, {}), **s.options}) for s in recipe.steps)
    return dataclasses.replace(recipe, steps=steps)


def _train(config: TrialConfig, splits: Splits, model_fn: Callable[[], nn.Module],
           roles: Roles | None) -> Iterator[dict]:
    p = Protocol.from_dict(config.protocol)
    recipe = with_protocol_steps(Recipe.from_dict(config.recipe), p)
    device = resolve_device(p.device)
    p = dataclasses.replace(p, precision=resolve_precision(p.precision, device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its kernels once, then reuses the fastest
    fmt = torch.channels_last if p.channels_last else torch.contiguous_format
    prepare = functools.partial(standardize, channels_last=p.channels_last)
    train, val, confirm, test = on_device(splits, device)
    if p.train_size and p.train_size < len(train):  # the search trains on fewer than a confirmation
        train = ImageSet(train.x[:p.train_size], train.y[:p.train_size])
    steps_per_epoch = len(train) // p.batch_size  # drop the ragged last batch: keeps BN sane
    factors = lr_factors(p, steps_per_epoch)

    replicas, init_seconds, init_passes, moved = [], 0.0, 0, []
    for seed in p.seeds:
        torch.manual_seed(seed)
        model = model_fn().to(device, memory_format=fmt)
        t_init = _now(device)
        init_data = InitData(train.x, train.y, seed=seed, prepare=prepare, loss=functools.partial(
            deep_supervision_loss, aux_weight=p.aux_loss_weight, label_smoothing=p.label_smoothing))
        report = recipe.apply(model, data=init_data, seed=seed, roles=roles)
        init_seconds += _now(device) - t_init
        init_passes += report.forward_passes + report.backward_passes
        moved += [_gradinit_moved(r) for name, r in report.steps.items() if name.startswith("gradinit")]
        opt = make_optimizer(model, report.plan, p.optimizer)
        forward = torch.compile(model) if p.compile else model  # after the init: it may rewrite modules
        replicas.append(_Replica(model, forward, opt, [g["lr"] for g in opt.param_groups],
                                 torch.Generator(device).manual_seed(seed)))

    for epoch in range(1, p.epochs + 1):
        t0 = _now(device)
        first = (epoch - 1) * steps_per_epoch
        train_loss = sum(_train_epoch(r, train, p, prepare, factors[first:first + steps_per_epoch])
                         for r in replicas) / len(replicas)
        t1 = _now(device)
        val_scores = [_evaluate(r.forward, val, p, prepare) for r in replicas]
        metrics = {"epoch": epoch, "train_loss": train_loss,
                   "val_loss": sum(v[0] for v in val_scores) / len(val_scores),
                   "val_acc": sum(v[1] for v in val_scores) / len(val_scores),
                   "train_seconds": t1 - t0}
        if epoch == 1:  # the init's cost (data-dependent steps), once per trial, all seeds
            metrics.update(init_seconds=init_seconds, init_passes=init_passes)
            metrics.update({k: sum(m[k] for m in moved) / len(moved) for k in GRADINIT_METRICS
                            if moved})
        # what the race decides on, images the search never saw: after the last epoch, or after
        # every one when the objective reads the whole curve
        if p.stage == "confirm" and (epoch == p.epochs or p.objective != "final"):
            scores = [_evaluate(r.forward, confirm, p, prepare) for r in replicas]
            metrics["confirm_acc"] = sum(c[1] for c in scores) / len(scores)
        if epoch == p.epochs:  # the test split is only for the final report, never for decisions
            scores = [_evaluate(r.forward, test, p, prepare) for r in replicas]
            metrics["test_acc"] = sum(t[1] for t in scores) / len(scores)
        metrics["eval_seconds"] = _now(device) - t1
        yield metrics


def _train_epoch(r: _Replica, data: ImageSet, p: Protocol, prepare: Callable, factors: list[float]) -> float:
    r.model.train()
    n = len(data.y)
    augment = Augment.draw(n, pad=p.crop_padding, flip=p.flip, generator=r.gen)
    order = torch.randperm(n, device=data.y.device, generator=r.gen)
    total = torch.zeros((), device=data.y.device)
    for i, factor in enumerate(factors):
        for group, lr in zip(r.opt.param_groups, r.base_lrs):
            group["lr"] = lr * factor
        idx = order[i * p.batch_size:(i + 1) * p.batch_size]
        x = augment.take(idx)(prepare(data.x[idx]))  # standardize, then pad with zeros: the mean
        total += train_step(r.forward, r.opt, x, data.y[idx], p)  # no .item() per step: no sync
    return float(total) / len(factors)


@torch.inference_mode()  # no autograd bookkeeping at all: the outputs never enter a graph
def _evaluate(model: nn.Module, data: ImageSet, p: Protocol, prepare: Callable) -> tuple[float, float]:
    model.eval()
    x, y, batch = data.x, data.y, p.eval_batch_size
    loss, correct = torch.zeros((), device=y.device), torch.zeros((), device=y.device)
    for i in range(0, len(y), batch):
        with _autocast(y.device, p):
            logits = model(prepare(x[i:i + batch]))
        loss += F.cross_entropy(logits.float(), y[i:i + batch], reduction="sum")
        correct += (logits.argmax(1) == y[i:i + batch]).sum()
    return float(loss) / len(y), float(correct) / len(y)


def _autocast(device: torch.device, p: Protocol) -> torch.autocast:
    """bf16 autocast for ``precision: bf16`` (matmuls and convs in bf16, reductions and the
    loss in fp32, as autocast's op lists say); a no-op for fp32 (``auto`` is resolved before)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=p.precision == "bf16")


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
