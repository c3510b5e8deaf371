"""GPT-2's residual-projection scaling: shrink the last layer of every residual branch by
``1/sqrt(N)``, ``N`` the number of residual branches.

Radford, Wu, Child, Luan, Amodei, Sutskever, "Language Models are Unsupervised Multitask
Learners", 2019: "we scale the weights of residual layers at initialization by a factor of
1/sqrt(N) where N is the number of residual layers". The reference implementations
(nanoGPT ``model.py``, Hugging Face ``modeling_gpt2.py``; read, not copied) draw every linear
and embedding weight from N(0, 0.02^2) and then redraw each ``c_proj`` -- the attention's
output projection and the MLP's second layer -- from N(0, (0.02 / sqrt(2 n_layer))^2): two
residual branches per block, so ``N = 2 n_layer`` (transformer-inits.md section 1).

Rule, as a step after the layer schemes::

    W_end <- W_end / sqrt(N)      for the last layer of every residual branch
                                  (attn_out, mlp_out or branch_last), N = len(roles.blocks)

Multiplying the drawn weight is the same as redrawing it with std ``0.02/sqrt(N)`` when the
layer scheme is ``normal`` (std 0.02), which the ``gpt2`` baseline uses for every weight role
and position embedding; as a step it composes with any other layer scheme. Biases are left as
the scheme set them.

Why: in a pre-LN stack each branch adds variance to the residual stream; scaled, the total
added over ``N`` branches stays about constant in depth instead of growing as ``N``.

Data: none. Cost: one multiply per branch-ending weight.

Layer scales, biases owned apart from their layer (BEiT's q/v biases), relative-position
tables, attention tensors and learnable activations keep the model's init.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import Roles
from initsearch.schemes.base import InitData, Step, modules_by_path
from initsearch.schemes.layer import scale_


@torch.no_grad()
def gpt2_(model: nn.Module, roles: Roles, data: InitData | None = None) -> dict:
    """Multiply the last layer of each of the ``N`` residual branches by ``1/sqrt(N)``.

    Returns:
        ``{"layers": [...], "residual_branches": N, "factor": 1/sqrt(N), "forward_passes": 0,
        "backward_passes": 0}``.

    Raises:
        UsageError: the model has no residual blocks.
    """
    ends = [b.branch[-1] for b in roles.blocks]
    if not ends:
        raise UsageError("gpt2 scales the last layer of each residual branch, and this model has "
                         "none: use a residual model (a transformer) or label branch ends with "
                         "role_overrides")
    factor = 1.0 / math.sqrt(len(ends))
    for unit in modules_by_path(model, ends).values():
        scale_(unit, factor)
    return {"layers": ends, "residual_branches": len(ends), "factor": factor,
            "forward_passes": 0, "backward_passes": 0}


STEP = Step("gpt2", gpt2_, {},
            summary="GPT-2 (2019): the last layer of each of the N residual branches x 1/sqrt(N)")
