"""Layer roles: which part each parameterized module plays, so that init schemes can act on roles.

Roles:

==============  ===========================================================================
``stem``        the first conv/linear of the network (reads the raw input)
``conv``        a conv inside a residual branch, or any other hidden conv
``branch_last`` the last conv of a residual branch (the one whose output is added to the skip)
``shortcut``    a conv/linear on the skip path (projection shortcut, downsample)
``norm``        normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)
``linear``      a hidden linear layer that is neither head nor classifier
``aux_head``    an auxiliary (deep-supervision) classifier head
``classifier``  the main output layer
``branch_scale`` a learnable scalar multiplying a residual branch (Fixup's scale, SkipInit's alpha)
``scalar_bias`` a learnable scalar bias (Fixup's biases before convs and activations)
==============  ===========================================================================

Discovery reads names and structure, in this order, first match wins:

1. explicit overrides (``{glob over the module path: role}``) -- a user's, then the model's own
   ``initsearch_roles()`` if it defines one;
2. module type: normalization layers are ``norm``; :class:`~initsearch.archs.scalars.Scale` and
   :class:`~initsearch.archs.scalars.Bias` are ``branch_scale`` and ``scalar_bias``;
3. names: a path segment containing ``aux``/``side``/``deep_sup`` is an ``aux_head``; one named
   ``shortcut``/``downsample``/``skip``/``proj`` (optionally ``_suffix``) is a ``shortcut``;
4. order: the first conv/linear (module registration order) is the ``stem``, the last linear
   outside aux heads is the ``classifier``;
5. residual blocks: within a module whose class name says Block/Bottleneck/Residual or which
   has a shortcut child, the last conv outside the shortcut is ``branch_last``;
6. everything else: ``conv`` or ``linear`` by type.

A module that owns parameters but is none of conv/linear/norm gets no role: discovery raises a
:class:`~initsearch.errors.UsageError` naming it and showing the override that fixes it.
"""
from __future__ import annotations

import fnmatch
import re
from typing import Mapping

from torch import nn

from initsearch.archs.scalars import Bias, Scale
from initsearch.errors import UsageError

ROLES = ("stem", "conv", "branch_last", "shortcut", "norm", "linear", "aux_head", "classifier",
         "branch_scale", "scalar_bias")
#: Roles whose modules are conv/linear layers (the others hold norm affines or scalars).
WEIGHT_ROLES = ("stem", "conv", "branch_last", "shortcut", "linear", "aux_head", "classifier")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_CONV_TYPES = (nn.modules.conv._ConvNd,)
_AUX = re.compile(r"aux|side|deep_?sup", re.I)
_SHORTCUT = re.compile(r"^(shortcut|downsample|skip|proj|projection)(_\w+)?$", re.I)
_BLOCK = re.compile(r"block|bottleneck|residual", re.I)


def parameterized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule that directly owns a parameter, by path, in registration order."""
    return {name: m for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None}


def discover_roles(model: nn.Module, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Label every parameterized module of ``model`` with a role (see the module docstring).

    Args:
        model: any ``nn.Module``.
        overrides: ``{glob over module paths: role}``; these win over everything else. Each
            pattern must match at least one module.

    Returns:
        ``{module path: role}`` in registration order.

    Raises:
        UsageError: an override names an unknown role or matches nothing, or a module cannot
            be labelled.

    Example:
        >>> from initsearch.archs import build_model
        >>> roles = discover_roles(build_model("resnet_ds", options={"depth": 8}))
        >>> roles["stem"], roles["aux_heads.stage1"], roles["stages.0.0.conv2"]
        ('stem', 'aux_head', 'branch_last')
    """
    modules = parameterized_modules(model)
    rules = _override_rules(model, overrides, modules)
    roles: dict[str, str] = {}
    fixed = set()  # overridden paths: the order and structure rules below leave them alone
    for path, module in modules.items():
        role = next((r for pattern, r in rules if fnmatch.fnmatchcase(path, pattern)), None)
        if role:
            fixed.add(path)
        roles[path] = role or _role_by_type_and_name(path, module)
    _assign_by_order(modules, roles, fixed)
    _assign_branch_last(model, roles, fixed)
    unlabelled = [f"{p} ({type(modules[p]).__name__})" for p, r in roles.items() if r is None]
    if unlabelled:
        raise UsageError(f"cannot label {', '.join(unlabelled)}: give each a role in the space file "
                         f"under role_overrides (e.g. '{unlabelled[0].split(' ')[0]}: linear'); "
                         f"roles: {', '.join(ROLES)}")
    return roles


def _override_rules(model, overrides, modules) -> list[tuple[str, str]]:
    declared = getattr(model, "initsearch_roles", None)
    rules = list((overrides or {}).items()) + list((declared() if declared else {}).items())
    for pattern, role in rules:
        if role not in ROLES:
            raise UsageError(f"role override {pattern!r}: unknown role {role!r}; "
                             f"use one of: {', '.join(ROLES)}")
        if not any(fnmatch.fnmatchcase(p, pattern) for p in modules):
            raise UsageError(f"role override {pattern!r} matches no parameterized module; "
                             "check it against the paths in initsearch.discover_roles(model)")
    return rules


def _role_by_type_and_name(path: str, module: nn.Module) -> str | None:
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if isinstance(module, (Scale, Bias)):
        return "branch_scale" if isinstance(module, Scale) else "scalar_bias"
    if not isinstance(module, (*_CONV_TYPES, nn.Linear)):
        return None
    segments = path.split(".")
    if any(_AUX.search(s) for s in segments):
        return "aux_head"
    if any(_SHORTCUT.search(s) for s in segments):
        return "shortcut"
    return "conv" if isinstance(module, _CONV_TYPES) else "linear"


def _assign_by_order(modules: dict[str, nn.Module], roles: dict[str, str], fixed: set[str]) -> None:
    """First conv/linear is the stem; last hidden linear is the classifier (unless overridden)."""
    free = [p for p, r in roles.items() if r in ("conv", "linear") and p not in fixed]
    if free:
        roles[free[0]] = "stem"
    linears = [p for p in free[1:] if isinstance(modules[p], nn.Linear)]
    if linears:
        roles[linears[-1]] = "classifier"


def _assign_branch_last(model: nn.Module, roles: dict[str, str], fixed: set[str]) -> None:
    """In each innermost residual block, the last conv outside the shortcut is ``branch_last``."""
    blocks = [path for path, m in model.named_modules() if _looks_like_block(m)]
    for path in blocks:
        prefix = f"{path}." if path else ""
        if any(other != path and other.startswith(prefix) for other in blocks):
            continue  # a container of blocks (a stage, the whole net) is not itself a branch
        convs = [p for p, r in roles.items()
                 if p.startswith(prefix) and r == "conv" and p not in fixed]
        if convs:
            roles[convs[-1]] = "branch_last"


def _looks_like_block(module: nn.Module) -> bool:
    return bool(_BLOCK.search(type(module).__name__)
                or any(_SHORTCUT.search(name) for name, _ in module.named_children()))
