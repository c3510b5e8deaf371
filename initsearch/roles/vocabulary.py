"""The role vocabulary: what each labelled unit does in the network.

A *unit* is what a role labels (:func:`initsearch.roles.units`): a layer (a module owning its
parameters -- conv, linear, norm, embedding, attention, a Fixup scalar), or a tensor that a
container module owns directly beside its child layers (a class token, a position embedding, a
layer scale), named by its parameter path.
"""
from __future__ import annotations

import re

from torch import nn

from initsearch.layers import Bias, Scale

#: Every role with what it means (the order is the order listings use).
ABOUT: dict[str, str] = {
    "stem": "the first conv/linear the input meets (a network without attention)",
    "embedding": "the first layer of a transformer (patch or token embedding), and every nn.Embedding",
    "conv": "a hidden conv: inside a residual branch or a plain stack",
    "branch_last": "the last conv/linear of a residual branch (its output is added to the skip)",
    "shortcut": "a conv/linear on the skip path of a residual addition (projection, downsample)",
    "linear": "a hidden linear layer that is no head, classifier or transformer projection",
    "attn_qkv": "a packed projection making queries, keys and values at once (nn.MultiheadAttention's "
                "in-projection, a qkv Linear); schemes initialize its q, k and v blocks separately",
    "attn_q": "the query projection of an attention with separate projections",
    "attn_k": "the key projection of an attention with separate projections",
    "attn_v": "the value projection of an attention with separate projections",
    "attn_out": "the output projection of an attention (the last layer of its residual branch)",
    "mlp_in": "a layer of a transformer block's MLP branch before its last",
    "mlp_out": "the last layer of a transformer block's MLP branch",
    "norm": "a normalization layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)",
    "aux_head": "the output layer of an auxiliary (deep-supervision) classifier head",
    "classifier": "the layer producing the main output",
    "pos_embedding": "a learned tensor added to the token stream or to attention scores (position "
                     "embedding, relative position bias)",
    "token": "a learned tensor concatenated to the token stream (class token)",
    "layer_scale": "a learned per-channel multiplier of a residual branch, of its skip or of a "
                   "branch's output (ConvNeXt's and CaiT's gamma, timm's LayerScale and Scale "
                   "modules); keeps the model's value",
    "branch_scale": "a learnable scalar multiplying a residual branch (Fixup's scale, SkipInit's alpha)",
    "scalar_bias": "a learnable scalar bias (Fixup's biases before convs and activations)",
    "bias": "a learned bias vector owned apart from its layer and added through the layer's function "
            "(BEiT's separate q and v biases); keeps the model's init",
    "attn_param": "a learned tensor inside an attention that is no projection (XCiT's per-head "
                  "temperature, ConViT's gating); keeps the model's init",
    "activation": "a learnable elementwise function's parameters (PReLU's slope, StarReLU's scale and "
                  "bias); keeps the model's init",
    "recurrent": "a recurrent layer (LSTM, GRU, RNN: Sequencer's token mixers); keeps PyTorch's init",
}
ROLES = tuple(ABOUT)

#: Roles of conv/linear-like layers: the schemes with a fan (He, Xavier, orthogonal, ZerO) act on them.
WEIGHT_ROLES = ("stem", "embedding", "conv", "branch_last", "shortcut", "linear", "attn_qkv",
                "attn_q", "attn_k", "attn_v", "attn_out", "mlp_in", "mlp_out", "aux_head",
                "classifier")
#: Roles of tensors a container owns directly (no layer of their own).
TENSOR_ROLES = ("pos_embedding", "token", "layer_scale", "bias", "attn_param")
#: The roles that end a residual branch: its output is added to the skip.
BRANCH_ENDS = ("branch_last", "attn_out", "mlp_out")
#: The roles of an attention's projections.
ATTENTION_ROLES = ("attn_qkv", "attn_q", "attn_k", "attn_v", "attn_out")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)
#: A class name ending like a norm's: RmsNorm, RmsNormFp32, GlobalResponseNorm, BatchNormAct2d.
_NAMED_NORM = re.compile(r"Norm(Act|Fp32)?(\d+d?)?$")
#: Layer types with a weight matrix (or kernel) and a fan.
WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.MultiheadAttention)


def per_channel_tensors(tensors) -> bool:
    """Every tensor is a vector or a scalar (at most one dimension over 1)."""
    return all(sum(d > 1 for d in t.shape) <= 1 for t in tensors)


def per_channel(module: nn.Module) -> bool:
    """Every tensor the module owns is a vector or a scalar."""
    return per_channel_tensors(module.parameters(recurse=False))


def multiplier_role(unit) -> str:
    """A learned multiplier's role -- a module, or its tensors -- ``branch_scale`` when scalar,
    else ``layer_scale``."""
    ts = unit.parameters(recurse=False) if isinstance(unit, nn.Module) else unit
    return "branch_scale" if all(t.numel() == 1 for t in ts) else "layer_scale"


def role_by_type(module: nn.Module) -> str | None:
    """The role a layer's type alone decides (None: its place in the graph must). A layer of a
    type torch does not know is a ``norm`` when its class says so (timm's ``RmsNorm``,
    ``GlobalResponseNorm``, ``BatchNormAct2d``...) and it owns per-channel tensors only."""
    if isinstance(module, NORM_TYPES) or (_NAMED_NORM.search(type(module).__name__)
                                          and per_channel(module)):
        return "norm"
    if isinstance(module, Scale):
        return "branch_scale"
    if isinstance(module, Bias):
        return "scalar_bias"
    if isinstance(module, nn.PReLU):
        return "activation"
    if isinstance(module, nn.RNNBase):
        return "recurrent"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.MultiheadAttention):
        return "attn_qkv"
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return None
