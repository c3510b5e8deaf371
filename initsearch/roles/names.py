"""Reading roles from names and registration order: the fallback for a model fx cannot trace.

A path segment containing ``aux``/``side``/``deep_sup`` is an ``aux_head`` (when its output width
equals the classifier's: it makes class scores), one named ``shortcut``/``downsample``/``skip``/
``proj`` a ``shortcut``; the first conv/linear registered is the ``stem``, the last linear the
``classifier``; in a module whose class name says Block/Bottleneck/Residual or which has a
shortcut child, the last conv is ``branch_last``. A tensor a container owns is a ``token``
(``*token*``, ``cls*``), a ``pos_embedding`` (``pos*``, ``*attention_bias*``, ``*rel_pos*``,
``*bias_table*``), a ``bias`` (``q_bias``, ``v_bias``), an ``attn_param`` (``*gating*``,
``temperature``) or a ``layer_scale`` (``*scale*``, ``gamma*``) by its name. A layer of no known
type that owns per-channel tensors only is a ``layer_scale`` (``branch_scale`` if scalar) when
its class says Scale, else an ``activation`` -- a guess the graph would check, said here because
it replaces the refusal; one holding relative positions by its name (``*rel_pos*``,
``*pos_embed*``) is a ``pos_embedding``.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from torch import nn

from initsearch.roles.blocks import ResidualBlock
from initsearch.roles.vocabulary import multiplier_role, per_channel, role_by_type

_AUX = re.compile(r"aux|side|deep_?sup", re.I)
_SHORTCUT = re.compile(r"^(shortcut|downsample|skip|proj|projection)(_\w+)?$", re.I)
_BLOCK = re.compile(r"block|bottleneck|residual", re.I)
_TENSORS = ((re.compile(r"token|^cls", re.I), "token"),
            (re.compile(r"^pos|attention_bias|attn_bias|rel_?pos|bias_table", re.I), "pos_embedding"),
            (re.compile(r"^[qkv]_bias$", re.I), "bias"),
            (re.compile(r"gating|^temperature$", re.I), "attn_param"),
            (re.compile(r"scale|^gamma", re.I), "layer_scale"))
_POSITIONS = re.compile(r"rel_?pos|pos_?embed", re.I)


def read(model: nn.Module, units: Mapping[str, Any], fixed: Mapping[str, str]):
    """``(roles, blocks)`` from names (see the module docstring)."""
    roles: dict[str, str | None] = {}
    for path, unit in units.items():
        if path in fixed:
            roles[path] = fixed[path]
        elif isinstance(unit, nn.Module):
            roles[path] = role_by_type(unit) or _untyped(path, unit)
            if roles[path] in ("conv", "linear"):
                segments = path.split(".")
                if any(_AUX.search(s) for s in segments):
                    roles[path] = "aux_head"
                elif any(_SHORTCUT.search(s) for s in segments):
                    roles[path] = "shortcut"
        else:
            name = path.rpartition(".")[2]
            roles[path] = next((role for pattern, role in _TENSORS if pattern.search(name)), None)
    free = [p for p, r in roles.items() if r in ("conv", "linear") and p not in fixed]
    if free:
        roles[free[0]] = "stem"
    linears = [p for p in free[1:] if isinstance(units[p], nn.Linear)]
    if linears:
        roles[linears[-1]] = "classifier"
        classes = units[linears[-1]].out_features
        for p, r in roles.items():  # a head's hidden layers are ordinary layers
            if r == "aux_head" and p not in fixed and _width(units[p]) != classes:
                roles[p] = role_by_type(units[p])
    blocks = []
    containers = [path for path, m in model.named_modules() if _looks_like_block(m)]
    for path in containers:
        prefix = f"{path}." if path else ""
        if any(other != path and other.startswith(prefix) for other in containers):
            continue  # a container of blocks (a stage, the whole net) is not itself a branch
        under = [p for p in roles if p.startswith(prefix)]
        branch = [p for p in under if roles[p] in ("conv", "branch_last")]
        if not branch:
            continue
        if branch[-1] not in fixed:
            roles[branch[-1]] = "branch_last"
        blocks.append(ResidualBlock(path, tuple(branch),
                                    next((p for p in under if roles[p] == "shortcut"), None),
                                    next((p for p in under if roles[p] in ("branch_scale", "layer_scale")),
                                         None)))
    return roles, blocks


def _untyped(path: str, module: nn.Module) -> str | None:
    """A layer of a type no rule knows, by its tensors and names (see the module docstring)."""
    if per_channel(module):  # without a graph, the class name is all there is to go on
        return multiplier_role(module) if "scale" in type(module).__name__.lower() else "activation"
    return "pos_embedding" if _POSITIONS.search(path.rpartition(".")[2]) else None


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else getattr(module, "out_channels", -1)


def _looks_like_block(module: nn.Module) -> bool:
    return bool(_BLOCK.search(type(module).__name__)
                or any(_SHORTCUT.search(name) for name, _ in module.named_children()))
