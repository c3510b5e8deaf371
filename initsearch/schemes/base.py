"""What every network-level init step shares: the step interface, init data, the forward mode.

A *layer scheme* (:mod:`initsearch.schemes.layer`) re-initializes one module on its own. A
*step* acts on the whole network after the layer schemes: it needs the network's structure
(Fixup counts residual branches, RISOTTO pairs a branch with its skip, emergence scaling
counts depth) or data (LSUV, GradInit). A step is a function::

    step_(model, roles, data=None, **options) -> dict   # a JSON-able report

``roles`` is :func:`initsearch.roles.discover_roles` of the model (with ``roles.blocks``, its
residual blocks); the report says what the step did (layers touched, forward/backward passes, whether it converged).
"""
from __future__ import annotations

import contextlib
import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from initsearch.errors import UsageError
from initsearch.roles import ROLES, units

_NORMS = (nn.modules.batchnorm._BatchNorm,)


def main_loss(out: Any, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the main output (a model may return ``(logits, aux_logits)``)."""
    return F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)


@dataclass
class InitData:
    """Training data for data-dependent steps: standardized inputs and labels on the model's
    device, the training loss, and a private RNG for drawing batches. ``prepare``, if given,
    turns a batch of stored inputs into the model's (the trial keeps uint8 images on the
    device and standardizes only the batches drawn).

    Example:
        >>> data = InitData(x_train, y_train)                            # doctest: +SKIP
        >>> recipe.apply(model, data=data, seed=0)                       # doctest: +SKIP
    """

    x: torch.Tensor
    y: torch.Tensor
    loss: Callable[[Any, torch.Tensor], torch.Tensor] = main_loss
    seed: int = 0
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y) or len(self.x) == 0:
            raise UsageError(f"init data needs as many labels as inputs (got {len(self.x)} inputs, "
                             f"{len(self.y)} labels)")
        self.generator = torch.Generator().manual_seed(self.seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` examples drawn without replacement (all of them if there are fewer)."""
        idx = torch.randperm(len(self.y), generator=self.generator)[:size].to(self.y.device)
        x = self.x[idx]
        return (self.prepare(x) if self.prepare else x), self.y[idx]


@contextlib.contextmanager
def init_forward_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Forward as in training, without side effects: every branch (auxiliary heads too) runs and
    BatchNorm normalizes with batch statistics, but running statistics are not updated and
    dropout is off. Restores every module's mode and flag afterwards (GradInit's BN handling,
    used by every data-dependent step)."""
    modes = {m: m.training for m in model.modules()}
    tracking = {m: m.track_running_stats for m in model.modules() if isinstance(m, _NORMS)}
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        for m in tracking:
            m.track_running_stats = False  # train mode + no tracking: batch stats, buffers untouched
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, flag in tracking.items():
            m.track_running_stats = flag


def modules_by_path(model: nn.Module, paths) -> dict[str, nn.Module]:
    """The units at ``paths`` (layers, or tensors a container owns)."""
    found = units(model)
    return {p: found[p] for p in paths}


def select(roles: Mapping[str, str], include: Sequence[str] | str, step: str) -> list[str]:
    """Paths whose role is in ``include`` (roles and/or globs over module paths, or one string)
    or which match a glob in it, in registration order.

    Raises:
        UsageError: an entry of ``include`` is neither a role nor a glob matching a path.
    """
    include = (include,) if isinstance(include, str) else tuple(include)
    for item in include:
        if item not in ROLES and not any(fnmatch.fnmatchcase(p, item) for p in roles):
            raise UsageError(f"{step} include {item!r} is neither a role ({', '.join(ROLES)}) nor "
                             "a glob matching a module path; see initsearch.discover_roles(model)")
    return [p for p, r in roles.items()
            if r in include or any(fnmatch.fnmatchcase(p, g) for g in include)]


@dataclass(frozen=True)
class Step:
    """A network-level step: its function, its options with defaults, and whether it needs data.

    ``choices`` restricts string options; numeric options take any value of the default's type
    within ``bounds`` (inclusive) when given.
    """

    name: str
    fn: Callable[..., dict]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    needs_data: bool = False
    summary: str = ""
    #: For a data step: ``probe(model, roles, x)`` raises UsageError when the step cannot run on
    #: the model at all (e.g. it needs second derivatives the model lacks); ``x`` is a small
    #: example input. Lets a search leave such a baseline out instead of failing its trials.
    probe: Callable[..., None] | None = None

    def check_options(self, options: Mapping[str, Any]) -> str | None:
        """None if ``options`` are valid for this step, else what is wrong."""
        for key, value in options.items():
            if key not in self.defaults:
                known = ", ".join(self.defaults) or "none"
                return f"step {self.name!r} has no option {key!r} (options: {known})"
            default = self.defaults[key]
            if key in self.choices and value not in self.choices[key]:
                return f"step {self.name!r} option {key}={value!r}: use one of {self.choices[key]}"
            numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
            if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))
                            or (isinstance(default, int) and not isinstance(value, int))):
                return f"step {self.name!r} option {key} must be a {type(default).__name__}, not {value!r}"
            lo, hi = self.bounds.get(key, (float("-inf"), float("inf")))
            if numeric and not lo <= value <= hi:
                return f"step {self.name!r} option {key}={value!r} is outside [{lo}, {hi}]"
        return None

    def __call__(self, model: nn.Module, roles: Mapping[str, str], data: InitData | None = None,
                 **options: Any) -> dict:
        """Run the step with its defaults under ``options``; the report gains ``seconds``."""
        start = time.perf_counter()
        report = self.fn(model, roles, data, **{**self.defaults, **options})
        return {**report, "seconds": time.perf_counter() - start}
