"""GradInit: learn one scale per parameter tensor so that one optimizer step lowers the loss most.

Zhu, Ni, Xu, Kong, Huang, Goldstein, "GradInit: Learning to Initialize Neural Networks for Stable
and Efficient Training", NeurIPS 2021, arXiv:2102.08098. Written from the algorithm as the
authors' CIFAR code runs it (``docs/init-methods.md`` section 1); no code is taken from it.

Rule. Every parameter tensor is written ``W_i = alpha_i * W_i^0`` (``alpha_i = 1`` at the start;
the direction never changes), and ``T`` steps of a scale optimizer solve::

    min_alpha  L(S~; theta - eta * A[g]) / eta   s.t.  ||g||_p <= gamma,  alpha_i >= floor_i
    g = grad_theta L(S; theta),  S = B_a u B_b,  S~ = B_a u B_c   (S~ shares half of S)

    alg="sgd":  A[g] = g / ||g||_2 (normalize_grad) or g,  p = 2
    alg="adam": A[g] = sign(g)  (the first Adam step),     p = 1 (sum of |g|)

``A[g]`` is held constant (first order, as the authors' code does): the objective's derivative
is ``grad L`` at the virtual point ``theta' = theta - eta * A[g]``, evaluated with
``torch.func.functional_call``, so the model's own parameters are never swapped. Each
iteration draws three disjoint half-batches ``B_a, B_b, B_c`` of ``batch_size / 2`` and takes
one of two steps:

* constraint step, when ``||g||_p > gamma``: descend ``||g||_p`` itself -- a double backward
  through the graph of ``g`` (no loss at ``theta'`` is evaluated);
* objective step, otherwise: descend ``L(S~; theta') / eta``.

Scale optimizer ("RescaleAdam"). ``dF/dalpha_i = <dF/dW_i, W_i^0>`` (chain rule), clipped to
``[-clip, clip]``; Adam with beta = (0.9, 0.999), eps = 1e-8, ``lr`` (tau in the paper), with two
first-moment buffers (one for constraint steps, one for objective steps, each bias-corrected by
its own step count) and one shared second moment (bias-corrected by the total count); then
``alpha_i <- max(alpha_i - lr * m^ / (sqrt(v^) + eps), floor_i)`` and the tensor is rewritten
as ``alpha_i * W_i^0`` (norm exactly ``alpha_i * ||W_i^0||``). ``floor_i`` is ``min_scale``
for weights (conv/linear/norm weights, ``Scale``) and 0 for biases. With the objective divided
by ``eta`` the clip is usually active; both are kept as in the authors' code.

Layers touched: every weight and bias of every conv/linear/norm layer and the scalar of every
:class:`~initsearch.layers.Scale` / :class:`~initsearch.layers.Bias` (all modules
in ``roles``). A tensor that is zero at the start (biases, BN beta, zeroed heads, Fixup's zero
layers) or whose scale reaches 0 (a bias at its floor) is never touched again; zero tensors
still enter ``g`` and the virtual step, as they do in training. No role is special-cased.

Attention runs on PyTorch's math kernel during GradInit: the fused kernels (flash,
memory-efficient) have no double backward.

Data-dependent: forwards training batches with :func:`~initsearch.schemes.base.init_forward_mode`
(BN on batch statistics, running statistics and ``num_batches_tracked`` untouched, dropout off,
modes restored). The loss is ``data.loss`` -- the trial's training loss, so auxiliary heads count.

Two steps share this rule and differ only in their defaults:

* ``gradinit`` -- the paper's setting for the network's family (``roles.topology``, and whether
  it has normalization layers), from the authors' CIFAR-10 launch scripts
  (``docs/init-methods.md`` 1.4): **the paper's iteration count**, 390 (780 for DenseNet-100 and
  the transformer), whatever the size of the training split it is given (390 x 128 is one
  CIFAR-10 epoch; on a protocol's 2,000-image split the batches are drawn from again -- one
  epoch of that split would be 15 iterations, which left every scale within 1.5 % of 1),
  ``gamma = 1``, normalized-gradient SGD, ``eta = 0.1``, and

  =========================  ===========  ===========  ===========================
  family (``topology``)      lr, norm     lr, none     batch (|S|)
  =========================  ===========  ===========  ===========================
  residual (ResNet-110)      1e-3         5e-2         128
  plain (VGG-19)             1e-1         1e-2         128
  dense (DenseNet-100)       1e-2         5e-3         64 (the paper's 780 x 64)
  transformer (IWSLT'14)     2.5e-3       2.5e-3       128 (ours: the paper batches
                                                       <= 6,000 tokens)
  =========================  ===========  ===========  ===========================

  A plain MLP takes the VGG row (the paper has no MLP). A transformer takes the authors'
  fairseq setting (``TRANSFORMER``): the Adam variant (``A[g] = sign(g)``, L1 norm), eta 1e-3,
  gamma 1000, no clip, LayerNorm weight scales capped at 100, RescaleAdam with beta2 0.98 and
  *separate* second moments for constraint and objective steps (the CIFAR code shares one).
  This is what baselines call GradInit.
* ``gradinit_fast`` -- a cheap setting for searching (our choice, never reported as GradInit):
  10 iterations of 32 images, lr 0.04 with normalization (the paper's iters x lr budget,
  390 x 1e-3), 0.1 without; 1/5-1/3 of a CPU-trial epoch. With BN, lr 0.1 sometimes drove the
  stem BN scale to the floor and left a heavy-tailed gradient norm; without BN, 0.1 gave the
  lowest held-out one-step loss of {0.04, 0.1, 0.2}.

Options (``Step`` defaults, the same for both); 0 and "auto" take the setting's value:

==============  =================  ====================================================
option          default            meaning
==============  =================  ====================================================
iters           0 (the setting's)  scale-optimizer iterations T (constraint steps count)
batch_size      0 (the setting's)  |S| = |S~|; each iteration draws three disjoint
                                   half-batches, so data needs 1.5 x batch_size examples
lr              0.0 (the setting)  tau, the scale optimizer's learning rate
eta             0.0 (the setting)  the virtual step's learning rate (CIFAR 0.1)
gamma           0.0 (the setting)  gradient-norm cap (CIFAR 1: the authors' code defaults
                                   to inf, every paper run sets 1; transformer 1000)
normalize_grad  True               sgd: step along g / ||g||_2 (all paper CIFAR runs)
min_scale       0.01               floor on weight scales (biases: 0)
max_scale       0.0 (the setting)  ceiling on norm-layer weight scales (transformer 100)
clip            0.0 (the setting)  clip of each dF/dalpha_i (CIFAR 1; transformer off)
alg             "auto"             "sgd" or "adam" (the step GradInit tunes the init for);
                                   auto: the setting's (sgd on CIFAR nets, adam on
                                   transformers)
==============  =================  ====================================================

Cost: an objective step is 2 forwards + 2 backwards (the first backward keeps its graph in
case the step turns out to be a constraint step); a constraint step is 1 forward + 1 backward
+ 1 double backward, which the report counts as 2 backward passes (it walks the backward
graph and the forward graph) and also lists apart: on CPU one double backward costs ~5-8
plain backwards (BatchNorm's double backward is many small ops). Memory ~2-3x a training
step. Measured on the CPU trial setting (ResNet-8-DS width 16, channels_last, the
deep-supervision loss, 4000 CIFAR-10 images, 1 thread; one training epoch of 31 steps at
batch 128 took 5.3-6.1 s on the same machine):

* ``gradinit_fast``, BN: 1.7 s, 14 forwards / 26 backwards (6 constraint + 4 objective
  steps), 0.33 epoch; no BN: 0.9 s, 18 / 22 (2 + 8), 0.18 epoch; worst case, every step a
  constraint step: 2.3 s (0.39 epoch).
* the paper's 390 x 128, BN: 145 s, 772 forwards / 788 backwards (8 constraint + 382 objective
  steps), ~25 epochs; no BN: 146 s, 741 / 819 (39 constraint steps). That is what ``gradinit``
  costs on any split now: until 2026-12-07 it ran one epoch of the split it was given (15
  iterations on the ``cpu`` profile's 2,000 images), which moved no scale by more than 1.5 %
  and took no constraint step -- He in disguise.

Every unit in ``roles`` gets a learned scale, the new roles included: a LayerScale
``gamma``, a q/v bias, a per-head temperature or a StarReLU's scale start at the model's value
and GradInit may rescale them like any other tensor (the paper scales every parameter); a
tensor that starts at zero stays there.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from initsearch.errors import UsageError
from initsearch.roles import Roles, units
from initsearch.schemes.base import InitData, Step, init_forward_mode

#: The CIFAR runs' setting, common to every convolutional family (``0``/``"auto"`` options take it).
CIFAR = {"alg": "sgd", "eta": 0.1, "gamma": 1.0, "clip": 1.0, "max_scale": math.inf, "beta2": 0.999,
         "shared_second_moment": True}
#: The fairseq (IWSLT'14 Post-LN Transformer) setting: the Adam variant, eta 1e-3, gamma 1000
#: (the config default; the script sets none), no clip, LayerNorm scales capped at 100, beta2
#: 0.98 and separate second moments for constraint and objective steps.
TRANSFORMER = {"alg": "adam", "eta": 1e-3, "gamma": 1000.0, "clip": 1e8, "max_scale": 100.0,
               "beta2": 0.98, "shared_second_moment": False}
#: The paper's setting per family, ``{(topology, has normalization): (lr, batch_size, iters,
#: rest)}``: the launch scripts' iteration counts, whatever the size of the data given (each
#: iteration draws its batches afresh, so a small split is drawn from again). See the table above.
PAPER: dict[tuple[str, bool], tuple[float, int, int, dict]] = {
    ("residual", True): (1e-3, 128, 390, CIFAR), ("residual", False): (5e-2, 128, 390, CIFAR),
    ("plain", True): (1e-1, 128, 390, CIFAR), ("plain", False): (1e-2, 128, 390, CIFAR),
    ("dense", True): (1e-2, 64, 780, CIFAR), ("dense", False): (5e-3, 64, 780, CIFAR),
    ("transformer", True): (2.5e-3, 128, 780, TRANSFORMER),
    ("transformer", False): (2.5e-3, 128, 780, TRANSFORMER),
}
#: ``gradinit_fast``: ``(iters, batch_size, lr with normalization layers, lr without)``.
FAST = (10, 32, 0.04, 0.1)
_BETA1, _EPS = 0.9, 1e-8


def gradinit_(model: nn.Module, roles: Roles, data: InitData | None = None, *,
              iters: int = 0, batch_size: int = 0, lr: float = 0.0, eta: float = 0.0,
              gamma: float = 0.0, normalize_grad: bool = True, min_scale: float = 0.01,
              max_scale: float = 0.0, clip: float = 0.0, alg: str = "auto",
              fast: bool = False) -> dict[str, Any]:
    """Rescale every parameter tensor of the units in ``roles`` by GradInit (in place).

    ``iters``, ``batch_size``, ``lr``, ``eta``, ``gamma``, ``max_scale`` and ``clip`` at 0 and
    ``alg="auto"`` take the setting's value: the paper's for the network's family (``iters``:
    390, or 780 for DenseNet and the transformer, however many examples ``data`` holds), or
    with ``fast`` the cheap one.

    Returns:
        A JSON-able report: ``iterations``, ``constraint_steps``, ``objective_steps``,
        ``forward_passes``, ``backward_passes`` (a double backward counts 2),
        ``double_backwards``, ``initial_grad_norm`` / ``final_grad_norm`` (the
        constraint's norm at the first / last iteration, before its update), ``options`` (as
        resolved, with the ``family`` read), ``scales`` (``{"path.param": alpha}``) and
        ``skipped`` (zero tensors).
    """
    if data is None:
        raise UsageError("gradinit needs data: pass data=InitData(x, y)")
    normed, family = "norm" in roles.values(), roles.topology
    p_lr, p_batch, p_iters, rest = PAPER[family, normed]
    if fast:
        f_iters, f_batch, lr_norm, lr_free = FAST
        iters, batch_size = iters or f_iters, batch_size or f_batch
        lr = lr or (lr_norm if normed else lr_free)
    else:
        batch_size, lr, iters = batch_size or p_batch, lr or p_lr, iters or p_iters
    alg = rest["alg"] if alg == "auto" else alg
    eta, gamma, clip = eta or rest["eta"], gamma or rest["gamma"], clip or rest["clip"]
    max_scale = max_scale or rest["max_scale"]
    half = batch_size // 2
    if half < 1 or len(data.y) < 3 * half:
        raise UsageError(f"gradinit with batch_size={batch_size} draws three half-batches of "
                         f"{half} per iteration; it needs batch_size >= 2 and at least "
                         f"{max(3, 3 * half)} examples (got {len(data.y)})")

    # Every trainable parameter enters g and the virtual step; those of role units get a scale.
    names, params = zip(*[(n, q) for n, q in model.named_parameters() if q.requires_grad])
    found = units(model)
    blocks, block_params, skipped, seen, capped = [], [], [], set(), []
    for path, role in roles.items():
        unit = found[path]
        own = ([(path, unit)] if isinstance(unit, torch.Tensor) else
               [(f"{path}.{n}" if path else n, q) for n, q in unit.named_parameters(recurse=False)])
        for key, q in own:
            if id(q) in seen:  # a shared tensor gets one scale
                continue
            seen.add(id(q))
            if q.requires_grad and torch.any(q != 0):
                blocks.append(key)
                block_params.append(q)
                capped.append(role == "norm" and not key.endswith("bias"))
            else:
                skipped.append(key)
    w0 = [q.detach().clone() for q in block_params]
    like = {"device": params[0].device, "dtype": params[0].dtype}
    floor = torch.tensor([0.0 if k.endswith("bias") else min_scale for k in blocks], **like)
    ceiling = torch.tensor([max_scale if c else math.inf for c in capped], **like)
    alpha = torch.ones(len(blocks), **like)
    m = {"constraint": torch.zeros_like(alpha), "objective": torch.zeros_like(alpha)}
    separate = not rest["shared_second_moment"]
    v = {"constraint": torch.zeros_like(alpha), "objective": torch.zeros_like(alpha)}
    beta2 = rest["beta2"]
    count = {"constraint": 0, "objective": 0}
    fwd = bwd = double = 0
    norms = []

    with init_forward_mode(model), _differentiable_attention():
        for _ in range(iters):
            x, y = data.batch(3 * half)
            xs, ys = x[:2 * half], y[:2 * half]  # S = B_a u B_b
            xt = torch.cat([x[:half], x[2 * half:]])  # S~ = B_a u B_c
            yt = torch.cat([y[:half], y[2 * half:]])
            g = torch.autograd.grad(data.loss(model(xs), ys), params, create_graph=True,
                                    materialize_grads=True)
            fwd, bwd = fwd + 1, bwd + 1
            gnorm = (sum(gi.abs().sum() for gi in g) if alg == "adam"
                     else torch.sqrt(sum(gi.pow(2).sum() for gi in g)))
            norms.append(float(gnorm.detach()))
            if norms[-1] > gamma:
                branch = "constraint"
                grads = _double_backward(gnorm, block_params)
                bwd, double = bwd + 2, double + 1
            else:
                branch = "objective"
                g = [gi.detach() for gi in g]  # first order: the step direction is a constant
                if alg == "adam":
                    d = [gi.sign() for gi in g]
                elif normalize_grad:
                    d = [gi / (norms[-1] or 1.0) for gi in g]
                else:
                    d = g
                grads = lookahead_grads(model, dict(zip(names, params)), d, eta, block_params,
                                        (xt, yt), data.loss)
                fwd, bwd = fwd + 1, bwd + 1
            del g, gnorm  # free the graph of g before the next iteration builds one
            dalpha = torch.stack([(gr * w).sum() for gr, w in zip(grads, w0)]).clamp(-clip, clip)
            count[branch] += 1
            total = count["constraint"] + count["objective"]
            m[branch].mul_(_BETA1).add_(dalpha, alpha=1 - _BETA1)
            second = v[branch] if separate else v["objective"]
            second.mul_(beta2).addcmul_(dalpha, dalpha, value=1 - beta2)
            m_hat = m[branch] / (1 - _BETA1 ** count[branch])
            v_hat = second / (1 - beta2 ** (count[branch] if separate else total))
            live = alpha > 0  # a tensor whose scale hit 0 (a bias at its floor) stays untouched
            new = torch.clamp(alpha - lr * m_hat / (v_hat.sqrt() + _EPS), floor, ceiling)
            alpha = torch.where(live, new, alpha)
            with torch.no_grad():
                for q, w, a in zip(block_params, w0, alpha):
                    q.copy_(a * w)

    return {
        "iterations": iters,
        "constraint_steps": count["constraint"],
        "objective_steps": count["objective"],
        "forward_passes": fwd,
        "backward_passes": bwd,
        "double_backwards": double,
        "initial_grad_norm": norms[0] if norms else None,
        "final_grad_norm": norms[-1] if norms else None,
        "options": {"setting": "fast" if fast else "paper", "family": family, "norm": normed,
                    "iters": iters, "batch_size": batch_size, "lr": lr, "eta": eta, "gamma": gamma,
                    "normalize_grad": normalize_grad, "min_scale": min_scale,
                    "max_scale": max_scale, "clip": clip, "alg": alg, "beta2": beta2},
        "scales": dict(zip(blocks, alpha.tolist())),
        "skipped": skipped,
    }


def _differentiable_attention():
    """Fused attention kernels (flash, memory-efficient) have no double backward: GradInit's
    constraint needs one, so attention runs on PyTorch's plain math kernel meanwhile."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _double_backward(gnorm: torch.Tensor, wrt: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The constraint step's gradient of ``||g||`` -- a double backward, which some operations
    (e.g. hardsigmoid, in MobileNetV3) do not implement: that is one clear error."""
    try:
        return torch.autograd.grad(gnorm, wrt, materialize_grads=True)
    except RuntimeError as exc:
        raise UsageError(f"gradinit needs second derivatives (its gradient-norm constraint), and "
                         f"this model has an operation without them ({str(exc).splitlines()[0][:120]})"
                         "; use another data step") from None


def probe(model: nn.Module, roles: Roles, x: torch.Tensor) -> None:
    """Raise UsageError if GradInit cannot run on ``model``: one double backward on ``x``."""
    with init_forward_mode(model), _differentiable_attention():
        out = model(x)
        main = out[0] if isinstance(out, tuple) else out
        params = [q for q in model.parameters() if q.requires_grad]
        g = torch.autograd.grad(main.square().mean(), params, create_graph=True,
                                materialize_grads=True)
        _double_backward(torch.sqrt(sum(gi.pow(2).sum() for gi in g)), params)


def lookahead_grads(model: nn.Module, params: dict[str, torch.Tensor], d: list[torch.Tensor],
                    eta: float, wrt: list[torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor],
                    loss) -> tuple[torch.Tensor, ...]:
    """The objective step's gradient: ``d/dW [L(S~; theta - eta * d) / eta]`` for the tensors
    ``wrt`` -- the loss *after* one virtual step along the constant direction ``d``, evaluated
    with ``functional_call`` at ``theta'`` (the model's own parameters are never swapped).
    ``dF/dalpha_i`` is then ``<grad_i, W_i^0>``."""
    virtual = {n: q - eta * di for (n, q), di in zip(params.items(), d)}
    x, y = batch
    objective = loss(functional_call(model, virtual, (x,)), y) / eta
    return torch.autograd.grad(objective, wrt, materialize_grads=True)


_DEFAULTS = {"iters": 0, "batch_size": 0, "lr": 0.0, "eta": 0.0, "gamma": 0.0,
             "normalize_grad": True, "min_scale": 0.01, "max_scale": 0.0, "clip": 0.0, "alg": "auto"}
_CHOICES = {"alg": ("auto", "sgd", "adam"), "normalize_grad": (True, False)}
_BOUNDS = {"iters": (0, 100_000), "batch_size": (0, 1 << 20), "lr": (0.0, 10.0),
           "eta": (0.0, 100.0), "gamma": (0.0, math.inf), "min_scale": (0.0, 1.0),
           "max_scale": (0.0, math.inf), "clip": (0.0, math.inf)}

STEP = Step(
    "gradinit", gradinit_, _DEFAULTS, _CHOICES, _BOUNDS, needs_data=True, probe=probe,
    summary="GradInit (Zhu et al. 2021) at the paper's setting for the family (390 or 780 "
            "iterations): per-tensor scales learned so one normalized-SGD step lowers the loss most")
FAST_STEP = Step(
    "gradinit_fast", functools.partial(gradinit_, fast=True), _DEFAULTS, _CHOICES, _BOUNDS,
    needs_data=True, probe=probe,
    summary="GradInit's rule at a cheap search setting (10 x 32 images; ours, not the paper's)")
