"""LSUV: layer-sequential unit-variance init (Mishkin & Matas, "All you need is a good init",
ICLR 2016, arXiv 1511.06422).

Rule. Visit the conv/linear layers ``L`` in forward-execution order on one fixed minibatch and
rescale each one's weight until its output has unit variance::

    B_L = W_L * x_L (+ b_L)              # the layer's own output: pre-activation, pre-norm
    while |Var(B_L) - 1| >= tol and i < max_iter:
        W_L <- W_L / sqrt(Var(B_L));  i += 1;  recompute B_L
    (move on to the next layer, converged or not)

``Var`` is the population variance over *all* elements of the output (batch, channels, space),
not per channel, and ``tol`` bounds the variance (as in the paper's Algorithm 1; the PyTorch
ports test the std instead). Biases are not shifted (the paper rescales weights only; the old
PyTorch port's mean shift is not part of the method). For a bias-free layer the output is linear
in ``W``, so one correction gives variance 1 up to rounding; more are needed only when a
nonzero bias adds variance that rescaling ``W`` does not touch (and if the bias alone has
variance above ``1 + tol`` the layer cannot converge: the cap is hit and the report says so).

Orthonormal pre-init. The paper's first step (orthonormal weights, zero biases) is *not* done
here: a recipe chooses the ``orthogonal`` layer scheme (:func:`initsearch.schemes.layer.
orthogonal_`) for the roles it wants, and this step only rescales what the layer schemes drew.

Layers touched. The conv/linear modules (and attentions' projections) whose role (or path glob)
is in ``include`` -- by default every weight role, auxiliary heads and classifier included;
embedding tables are looked up, not applied to the data, and are left alone. Two kinds are skipped and
reported: a layer whose weight is all zero (its output variance cannot be set by rescaling, and
dividing by a zero variance would blow it up) and a layer the forward pass never runs (e.g. a
head used only in some mode). A layer that runs more than once per forward (weight sharing) is
measured at its first call.

LSUV + LION-DG hybrid. A recipe zeroes the auxiliary heads with the ``zero`` layer scheme (a
layer scheme, so it runs first) and lists ``lsuv`` as a step (data steps run last). LSUV then
skips the zero heads, so they stay exactly zero and the auxiliary losses send exactly zero
gradient into the backbone at step 0, while every backbone layer gets unit variance. This is
the same result as the abstract's order (LSUV on the backbone, then zero the heads): the side
taps feed nothing back, so a head's value changes no backbone variance.

Attention. Every linear map is brought to unit output variance, also inside an attention. An
``nn.MultiheadAttention`` (role ``attn_qkv``) computes its q, k and v projections and its output
projection (``out_proj``, role ``attn_out``) in one functional call that no hook on the
projections sees, so they are measured where they are visible: each q/k/v block's output is
computed from the attention's own inputs (``F.linear(query, W_q, b_q)``, ...) and that block is
rescaled; ``out_proj``'s output is the attention's output. A layer that a model only uses
through its weight in a function (torchvision's Swin) is never called, so it is reported as not
run and left alone.

Data dependence and BatchNorm. One minibatch of ``batch_size`` from :meth:`InitData.batch`,
forwarded in :func:`~initsearch.schemes.base.init_forward_mode`: train-mode forward, so every
auxiliary head runs and BatchNorm normalizes with batch statistics, while running statistics,
dropout and every module's train/eval mode are left as they were.

Order. The order is recorded with forward hooks on one full forward pass -- not module
registration order, which the reference PyTorch ports use and which differs from execution
order whenever a model registers layers out of order.

Cost. No backward passes. Forward passes: 1 full pass to record the order, then 1 partial pass
per visited layer, stopped (by an exception raised from a hook, caught here) right after that
layer, which keeps the inputs the layer saw. The layers before it do not change while its own
weight is rescaled, so each re-measurement after a correction runs only the layer itself on
those inputs -- the same numbers as forwarding the prefix again, at the cost of one layer. A
network of ``n`` layers of evenly spread cost thus costs about ``n / 2`` full-forward
equivalents plus one layer evaluation per correction. ``forward_passes`` in the report counts
the full and partial passes.

Only the weight roles are rescaled (``include``); layer scales, biases owned apart from
their layer, attention tensors, learnable activations and recurrent layers keep their init and
are simply part of the forward pass LSUV measures.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from initsearch.errors import UsageError
from initsearch.roles import WEIGHT_ROLES, matrices
from initsearch.schemes.base import InitData, Step, init_forward_mode, select
from initsearch.schemes.layer import WEIGHT_LAYERS


class _Stop(Exception):
    """Raised from a forward hook to end a partial forward pass right after the layer measured."""


def lsuv_(model: nn.Module, roles: Mapping[str, str], data: InitData | None = None,
          tol: float = 0.1, max_iter: int = 10, batch_size: int = 256,
          include: Sequence[str] | str = WEIGHT_ROLES) -> dict[str, Any]:
    """Rescale each selected conv/linear weight, in forward order, to unit output variance.

    Args:
        model: the network, already initialized by the layer schemes (in place).
        roles: :func:`initsearch.roles.discover_roles` of ``model``.
        data: the init data; one minibatch of ``batch_size`` is drawn from it.
        tol: stop correcting a layer once ``|Var(output) - 1| < tol`` (variance, as the paper).
        max_iter: the most corrections per layer; a layer still off after them is reported as
            not converged and LSUV moves on.
        batch_size: size of the one fixed minibatch (all of the data if there is less).
        include: roles and/or globs over module paths (a list or tuple, or one string); only
            the conv/linear modules among them are touched.

    Returns:
        ``{"layers": [row, ...], "forward_passes", "backward_passes",
        "converged_all", "batch_size"}``. One row per selected layer, visited ones in execution
        order then the ones never run: ``path``, ``role``, ``initial_variance``, ``variance``
        (final), ``iterations`` (corrections made), ``converged`` (None where not applicable)
        and ``skipped`` (None, or why the layer was left alone). ``converged_all`` is True when
        every layer LSUV adjusted ended within ``tol``.

    Raises:
        UsageError: no data, or an ``include`` entry that is neither a role nor matches a path.
    """
    if data is None:
        raise UsageError("lsuv needs data: pass data=InitData(x, y)")
    named = dict(model.named_modules())
    probes = {p: probe for path in select(roles, include, "lsuv")
              if isinstance(named.get(path), WEIGHT_LAYERS) and not isinstance(named[path], nn.Embedding)
              for p, probe in _probes(path, named).items()}
    x, _ = data.batch(batch_size)

    rows: list[dict[str, Any]] = []
    with init_forward_mode(model), torch.no_grad():
        order = _execution_order(model, x, probes)
        passes = 1
        for key in order:
            row, n = _unit_variance_(model, x, key, probes[key], roles[probes[key].path], tol, max_iter)
            rows.append(row)
            passes += n
    rows += [_row(k, roles[p.path], skipped="not run by the forward pass") for k, p in probes.items()
             if k not in order]
    return {
        "layers": rows,
        "forward_passes": passes,
        "backward_passes": 0,
        "converged_all": all(r["converged"] for r in rows if r["converged"] is not None),
        "batch_size": len(x),
    }


class _Probe:
    """Where one linear map's output is seen: the module whose forward hook sees it, how to read
    it there, and the weight (and bias) to rescale."""

    def __init__(self, path: str, module: nn.Module, weight: torch.Tensor,
                 bias: torch.Tensor | None = None, block: int | None = None) -> None:
        self.path, self.module, self.weight, self.bias, self.block = path, module, weight, bias, block

    def output(self, args: tuple, kwargs: dict, out: Any = None) -> torch.Tensor:
        """The map's output, read from the module's output ``out`` -- or, with ``out`` None,
        computed again from the module's inputs ``args`` and ``kwargs``."""
        if self.block is None:  # the module's own output (an attention returns a tuple)
            out = self.module(*args, **kwargs) if out is None else out
            return out[0] if isinstance(out, tuple) else out
        name = ("query", "key", "value")[self.block]  # q/k/v from the attention's inputs
        source = args[self.block] if len(args) > self.block else kwargs[name]
        return F.linear(source, self.weight, self.bias)


def _probes(path: str, named: Mapping[str, nn.Module]) -> dict[str, _Probe]:
    """The linear maps of one layer: itself, or an attention's q, k and v blocks (its output
    projection is a unit of its own, seen at the attention's output)."""
    module = named[path]
    parent = named.get(path.rpartition(".")[0]) if "." in path else None
    if isinstance(module, nn.MultiheadAttention):
        return {f"{path}[{'qkv'[i]}]": _Probe(path, module, m.weight, m.bias, block=i)
                for i, m in enumerate(matrices(module))}
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        return {path: _Probe(path, parent, module.weight)}
    return {path: _Probe(path, module, module.weight)}


def _execution_order(model: nn.Module, x: torch.Tensor, probes: Mapping[str, _Probe]) -> list[str]:
    """Keys of ``probes`` in the order one forward pass first shows their outputs."""
    order: list[str] = []

    def record(keys: list[str]):
        def hook(module, inputs, output):
            order.extend(k for k in keys if k not in order)
        return hook

    by_module: dict[nn.Module, list[str]] = {}
    for key, probe in probes.items():
        by_module.setdefault(probe.module, []).append(key)
    handles = [m.register_forward_hook(record(keys)) for m, keys in by_module.items()]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _layer_variance(model: nn.Module, x: torch.Tensor, probe: _Probe) -> tuple[float, Callable[[], float]]:
    """The variance over all elements of the probed output, forwarding only as far as it, and
    a function that measures it again from the inputs the layer saw (only the layer runs)."""
    seen: list[tuple] = []

    def hook(module, args, kwargs, output):
        seen.append((args, kwargs, probe.output(args, kwargs, output)))
        raise _Stop

    handle = probe.module.register_forward_hook(hook, with_kwargs=True)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    args, kwargs, out = seen[0]
    variance = lambda y: torch.var(y.detach().double(), correction=0).item()
    return variance(out), lambda: variance(probe.output(args, kwargs))


def _unit_variance_(model: nn.Module, x: torch.Tensor, key: str, probe: _Probe, role: str,
                    tol: float, max_iter: int) -> tuple[dict[str, Any], int]:
    """LSUV's inner loop on one linear map; returns its report row and the forward passes used."""
    if not probe.weight.any():
        return _row(key, role, skipped="zero weight"), 0
    var, again = _layer_variance(model, x, probe)
    first, iterations = var, 0
    while abs(var - 1) >= tol and iterations < max_iter:
        if not (math.isfinite(var) and var > 0):  # nothing to divide by: report, leave alone
            return _row(key, role, first, var, iterations, False,
                        skipped=f"output variance {var} cannot be rescaled to 1"), 1
        probe.weight.div_(math.sqrt(var))
        iterations += 1
        var = again()
    return _row(key, role, first, var, iterations, abs(var - 1) < tol), 1


def _row(path: str, role: str, initial: float | None = None, variance: float | None = None,
         iterations: int = 0, converged: bool | None = None, skipped: str | None = None) -> dict:
    return {"path": path, "role": role, "initial_variance": initial, "variance": variance,
            "iterations": iterations, "converged": converged, "skipped": skipped}


STEP = Step(
    "lsuv", lsuv_,
    defaults={"tol": 0.1, "max_iter": 10, "batch_size": 256, "include": WEIGHT_ROLES},
    bounds={"tol": (1e-6, 1.0), "max_iter": (1, 100), "batch_size": (2, 65536)},
    needs_data=True,
    summary="LSUV (Mishkin & Matas 2016): rescale each conv/linear weight, in forward order, to "
            "unit output variance on one minibatch",
)
