"""Layer roles: what part each unit of a model plays, so that init schemes can act on roles.

The vocabulary (:mod:`~initsearch.roles.vocabulary`) names what a unit *does*: ``stem``,
``conv``, ``branch_last``, ``shortcut``, ``norm``, ``linear``, ``aux_head``, ``classifier``,
Fixup's ``branch_scale`` and ``scalar_bias``, and for transformers ``embedding``,
``pos_embedding``, ``token``, ``attn_qkv`` (or ``attn_q``/``attn_k``/``attn_v``), ``attn_out``,
``mlp_in``, ``mlp_out`` and ``layer_scale``. A *unit* (:mod:`~initsearch.roles.units`) is a
layer, or a tensor a container owns directly (a class token), named by its parameter path.

:func:`discover_roles` reads the model's **dataflow graph** (:mod:`~initsearch.roles.graph`:
attentions, residual additions with their norm placement, the main output and auxiliary heads,
how owned tensors meet the data), traced symbolically or, where the forward branches on its
input's shape, on an example batch (:mod:`~initsearch.roles.tracing`); a model fx cannot
trace either way falls back to **names and registration order**
(:mod:`~initsearch.roles.names`), and :attr:`Roles.source` says which was used. Explicit
overrides (``{glob over unit paths: role}``) win -- a user's, then the model's own
``initsearch_roles()`` if it defines one -- and the residual blocks
(:mod:`~initsearch.roles.blocks`) follow the final roles.

A unit no reading can classify stops discovery with one :class:`~initsearch.errors.UsageError`
naming it and the override that fixes it.

Discovery traces the model once; pass the :class:`Roles` it returns on (``Recipe.apply(...,
roles=)``, ``Recipe.plan``) instead of discovering again.
"""
from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

from torch import nn

from initsearch.data import EXAMPLE_INPUT
from initsearch.errors import UsageError
from initsearch.roles import graph, names
from initsearch.roles.blocks import ResidualBlock, reconcile
from initsearch.roles.tracing import Untraceable
from initsearch.roles.units import Part, matrices, tensors, units, weight
from initsearch.roles.vocabulary import (ABOUT, ATTENTION_ROLES, BRANCH_ENDS, ROLES, TENSOR_ROLES,
                                         WEIGHT_ROLES, role_by_type)

__all__ = ["ROLES", "WEIGHT_ROLES", "TENSOR_ROLES", "BRANCH_ENDS", "ATTENTION_ROLES", "ABOUT",
           "Roles", "ResidualBlock", "discover_roles", "units", "matrices", "tensors", "weight",
           "Part", "role_by_type"]


class Roles(dict):
    """``{unit path: role}`` in registration order, plus:

    * ``blocks``: the residual blocks, in execution order;
    * ``source``: ``"graph"``, ``"graph (traced on a 1x3x32x32 example: ...)"`` or
      ``"names (<why the graph was not used>)"``;
    * ``topology``: ``"transformer"`` (it has attention), ``"residual"`` (additive skips),
      ``"dense"`` (concatenation skips: DenseNet) or ``"plain"`` (VGG, MLP) -- schemes whose
      published settings differ by family (GradInit) read it.
    """

    def __init__(self, roles: Mapping[str, str], blocks: Iterable[ResidualBlock], source: str,
                 topology: str = "plain"):
        super().__init__(roles)
        self.blocks: tuple[ResidualBlock, ...] = tuple(blocks)
        self.source = source
        self.topology = topology


def discover_roles(model: nn.Module, overrides: Mapping[str, str] | None = None, *,
                   input_shape: tuple[int, ...] = EXAMPLE_INPUT) -> Roles:
    """Label every unit of ``model`` with a role (see the module docstring).

    Args:
        model: any ``nn.Module``.
        overrides: ``{glob over unit paths: role}``; these win over everything else. Each
            pattern must match at least one unit (a module path, or a parameter path for a
            tensor a container owns).
        input_shape: one input's shape, for a model whose forward branches on its input's
            shape (timm's windowed attentions, "same" padding): its graph is traced on a batch
            of that shape. Other models are traced symbolically and it is unused.

    Returns:
        :class:`Roles`: ``{unit path: role}`` in registration order, with ``.blocks``,
        ``.source`` and ``.topology``.

    Raises:
        UsageError: an override names an unknown role or matches nothing, or a unit cannot
            be labelled.

    Example:
        >>> from initsearch.archs import build_model
        >>> roles = discover_roles(build_model("resnet_ds", options={"depth": 8}))
        >>> roles["stem"], roles["aux_heads.stage1"], roles["stages.0.0.conv2"], roles.source
        ('stem', 'aux_head', 'branch_last', 'graph')
    """
    found = units(model)
    rules = _override_rules(model, overrides, found)
    fixed = {}  # overridden paths: no reading touches them
    for path in found:
        role = next((r for pattern, r in rules if fnmatch.fnmatchcase(path, pattern)), None)
        if role:
            fixed[path] = role
    try:
        reading = graph.read(model, found, fixed, input_shape)
        roles, blocks = reading.roles, reading.blocks
        source = f"graph ({reading.traced})" if reading.traced else "graph"
        topology = ("transformer" if reading.attention else "residual" if blocks else
                    "dense" if reading.dense else "plain")
    except Exception as exc:  # fx refuses data-dependent control flow and more; names still work
        roles, blocks = names.read(model, found, fixed)
        why = str(exc) if isinstance(exc, Untraceable) else f"{type(exc).__name__}: {exc}"
        source = f"names (fx could not trace the model: {why[:200]})"
        topology = "residual" if blocks else "plain"
    unlabelled = [p for p, r in roles.items() if r is None]
    if unlabelled:
        raise UsageError(f"cannot label {', '.join(_describe(p, found[p]) for p in unlabelled)}: "
                         f"give each a role in the space file under role_overrides (e.g. "
                         f"{unlabelled[0]!r}: {_suggest(found[unlabelled[0]])}); roles: {', '.join(ROLES)}")
    return Roles(roles, reconcile(blocks, roles), source, topology)


def _describe(path: str, unit) -> str:
    if isinstance(unit, nn.Module):
        return f"{path or '(root)'} ({type(unit).__name__})"
    return f"{path} (a parameter of shape {tuple(unit.shape)})"


def _suggest(unit) -> str:
    """A likely role for a unit nothing classified: a scalar, a per-channel tensor."""
    size = sum(t.numel() for t in tensors(unit))
    return "scalar_bias" if size == 1 else "layer_scale"


def _override_rules(model, overrides, found) -> list[tuple[str, str]]:
    declared = getattr(model, "initsearch_roles", None)
    rules = list((overrides or {}).items()) + list((declared() if declared else {}).items())
    for pattern, role in rules:
        if role not in ROLES:
            raise UsageError(f"role override {pattern!r}: unknown role {role!r}; "
                             f"use one of: {', '.join(ROLES)}")
        if not any(fnmatch.fnmatchcase(p, pattern) for p in found):
            raise UsageError(f"role override {pattern!r} matches no layer or parameter; check it "
                             "against `initsearch roles` or initsearch.discover_roles(model)")
    return rules
