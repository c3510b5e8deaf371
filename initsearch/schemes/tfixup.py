"""T-Fixup: train a transformer without LayerNorm and without learning-rate warm-up by scaling
its value, output and MLP projections with depth.

Huang, Perez, Ba, Volkovs, "Improving Transformer Optimization Through Better Initialization",
ICML 2020. Written from the rule as the authors' fairseq code applies it
(``layer6ai-labs/T-Fixup``: ``fixup_initialization`` in ``transformer_layer.py``; read, not
copied; transformer-inits.md section 2).

Condition: the transformer has **no normalization layer** (the paper removes every LayerNorm;
build it with ``norm=none``) -- the step refuses a model that has one.

Rule for an encoder of ``N`` transformer layers (attention block + MLP block each; the only
kind of model here), after fairseq's base init:

====================================  ==============================================================
unit                                  init
====================================  ==============================================================
q, k blocks of every attention        Xavier-uniform with gain ``1/sqrt(2)`` (fairseq's MHA), untouched
v block of every attention            Xavier-uniform (gain 1: the ``x sqrt(2)`` undoes fairseq's
                                      ``1/sqrt(2)``), then ``x 0.67 N^(-1/4)``
attention output projection           Xavier-uniform, then ``x 0.67 N^(-1/4)``
MLP layers (mlp_in, mlp_out)          Xavier-uniform, then ``x 0.67 N^(-1/4)``
embedding                             the token stream gets std ``(9N)^(-1/4)`` (see below)
biases                                0
====================================  ==============================================================

Embedding. fairseq draws token embeddings N(0, d^(-1/2)) and multiplies them by ``sqrt(d)`` in
the forward pass, so the stream's token part has std ``(9N)^(-1/4)`` after the scaling. A
patch-embedding layer has no ``sqrt(d)`` multiplier: here it is drawn so that its *output*
has that std on unit-variance inputs -- N(0, (9N)^(-1/2) / fan_in) -- which is our reading for
vision transformers (the paper embeds tokens); an ``nn.Embedding`` gets N(0, (9N)^(-1/2)).
Position embeddings, class tokens and the classifier keep their init.

Properties (tested): no normalization layer; every scaled tensor's std equals Xavier's times
the factor; q/k keep std ``1/sqrt(2d)``-equivalent Xavier; the residual stream's variance stays
O(1) as ``N`` grows, where plain Xavier's explodes.

Data: none. Cost: one draw per weight.

Layer scales, biases owned apart from their layer, relative-position tables, attention
tensors and learnable activations keep the model's init.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import Roles, matrices
from initsearch.schemes.base import InitData, Step, modules_by_path
from initsearch.schemes.emergence import transformer_layers

SCALED = ("attn_out", "mlp_in", "mlp_out")


@torch.no_grad()
def tfixup_(model: nn.Module, roles: Roles, data: InitData | None = None) -> dict:
    """Apply T-Fixup to a normalization-free transformer encoder (see the module docstring).

    Returns:
        ``{"layers": N, "factor": 0.67 N^(-1/4), "embedding_std": ..., "scaled": [...],
        "forward_passes": 0, "backward_passes": 0}``.

    Raises:
        UsageError: the model is no transformer, or it has a normalization layer.
    """
    if roles.topology != "transformer":
        raise UsageError("tfixup initializes transformers (attention and MLP blocks); this model "
                         "has no attention")
    normed = [p for p, r in roles.items() if r == "norm"]
    if normed:
        raise UsageError(f"tfixup needs a transformer without normalization layers (the paper "
                         f"removes every LayerNorm), and this one has {len(normed)} (e.g. "
                         f"{normed[0]}); build it with norm=none")
    n = len(transformer_layers(roles))
    factor = 0.67 * n ** -0.25
    stream_std = (9 * n) ** -0.25
    units = modules_by_path(model, roles)
    scaled = []
    for path, role in roles.items():
        unit = units[path]
        if role in ("attn_qkv", "attn_q", "attn_k", "attn_v"):
            parts = matrices(unit, role)
            blocks = dict(zip(("attn_q", "attn_k", "attn_v"), parts)) if role == "attn_qkv" else {role: unit}
            for kind, part in blocks.items():
                gain = 1.0 if kind == "attn_v" else 1 / math.sqrt(2)
                nn.init.xavier_uniform_(part.weight, gain=gain)
                _zero_bias(part)
                if kind == "attn_v":
                    part.weight.mul_(factor)
                    scaled.append(f"{path}[v]" if role == "attn_qkv" else path)
        elif role in SCALED:
            nn.init.xavier_uniform_(unit.weight)
            unit.weight.mul_(factor)
            _zero_bias(unit)
            scaled.append(path)
        elif role == "embedding":
            fan_in = 1 if isinstance(unit, nn.Embedding) else unit.weight[0].numel()
            unit.weight.normal_(0.0, stream_std / math.sqrt(fan_in))
            _zero_bias(unit)
    return {"layers": n, "factor": factor, "embedding_std": stream_std, "scaled": scaled,
            "forward_passes": 0, "backward_passes": 0}


def _zero_bias(unit) -> None:
    if getattr(unit, "bias", None) is not None:
        unit.bias.zero_()


STEP = Step("tfixup", tfixup_, {},
            summary="T-Fixup (Huang et al. 2020): LN-free transformer; v, out and MLP Xavier x "
                    "0.67 N^(-1/4), token stream std (9N)^(-1/4)")
