"""Residual-identity inits: Fixup's depth-scaled branches (the ``fixup`` step) and SkipInit.

Both make every residual block the identity map at init, so a deep ResNet trains without
normalization. They are recipes over roles (:data:`FIXUP_ROLES`, :data:`SKIPINIT_ROLES`, which
the recipe module assembles into baselines); Fixup adds one network-level step.

**Fixup** -- Hongyi Zhang, Yann N. Dauphin, Tengyu Ma, "Fixup Initialization: Residual Learning
Without Normalization", ICLR 2019, arXiv 1901.09321:

1. the classifier (weight and bias) and the last layer of every residual branch are 0;
2. every other layer of a branch is He-normal with ``fan_out`` (as the authors' code),
   then multiplied by ``L^(-1/(2m-2))``, ``L`` the number of residual branches, ``m`` the
   number of weight layers per branch (``L^(-1/2)`` for basic blocks, ``L^(-1/4)`` for
   bottlenecks) -- this step;
3. a scalar multiplier (1) at the end of each branch and scalar biases (0) before each conv,
   linear and activation (``branch_scale``, ``scalar_bias``; ``resnet_ds`` with
   ``norm="none"`` has them);
4. projection shortcuts He-normal ``fan_out``, not depth-scaled; the stem keeps PyTorch's
   default (both as in the authors' code).

Why ``L^(-1/(2m-2))``: with the last layer of each branch at 0, the paper bounds how much one
SGD step changes the network output; scaling the other ``m-1`` layers of each of the ``L``
branches this way keeps that change ``Theta(lr)`` whatever the depth (its Section 3).

**SkipInit** -- Soham De, Samuel L. Smith, "Batch Normalization Biases Residual Blocks Towards
the Identity Function in Deep Networks", NeurIPS 2020, arXiv 2002.10444: remove normalization,
put one learnable scalar ``alpha`` at the end of each branch, ``x_{l+1} = x_l + alpha_l f_l(x_l)``,
initialized to 0; every other layer keeps the standard He init. No step is needed: the recipe is
He everywhere plus ``branch_scale: zero``. The paper's other option, a small ``alpha <=
1/sqrt(d)`` (``d`` residual blocks), is ``branch_scale: default`` (1) with role scale
``1/sqrt(d)``. Which He variant and whether the classifier is He or default is not stated in
the sources (init-methods.md section 7.2); :data:`SKIPINIT_ROLES` uses He-normal ``fan_in``
on every conv and linear layer.

Layers the step touches: the non-last layers of every residual branch, found from the roles
(``roles.blocks``, see :mod:`initsearch.roles`); shortcuts, stem, heads and scalars are left
alone. Data: none. Cost: one multiply per scaled weight.

Only ``branch_scale`` and ``scalar_bias`` units are Fixup's scalars; a ``layer_scale`` (a
per-channel multiplier such as timm's LayerScale) keeps the model's value, as do biases owned
apart from their layer, attention tensors, learnable activations and recurrent layers.
"""
from __future__ import annotations

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import Roles
from initsearch.schemes.base import InitData, Step, modules_by_path
from initsearch.schemes.layer import scale_

#: Fixup's recipe, ``{role: (scheme, options)}``; the ``fixup`` step runs after it.
FIXUP_ROLES: dict[str, tuple[str, dict]] = {
    "stem": ("default", {}),
    "conv": ("he", {"mode": "fan_out"}),
    "branch_last": ("zero", {}),
    "shortcut": ("he", {"mode": "fan_out"}),
    "classifier": ("zero", {}),
    "branch_scale": ("default", {}),
    "scalar_bias": ("default", {}),
}

#: SkipInit's recipe: He everywhere, each branch multiplier 0; no step.
SKIPINIT_ROLES: dict[str, tuple[str, dict]] = {
    **{role: ("he", {}) for role in ("stem", "conv", "branch_last", "shortcut", "linear",
                                     "classifier")},
    "branch_scale": ("zero", {}),
    "scalar_bias": ("default", {}),
}


@torch.no_grad()
def fixup_(model: nn.Module, roles: Roles, data: InitData | None = None) -> dict:
    """Multiply every non-last layer of each residual branch by ``L^(-1/(2m-2))``.

    Run it after the layer schemes of :data:`FIXUP_ROLES`. ``data`` is unused (static step).

    Returns:
        ``{"layers": [...], "residual_branches": L, "layers_per_branch": m, "factor": ...,
        "forward_passes": 0, "backward_passes": 0}`` (the Step adds ``seconds``).

    Raises:
        UsageError: the model has no residual blocks, or branches of different lengths.
    """
    blocks = roles.blocks
    if not blocks:
        raise UsageError("fixup needs residual blocks (a 'branch_last' layer in each), and this "
                         "model has none: use a residual model or label its layers with "
                         "role_overrides")
    lengths = {len(b.branch) for b in blocks}
    if len(lengths) != 1:
        raise UsageError(f"fixup needs every residual branch to have the same number of layers m, "
                         f"but they have {sorted(lengths)}; use a model with uniform blocks")
    m, n_branches = lengths.pop(), len(blocks)
    # m = 1: the branch is only its zero last layer; nothing to scale (the exponent is undefined).
    factor = n_branches ** (-1.0 / (2 * m - 2)) if m > 1 else 1.0
    scaled = [p for b in blocks for p in b.branch[:-1]]
    for unit in modules_by_path(model, scaled).values():
        scale_(unit, factor)
    return {"layers": scaled, "residual_branches": n_branches, "layers_per_branch": m,
            "factor": factor, "forward_passes": 0, "backward_passes": 0}


STEP = Step("fixup", fixup_, {},
            summary="Fixup (2019): non-last branch layers x L^(-1/(2m-2)) after He fan_out")
