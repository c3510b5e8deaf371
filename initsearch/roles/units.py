"""Units: what a role labels, and the tensors a scheme initializes in each.

A *layer* is a module that owns its parameters (every parameterized module without
parameterized children, plus ``nn.MultiheadAttention``, whose output projection is a layer of
its own). Where a container module owns a tensor directly beside its child layers -- a class
token, a position embedding, a layer scale -- that tensor is a unit of its own, named by its
parameter path (``encoder.pos_embedding``, ``features.1.0.layer_scale``).

An attention's packed in-projection is one unit but three matrices (:func:`matrices`): the
query, key and value blocks each get their own fan, as separate projections would.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

Unit = "nn.Module | nn.Parameter"


def _owns(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def is_layer(module: nn.Module) -> bool:
    """A module that is one unit: it owns parameters and none of its children has any (or it
    is an attention, whose child output projection is a unit apart)."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return _owns(module) and not any(next(c.parameters(), None) is not None
                                     for c in module.children())


def units(model: nn.Module) -> dict[str, nn.Module | nn.Parameter]:
    """Every unit of ``model`` by path, in registration order: layers by module path, tensors a
    container owns directly by parameter path."""
    out: dict[str, nn.Module | nn.Parameter] = {}
    for path, module in model.named_modules():
        if not _owns(module):
            continue
        if is_layer(module):
            out[path] = module
        else:
            for name, p in module.named_parameters(recurse=False):
                out[f"{path}.{name}" if path else name] = p
    return out


@dataclass
class Part:
    """One matrix of a unit that a scheme initializes on its own, with its bias rows: a block of
    a packed q/k/v projection. Views, so writing them writes the parameter."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None


def matrices(unit: nn.Module | nn.Parameter, role: str | None = None) -> list:
    """What a scheme initializes one by one: the q, k and v blocks of an attention's packed
    in-projection (``nn.MultiheadAttention``, or a Linear labelled ``attn_qkv`` whose output is
    three times its input), else the unit itself."""
    if isinstance(unit, nn.MultiheadAttention):
        if unit.in_proj_weight is None:  # kdim/vdim differ: three separate matrices
            weights = (unit.q_proj_weight, unit.k_proj_weight, unit.v_proj_weight)
        else:
            weights = unit.in_proj_weight.chunk(3)
        bias = unit.in_proj_bias.chunk(3) if unit.in_proj_bias is not None else (None,) * 3
        return [Part(w, b) for w, b in zip(weights, bias)]
    if role == "attn_qkv" and isinstance(unit, nn.Linear) and unit.out_features == 3 * unit.in_features:
        bias = unit.bias.chunk(3) if unit.bias is not None else (None,) * 3
        return [Part(w, b) for w, b in zip(unit.weight.chunk(3), bias)]
    return [unit]


def tensors(unit) -> list[torch.Tensor]:
    """Every tensor a unit (or a part) owns: a parameter is itself."""
    if isinstance(unit, torch.Tensor):
        return [unit]
    if isinstance(unit, Part):
        return [t for t in (unit.weight, unit.bias) if t is not None]
    return list(unit.parameters(recurse=False))


def weight(unit) -> torch.Tensor | None:
    """The tensor a scale multiplies: a layer's weight (a norm's gamma), a parameter itself, the
    one tensor of a layer that has no ``weight`` (timm's LayerScale); for an attention, its
    in-projection. None when there is no telling (StarReLU's scale and bias)."""
    if isinstance(unit, torch.Tensor):
        return unit
    if isinstance(unit, nn.MultiheadAttention):
        return unit.in_proj_weight
    w = getattr(unit, "weight", None)
    if w is None and isinstance(unit, nn.Module):  # timm's LayerScale.gamma, Scale.scale, a table
        own = list(unit.parameters(recurse=False))
        w = own[0] if len(own) == 1 else None
    return w


def shape(unit) -> list[int]:
    w = weight(unit)
    if w is None and isinstance(unit, nn.MultiheadAttention):  # separate q/k/v
        return [3 * unit.embed_dim, unit.embed_dim]
    return list(w.shape if w is not None else next(iter(tensors(unit))).shape)
