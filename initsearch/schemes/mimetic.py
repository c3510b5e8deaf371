"""Mimetic initialization of self-attention: start the attention weights where trained ones end.

Trockman & Kolter, "Mimetic Initialization of Self-Attention Layers", ICML 2023. Trained ViTs'
attention layers show ``W_q W_k^T ~ identity`` (a token attends to similar tokens, itself
first) and ``W_v W_proj ~ -identity``; the method draws them that way, in closed form, without
data (transformer-inits.md section 3; the authors' defaults for ViTs, alpha1 = beta1 = 0.7 and
alpha2 = beta2 = 0.4, as a third-party reimplementation states them: UNVERIFIED against the
paper).

Rule for each ``nn.MultiheadAttention`` of width ``d`` and ``h`` heads (``k = d/h``), ``Z``
entries i.i.d. U(+-sqrt(3/d)) (variance ``1/d``)::

    per head i:  A = alpha1 Z + beta1 I  (d x d), fresh Z per head;  A = U S V^T
                 W_Q^i = (U_k S_k^(1/2))^T,  W_K^i = (V_k S_k^(1/2))^T   (k x d, rows of head i)
                 so W_Q^i^T W_K^i = U_k S_k V_k^T, the best rank-k approximation of A
    once:        A = alpha2 Z - beta2 I;   A = U S V^T
                 W_O = U S^(1/2),  W_V = S^(1/2) V^T                        so W_O W_V = A exactly

``W_O`` is the attention's ``out_proj``; biases are 0. Only attention weights change: the MLP,
embeddings and tokens keep their init. The paper states the products in row-vector form
(``W_v W_proj ~ -I``), which is the transpose of ``W_O W_V`` here -- the same distribution.

Properties (tested): per head, the mean diagonal of ``W_Q^T W_K`` is clearly positive (PyTorch's
default gives ~0); ``W_O W_V`` has mean diagonal ``-beta2`` and ``||W_O W_V + beta2 I||_F /
sqrt(d) = alpha2`` (a transposed factor would give the first but not the second); on real images
a token in the first layer of a mimetic ViT attends mostly to itself.

Only ``nn.MultiheadAttention`` carries its head count; an attention built from separate layers
does not, so the step refuses a model without one.

Data: none. Cost: an SVD of a ``d x d`` matrix per head plus one.

Every other unit -- layer scales, separate q/v biases, relative-position tables,
attention tensors, learnable activations -- keeps the model's init.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import Roles
from initsearch.schemes.base import InitData, Step, modules_by_path


@torch.no_grad()
def mimetic_(model: nn.Module, roles: Roles, data: InitData | None = None, alpha1: float = 0.7,
             beta1: float = 0.7, alpha2: float = 0.4, beta2: float = 0.4) -> dict:
    """Set every ``nn.MultiheadAttention``'s q/k/v and output projection mimetically.

    Returns:
        ``{"attentions": [...], "options": {...}, "forward_passes": 0, "backward_passes": 0}``.

    Raises:
        UsageError: no ``nn.MultiheadAttention`` with packed projections.
    """
    found = modules_by_path(model, roles)
    attentions = [p for p, u in found.items() if isinstance(u, nn.MultiheadAttention)
                  and u.in_proj_weight is not None]
    if not attentions:
        raise UsageError("mimetic initializes nn.MultiheadAttention layers (their head count is "
                         "needed), and this model has none with packed q/k/v projections")
    for path in attentions:
        mha = found[path]
        d, h = mha.embed_dim, mha.num_heads
        k = d // h
        w = mha.in_proj_weight
        device, dtype = w.device, w.dtype
        for i in range(h):
            u, s, vt = torch.linalg.svd(alpha1 * _z(d, device) + beta1 * torch.eye(d, device=device))
            root = s[:k].sqrt()
            w[i * k:(i + 1) * k] = (root[:, None] * u[:, :k].T).to(dtype)
            w[d + i * k:d + (i + 1) * k] = (root[:, None] * vt[:k]).to(dtype)
        a = alpha2 * _z(d, device) - beta2 * torch.eye(d, device=device)
        u, s, vt = torch.linalg.svd(a)
        w[2 * d:] = (s.sqrt()[:, None] * vt).to(dtype)
        mha.out_proj.weight.copy_(u * s.sqrt())
        for bias in (mha.in_proj_bias, mha.out_proj.bias):
            if bias is not None:
                bias.zero_()
    return {"attentions": attentions,
            "options": {"alpha1": alpha1, "beta1": beta1, "alpha2": alpha2, "beta2": beta2},
            "forward_passes": 0, "backward_passes": 0}


def _z(d: int, device: torch.device) -> torch.Tensor:
    """Entries i.i.d. uniform with variance 1/d (from the init's private RNG stream)."""
    bound = math.sqrt(3.0 / d)
    return torch.empty(d, d, device=device).uniform_(-bound, bound)


STEP = Step("mimetic", mimetic_, {"alpha1": 0.7, "beta1": 0.7, "alpha2": 0.4, "beta2": 0.4},
            bounds={k: (0.0, 10.0) for k in ("alpha1", "beta1", "alpha2", "beta2")},
            summary="mimetic (Trockman & Kolter 2023): per head W_q^T W_k ~ a1 Z + b1 I, "
                    "W_O W_V = a2 Z - b2 I, in closed form")
