"""Emergence-promoting scaling: shrink early layers, amplify late ones, geometrically in depth.

Paper: Johnny Jingze Li, Vivek Kurien George, Gabriel A. Silva, "Advancing Neural Network
Performance through Emergence-Promoting Initialization Scheme", arXiv 2407.19044 (2024).

Rule, after a conventional init (He or Xavier, from the layer schemes): number the ``L``
counted layers ``i = 0 .. L-1`` in order and multiply the weight of layer ``i`` by::

    alpha^(i - c),   alpha > 1,   c = (L - 1) / 2    (centre="middle", the default)

so a layer ``n`` places before the middle is divided by ``alpha^n`` and one ``n`` places after
it multiplied by ``alpha^n``. The paper fixes the turning point at the middle of the network;
how it centres an even count is not known (init-methods.md section 2, UNVERIFIED):

* ``centre="middle"``: ``c = (L-1)/2``; for even ``L`` the exponents are half-integers
  (``-1.5, -0.5, 0.5, 1.5``). The profile is exactly symmetric, the factors multiply to 1, so a
  bias-free ReLU network without normalization computes the same function (positive
  homogeneity); only the gradients' distribution over depth changes.
* ``centre="layer"``: ``c = floor(L/2)``, the pivot layer is left unscaled (a third-party
  implementation's choice); for even ``L`` the product of the factors is ``alpha^(-1)``.

Which layers are counted is not known either (UNVERIFIED: shortcuts, classifier, norms).
Default ``include``: the conv/linear layers on the main path -- roles ``stem``, ``conv``,
``branch_last``, ``linear``, ``classifier`` -- in registration order (the forward order for
the built-in models; reorder with role overrides or select with globs otherwise). Not counted
and not scaled: ``shortcut`` convs (they run beside a branch, not after it: counting them
would make a block two layers deep on one path and one on the other), ``aux_head`` layers (off
the main path), normalization layers and the scalars (only conv/linear weights are scaled, as
the paper's "weights"), and every bias (so with non-zero biases the function does change).
``include`` takes roles and/or globs over module paths to count other layers.

With BN after a conv, scaling that conv changes only its effective learning rate (~1/factor^2);
the paper reports that BN "enables larger scaling factors".

Transformers (``roles.topology == "transformer"``). The paper reports machine-translation gains
but not which matrices count (UNVERIFIED, transformer-inits.md section 5). Here the counted
unit is a *transformer layer* -- an attention block and the MLP block after it -- and every
weight matrix of layer ``l`` (q/k/v, output projection, MLP) is multiplied by
``alpha^(l - c)``; embeddings, position embeddings, tokens, norms, biases and the classifier
are not scaled. ``include`` is not used on transformers.

**Depth.** The factors compound: at ``alpha = 1.2`` over ``L`` counted layers the last is
multiplied by ``1.2^((L-1)/2)`` -- 5.6 at 20 layers, ~8,000 at 100. A bias-free ReLU chain
computes the same function (the factors multiply to 1), but a residual network's skips are not
scaled, so its late blocks amplify what its early ones no longer shrink, and on ~100 counted
layers (GhostNet, deep mobile nets) the output overflows. The step still applies as the paper
states it; :func:`initsearch.recipe.why_not` -- every search's baseline check -- runs a random
batch through the initialized copy and refuses the baseline in one line ("gives a non-finite
output ... its factors span [a, b] over L scaled layers"). A recipe that applies it anyway
trains to "diverged". Lower ``alpha`` or count fewer layers (``include``) on such a network.

Roles it does not name keep their init: layer scales, biases owned apart from their layer,
attention tensors, learnable activations, tokens and position embeddings are never scaled.

Data: none. Cost: one multiply per counted weight.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import ROLES, WEIGHT_ROLES, ResidualBlock, Roles, units
from initsearch.schemes.base import InitData, Step, select
from initsearch.schemes.layer import WEIGHT_LAYERS, scale_

MAIN_PATH = ("stem", "conv", "branch_last", "linear", "classifier")


@torch.no_grad()
def transformer_layers(roles: Roles) -> list[list[str]]:
    """The weight layers of each transformer layer, in order: an attention block and the blocks
    after it up to the next attention (its MLP)."""
    layers: list[list[str]] = []
    for block in roles.blocks:
        if _is_attention(block, roles) or not layers:
            layers.append([])
        layers[-1].extend(block.branch)
    return layers


def _is_attention(block: ResidualBlock, roles: Mapping[str, str]) -> bool:
    return any(roles[p].startswith("attn_") for p in block.branch)


def emergence_(model: nn.Module, roles: Roles, data: InitData | None = None,
               alpha: float = 1.2, centre: str = "middle",
               include: Sequence[str] = MAIN_PATH) -> dict:
    """Scale the weight of counted layer ``i`` by ``alpha^(i - c)`` (see the module docstring).

    Args:
        model: the initialized network; weights are scaled in place.
        roles: :func:`initsearch.roles.discover_roles` of ``model``.
        data: unused (static step).
        alpha: the per-layer ratio, ``>= 1``.
        centre: ``"middle"`` (``c = (L-1)/2``) or ``"layer"`` (``c = floor(L/2)``).
        include: roles and/or globs over module paths of the counted layers.

    Returns:
        ``{"layers": [{"path", "exponent", "factor"}, ...], "alpha", "centre",
        "forward_passes": 0, "backward_passes": 0}``.

    Raises:
        UsageError: ``include`` names a role without conv/linear weights or a glob that matches
            nothing, or no conv/linear layer is counted.
    """
    for item in include:
        if item in ROLES and item not in WEIGHT_ROLES:
            raise UsageError(f"emergence scales conv/linear weights only: include roles among "
                             f"{', '.join(WEIGHT_ROLES)}, not {item!r}")
    found = units(model)
    if roles.topology == "transformer":
        counted = transformer_layers(roles)
    else:
        counted = [[p] for p in select(roles, include, "emergence")
                   if isinstance(found[p], WEIGHT_LAYERS)]
    if not counted:
        raise UsageError(f"emergence counts no conv/linear layer with include={include}; "
                         "name roles or module globs that have weights")
    n = len(counted)
    c = (n - 1) / 2 if centre == "middle" else float(n // 2)
    layers = []
    for i, paths in enumerate(counted):
        factor = alpha ** (i - c)
        for path in paths:
            scale_(found[path], factor)
            layers.append({"path": path, "exponent": i - c, "factor": factor})
    return {"layers": layers, "alpha": alpha, "centre": c, "forward_passes": 0,
            "backward_passes": 0}


STEP = Step("emergence", emergence_, {"alpha": 1.2, "centre": "middle", "include": MAIN_PATH},
            choices={"centre": ("middle", "layer")}, bounds={"alpha": (1.0, 2.0)},
            summary="emergence-promoting (2024): counted layer i x alpha^(i - centre)")
