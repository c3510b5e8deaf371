"""Layer roles: which part each parameterized module plays, so that init schemes can act on roles.

Roles:

================  =========================================================================
``stem``          the first conv/linear the input meets
``conv``          a conv inside a residual branch, or any other hidden conv
``branch_last``   the last conv/linear of a residual branch (its output is added to the skip)
``shortcut``      a conv/linear on the skip path of a residual addition (projection, downsample)
``norm``          normalization layers (BatchNorm, GroupNorm, LayerNorm, InstanceNorm)
``linear``        a hidden linear layer that is neither head nor classifier
``aux_head``      the output layer of an auxiliary (deep-supervision) classifier head -- its
                  affine map to class scores; a head's earlier layers are ordinary layers
``classifier``    the layer that produces the main output
``branch_scale``  a learnable scalar multiplying a residual branch (Fixup's scale, SkipInit's alpha)
``scalar_bias``   a learnable scalar bias (Fixup's biases before convs and activations)
================  =========================================================================

Discovery reads the model's **dataflow graph** when it can: the model is traced symbolically in
train mode with :mod:`torch.fx` (modules whose parameters are all their own are leaves; nothing
is computed), and

1. explicit overrides (``{glob over the module path: role}``) win -- a user's, then the model's
   own ``initsearch_roles()`` if it defines one;
2. module type: normalization layers are ``norm``; :class:`~initsearch.archs.scalars.Scale` and
   :class:`~initsearch.archs.scalars.Bias` are ``branch_scale`` and ``scalar_bias``;
3. residual additions, in execution order: for each ``a + b`` whose operands both depend on
   the input, the conv/linear layers that feed only one operand (and belong to no block found
   before) form that operand's path since the fork. The operand with more of them is the
   branch -- on a tie, the one beside a lone 1x1 conv (a projection) -- and its last layer in
   execution order is ``branch_last``; the other operand's layers are ``shortcut``\\ s;
4. the output: the main output is the model's output, or the first element of a returned
   tuple/list/dict (the ``(logits, [aux_logits, ...])`` convention). The last conv/linear
   executed before it is the ``classifier`` (unless it sits in a residual block). The
   conv/linear layers that do *not* feed it form the auxiliary heads (under any name, or taps
   whose result is discarded); the last layer of each head -- one that feeds no other head
   layer -- is its ``aux_head``, the head's earlier layers are ``conv``/``linear`` like any
   hidden layer (LION-DG zeroes the auxiliary classifier, not the whole head);
5. the first conv/linear in execution order is the ``stem``; the rest are ``conv``/``linear``
   by type.

Overrides win over all of this, and the residual blocks follow the final roles: a block whose
last layer was overridden away is dropped, and a ``branch_last`` given by an override gets a
block of its parent module's conv/linear layers. This needs no naming convention: a DenseNet
(concatenation, no addition) has no residual blocks, a residual unit of any class name or layout
has one. A model that fx cannot trace (Python control flow on tensor values, say), or whose main
output no layer feeds, falls back to **names and registration order**: a path
segment containing ``aux``/``side``/``deep_sup`` is an ``aux_head``, one named
``shortcut``/``downsample``/``skip``/``proj`` a ``shortcut``; the first conv/linear registered is
the ``stem``, the last linear the ``classifier``; an aux-named layer is the ``aux_head`` when its output width
equals the classifier's (it produces class scores); in a module whose class name says
Block/Bottleneck/Residual or which has a shortcut child, the last conv is ``branch_last``.
:attr:`Roles.source` says which reading was used and why.

A module that owns parameters but is none of conv/linear/norm gets no role: discovery raises a
:class:`~initsearch.errors.UsageError` naming it and showing the override that fixes it.
"""
from __future__ import annotations

import fnmatch
import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import fx, nn

from initsearch.archs.scalars import Bias, Scale
from initsearch.errors import UsageError

ROLES = ("stem", "conv", "branch_last", "shortcut", "norm", "linear", "aux_head", "classifier",
         "branch_scale", "scalar_bias")
#: Roles whose modules are conv/linear layers (the others hold norm affines or scalars).
WEIGHT_ROLES = ("stem", "conv", "branch_last", "shortcut", "linear", "aux_head", "classifier")

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_WEIGHT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)
_AUX = re.compile(r"aux|side|deep_?sup", re.I)
_SHORTCUT = re.compile(r"^(shortcut|downsample|skip|proj|projection)(_\w+)?$", re.I)
_BLOCK = re.compile(r"block|bottleneck|residual", re.I)
_ADDS = {operator.add, operator.iadd, torch.add}
_CATS = {torch.cat, torch.concat, torch.concatenate}


@dataclass(frozen=True)
class ResidualBlock:
    """One residual addition as the roles see it: the branch's conv/linear layers in execution
    order (the last is ``branch_last``), its shortcut layer if the skip has one, its branch
    multiplier if any; ``path`` is the deepest module holding the whole branch."""

    path: str
    branch: tuple[str, ...]
    shortcut: str | None = None
    scale: str | None = None


class Roles(dict):
    """``{module path: role}`` in registration order, plus the residual blocks, the reading that
    found them (``source``: ``"graph"`` or ``"names (<why the graph was not used>)"``) and the
    network's ``topology``: ``"residual"`` (additive skips, a ResNet), ``"dense"``
    (concatenation skips: a layer's input is concatenated with its output, a DenseNet) or
    ``"plain"`` (neither, a VGG or an MLP) -- schemes whose published settings differ by family
    (GradInit) read it."""

    def __init__(self, roles: Mapping[str, str], blocks: Iterable[ResidualBlock], source: str,
                 dense: bool = False):
        super().__init__(roles)
        self.blocks: tuple[ResidualBlock, ...] = tuple(blocks)
        self.source = source
        self.topology = "residual" if self.blocks else "dense" if dense else "plain"


def parameterized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every submodule that directly owns a parameter, by path, in registration order."""
    return {name: m for name, m in model.named_modules()
            if next(m.parameters(recurse=False), None) is not None}


def discover_roles(model: nn.Module, overrides: Mapping[str, str] | None = None) -> Roles:
    """Label every parameterized module of ``model`` with a role (see the module docstring).

    Args:
        model: any ``nn.Module``.
        overrides: ``{glob over module paths: role}``; these win over everything else. Each
            pattern must match at least one module.

    Returns:
        :class:`Roles`: ``{module path: role}`` in registration order, with ``.blocks`` (the
        residual blocks) and ``.source`` (graph or names).

    Raises:
        UsageError: an override names an unknown role or matches nothing, or a module cannot
            be labelled.

    Example:
        >>> from initsearch.archs import build_model
        >>> roles = discover_roles(build_model("resnet_ds", options={"depth": 8}))
        >>> roles["stem"], roles["aux_heads.stage1"], roles["stages.0.0.conv2"], roles.source
        ('stem', 'aux_head', 'branch_last', 'graph')
    """
    modules = parameterized_modules(model)
    rules = _override_rules(model, overrides, modules)
    fixed = {}  # overridden paths: no rule below touches them
    for path in modules:
        role = next((r for pattern, r in rules if fnmatch.fnmatchcase(path, pattern)), None)
        if role:
            fixed[path] = role
    try:
        roles, blocks, dense = _by_graph(_trace(model), modules, fixed)
        source = "graph"
    except Exception as exc:  # fx refuses data-dependent control flow and more; names still work
        (roles, blocks), dense = _by_names(model, modules, fixed), False
        source = f"names (fx could not trace the model: {type(exc).__name__}: {str(exc)[:120]})"
    unlabelled = [p for p, r in roles.items() if r is None]
    if unlabelled:
        named = ", ".join(f"{p or '(root)'} ({type(modules[p]).__name__})" for p in unlabelled)
        raise UsageError(f"cannot label {named}: give each a role in the space file under "
                         f"role_overrides (e.g. {unlabelled[0]!r}: scalar_bias for a learned "
                         f"scale or bias); roles: {', '.join(ROLES)}")
    return Roles(roles, _reconcile(blocks, roles), source, dense)


def _override_rules(model, overrides, modules) -> list[tuple[str, str]]:
    declared = getattr(model, "initsearch_roles", None)
    rules = list((overrides or {}).items()) + list((declared() if declared else {}).items())
    for pattern, role in rules:
        if role not in ROLES:
            raise UsageError(f"role override {pattern!r}: unknown role {role!r}; "
                             f"use one of: {', '.join(ROLES)}")
        if not any(fnmatch.fnmatchcase(p, pattern) for p in modules):
            raise UsageError(f"role override {pattern!r} matches no parameterized module; "
                             "check it against `initsearch roles` or initsearch.discover_roles(model)")
    return rules


def _role_by_type(module: nn.Module) -> str | None:
    if isinstance(module, _NORM_TYPES):
        return "norm"
    if isinstance(module, (Scale, Bias)):
        return "branch_scale" if isinstance(module, Scale) else "scalar_bias"
    if isinstance(module, _WEIGHT_TYPES):
        return "linear" if isinstance(module, nn.Linear) else "conv"
    return None


# -- the graph reading ------------------------------------------------------------------------------

class _LayerTracer(fx.Tracer):
    """Keeps every module that owns parameters as one node, so nodes map to labelled layers."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a layer-scale gamma on a block (ConvNeXt) must not hide the block's layers: only a
        # module whose parameters are all its own is one node
        owns = next(m.parameters(recurse=False), None) is not None
        nested = any(next(c.parameters(), None) is not None for c in m.children())
        return (owns and not nested) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.Graph:
    modes = {m: m.training for m in model.modules()}
    model.train()  # auxiliary heads run only in training
    try:
        return _LayerTracer().trace(model)
    finally:
        for m, mode in modes.items():
            m.training = mode


def _by_graph(graph: fx.Graph, modules: Mapping[str, nn.Module], fixed: Mapping[str, str]):
    nodes = list(graph.nodes)  # topological: execution order
    layer = {n: n.target for n in nodes if n.op == "call_module" and n.target in modules}
    upstream: dict[fx.Node, frozenset[str]] = {}  # labelled layers feeding each node (itself too)
    live: dict[fx.Node, bool] = {}  # depends on the model's input
    for n in nodes:
        ins = n.all_input_nodes
        upstream[n] = frozenset().union(*(upstream[i] for i in ins), [layer[n]] if n in layer else [])
        live[n] = n.op == "placeholder" or any(live[i] for i in ins)
    order = list(dict.fromkeys(layer[n] for n in nodes if n in layer))  # first call of each layer
    weights = [p for p in order if isinstance(modules[p], _WEIGHT_TYPES)]

    roles = {p: fixed.get(p) or _role_by_type(m) for p, m in modules.items()}
    free = lambda p: p not in fixed and isinstance(modules[p], _WEIGHT_TYPES)

    blocks, claimed = [], set()  # claimed: layers of blocks found so far (inner ones come first)
    for n in nodes:
        if not _is_add(n) or not all(isinstance(a, fx.Node) and live[a] for a in n.args[:2]):
            continue
        a, b = (upstream[x] for x in n.args[:2])
        sides = [[p for p in order if p in only and p not in claimed] for only in (a - b, b - a)]
        layers = [[p for p in side if p in weights] for side in sides]
        first = _branch_side(layers, modules)
        if first is None:
            continue  # x + x, an outer sum over whole inner blocks, or no telling them apart
        branch, skip = layers[first], layers[1 - first]
        scale = next((p for p in sides[first] if isinstance(modules[p], Scale)), None)
        blocks.append(ResidualBlock(_common_path(branch), tuple(branch), skip[-1] if skip else None,
                                    scale))
        claimed.update(branch + skip)
        if free(branch[-1]):
            roles[branch[-1]] = "branch_last"
        for p in skip:
            if free(p):
                roles[p] = "shortcut"

    main = _main_output(next(n for n in reversed(nodes) if n.op == "output").args[0])
    if not isinstance(main, fx.Node) or not upstream[main]:
        raise ValueError("no layer feeds the main output (the output or its first element)")
    feeds_main = upstream[main]
    heads = [p for p in weights if p not in feeds_main]
    # a head layer that feeds another head layer is inside a head, not its output layer
    inner = set().union(*(upstream[n] - {layer[n]} for n in nodes if layer.get(n) in heads))
    for p in heads:
        if free(p) and p not in inner:
            roles[p] = "aux_head"
    main_layers = [p for p in weights if p in feeds_main]
    if main_layers and free(main_layers[0]) and roles[main_layers[0]] in ("conv", "linear"):
        roles[main_layers[0]] = "stem"  # the layer the input meets first (a lone layer too)
    if len(main_layers) > 1 and free(main_layers[-1]) and main_layers[-1] not in claimed:
        roles[main_layers[-1]] = "classifier"  # unless the output is a residual sum
    dense = any(_concat_skip(n, upstream, live) for n in nodes)
    return roles, blocks, dense  # blocks in execution order: the additions were visited in it


def _branch_side(layers: list[list[str]], modules: Mapping[str, nn.Module]) -> int | None:
    """Which operand's layers are the residual branch: the side with more layers; on a tie,
    the side beside a lone 1x1 conv (a projection shortcut); None when there is no telling."""
    n0, n1 = map(len, layers)
    if n0 != n1:
        return 0 if n0 > n1 else 1
    projection = [len(s) == 1 and isinstance(modules[s[0]], nn.modules.conv._ConvNd)
                  and all(k == 1 for k in modules[s[0]].kernel_size) for s in layers]
    if n0 and projection[0] != projection[1]:
        return 0 if projection[1] else 1
    return None


def _reconcile(blocks: list[ResidualBlock], roles: Mapping[str, str]) -> list[ResidualBlock]:
    """Blocks as the final roles say: a block whose last layer is no longer ``branch_last``
    (overridden, or the classifier) is dropped; a ``branch_last`` set by an override that ends
    no block gets one -- its parent module's ``conv``/``linear`` layers, shortcut and scale."""
    kept = [b for b in blocks if roles[b.branch[-1]] == "branch_last"]
    ends = {b.branch[-1] for b in kept}
    for last in [p for p, r in roles.items() if r == "branch_last" and p not in ends]:
        parent = last.rpartition(".")[0]
        under = [p for p in roles if parent == "" or p.startswith(parent + ".")]
        taken = {q for b in kept for q in b.branch}
        branch = [p for p in under[:under.index(last)]
                  if roles[p] in ("conv", "linear") and p not in taken] + [last]
        kept.append(ResidualBlock(parent, tuple(branch),
                                  next((p for p in under if roles[p] == "shortcut"), None),
                                  next((p for p in under if roles[p] == "branch_scale"), None)))
    return kept


def _concat_skip(n: fx.Node, upstream: Mapping[fx.Node, frozenset], live: Mapping[fx.Node, bool]) -> bool:
    """A concatenation that joins a feature map with one computed from it (DenseNet's
    ``cat([x, f(x)])``), as opposed to parallel branches side by side (Inception)."""
    if not (n.op == "call_function" and n.target in _CATS and n.args
            and isinstance(n.args[0], (list, tuple))):
        return False
    parts = [a for a in n.args[0] if isinstance(a, fx.Node) and live[a]]
    return any(upstream[a] < upstream[b] for a in parts for b in parts)


def _is_add(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target in _ADDS)
            or (n.op == "call_method" and n.target in ("add", "add_")))


def _main_output(out: Any) -> Any:
    """The main output: the output itself, or the first element of a tuple/list/dict."""
    while isinstance(out, (tuple, list, dict)) and out:
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out


def _common_path(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for segment in zip(*parts):
        if len(set(segment)) > 1:
            break
        common.append(segment[0])
    if len(common) == len(parts[0]):  # a one-layer branch: its parent holds it
        common = common[:-1]
    return ".".join(common)


# -- the names reading (fallback) ---------------------------------------------------------------------

def _by_names(model: nn.Module, modules: Mapping[str, nn.Module], fixed: Mapping[str, str]):
    roles = {}
    for path, module in modules.items():
        role = fixed.get(path) or _role_by_type(module)
        if path not in fixed and role in ("conv", "linear"):
            segments = path.split(".")
            if any(_AUX.search(s) for s in segments):
                role = "aux_head"
            elif any(_SHORTCUT.search(s) for s in segments):
                role = "shortcut"
        roles[path] = role
    free = [p for p, r in roles.items() if r in ("conv", "linear") and p not in fixed]
    if free:
        roles[free[0]] = "stem"
    linears = [p for p in free[1:] if isinstance(modules[p], nn.Linear)]
    if linears:
        roles[linears[-1]] = "classifier"
        classes = modules[linears[-1]].out_features
        for p, r in roles.items():  # a head's hidden layers are ordinary layers
            if r == "aux_head" and p not in fixed and _width(modules[p]) != classes:
                roles[p] = _role_by_type(modules[p])
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
                                    next((p for p in under if roles[p] == "branch_scale"), None)))
    return roles, blocks


def _width(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _looks_like_block(module: nn.Module) -> bool:
    return bool(_BLOCK.search(type(module).__name__)
                or any(_SHORTCUT.search(name) for name, _ in module.named_children()))
