"""Reading a model's dataflow graph into roles, residual blocks and attentions.

The model is traced with :mod:`torch.fx` in train mode (auxiliary heads run only in training):
symbolically, or on an example batch where Python branches on shapes
(:mod:`~initsearch.roles.tracing`). Layers (:func:`~initsearch.roles.units.is_layer`) stay single
nodes; a layer a function uses through its weight (torchvision's Swin calls its attention as one
function of ``qkv.weight`` and ``proj.weight``) is read from those ``get_attr`` nodes. PyTorch's
own ``nn.TransformerEncoderLayer`` family cannot be traced (its fast path branches on tensor
properties), so it stays one node and is read from its known layout.

What the graph tells, in order:

1. **attentions**: an ``nn.MultiheadAttention`` (its in-projection ``attn_qkv``, its
   ``out_proj`` ``attn_out``); a ``scaled_dot_product_attention`` call; a ``softmax`` between
   two matmuls of the input's descendants (``softmax(q @ k^T) @ v``); or a function named
   ``*attention*`` that reads two linear layers' weights. The nearest layer upstream of q, k
   and v is ``attn_q``/``attn_k``/``attn_v`` -- ``attn_qkv`` when one layer makes all three --
   and the nearest layer downstream of the result is ``attn_out``;
2. **residual additions**, in execution order: for each ``a + b`` whose operands both depend on
   the input, the weight layers that feed only one operand (and belong to no block found
   before) form that operand's path since the fork. The operand with more of them is the
   branch -- on a tie, the one beside a lone 1x1 conv (a projection) -- and its last layer ends
   the branch: ``attn_out`` after an attention, ``mlp_out`` in a network with attention when
   the branch is linear layers or 1x1 convs (its earlier layers ``mlp_in``), else
   ``branch_last`` (a hybrid's convolutional blocks too); the other operand's layers are
   ``shortcut``\\ s. A norm on the branch before its first layer makes the block ``pre``-norm,
   a norm right after the sum ``post``-norm;
3. **the output**: the main output is the model's output, or the first element of a returned
   tuple/list/dict. The last weight layer executed before it is the ``classifier`` (unless it
   ends a residual branch). The weight layers that do *not* feed it form the auxiliary heads;
   the last layer of each head (one feeding no other head layer) is its ``aux_head``, the
   head's earlier layers stay ``conv``/``linear``. The first weight layer the input meets is
   the ``stem`` -- the ``embedding`` in a network with attention;
4. **tensors a container owns**, and small layers no type decides, by how they meet the data
   (:meth:`_Graph.unit_role`): concatenated to it, a ``token`` (one that joins late, CaiT's class
   token, is the skip of the residuals on it: :meth:`_Graph.late_skip`); added to it or to
   attention scores, a ``pos_embedding`` (relative-position tables and the modules holding
   them); a layer function's bias, a ``bias`` (BEiT's q/v biases); inside an attention -- or
   a matrix the data is multiplied by, owned by a module whose class is named for attention
   (SwiftFormer's additive query vector) -- an ``attn_param``; multiplying what is then
   summed, a ``layer_scale`` (``branch_scale`` when scalar: timm's LayerScale and Scale
   modules too); another per-channel layer on the data, an ``activation``. A
   squeeze-excitation gate runs last in its branch but does not end it;
5. **concatenation skips** (``cat([x, f(x)])``, DenseNet) mark a dense topology.
"""
from __future__ import annotations

import operator
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import fx, nn
from torch.nn import functional as F

from initsearch.roles.blocks import ResidualBlock, common_path
from initsearch.roles.tracing import COMPOSITES, trace
from initsearch.roles.vocabulary import (WEIGHT_TYPES, multiplier_role, per_channel,
                                         per_channel_tensors, role_by_type)

_ADDS = {operator.add, operator.iadd, torch.add}
_MULS = {operator.mul, operator.imul, torch.mul}
_CATS = {torch.cat, torch.concat, torch.concatenate}
_MATMULS = {operator.matmul, torch.matmul, torch.bmm}
_SOFTMAX = {F.softmax, torch.softmax}
_LAYER_FUNCTIONS = {F.linear, F.conv1d, F.conv2d, F.conv3d}
_MAX_HEADS = 32  # a square linear this narrow, between attention scores and softmax, mixes heads


@dataclass
class Reading:
    """What the graph says: roles (None where it says nothing), blocks in execution order,
    whether it has attention and concatenation skips, and how it was traced ("": symbolically)."""

    roles: dict[str, str | None]
    blocks: list[ResidualBlock] = field(default_factory=list)
    attention: bool = False
    dense: bool = False
    traced: str = ""


def read(model: nn.Module, units: Mapping[str, Any], fixed: Mapping[str, str],
         example_shape: tuple[int, ...]) -> Reading:
    """Roles, blocks and the network's shape from its traced graph (see the module docstring;
    ``example_shape`` is one input's, for a model fx can only trace on values:
    :func:`~initsearch.roles.tracing.trace`).

    Raises:
        Exception: whatever fx raises on an untraceable model, or ValueError when no layer
            feeds the main output; the caller then reads names instead.
    """
    layers = {p: u for p, u in units.items() if isinstance(u, nn.Module)}
    modules = dict(model.named_modules())
    graph, traced = trace(model, layers.values(), example_shape)
    g = _Graph(graph, units, layers, modules)
    roles: dict[str, str | None] = {p: fixed.get(p) or (role_by_type(u) if p in layers else None)
                                    for p, u in units.items()}
    free = lambda p: p not in fixed  # noqa: E731

    attention = g.attentions()
    for path, role in attention.items():
        if free(path):
            roles[path] = role
    transformer = bool(attention)

    blocks = list(g.composite_blocks)
    claimed = {q for b in blocks for q in (*b.branch, b.shortcut) if q}
    for n in g.nodes:
        if not _is_add(n) or not all(isinstance(a, fx.Node) for a in n.args[:2]):
            continue
        late = g.late_skip(n)
        if late is None and not all(g.live[a] for a in n.args[:2]):
            continue
        a, b = (g.upstream[x] for x in n.args[:2])
        sides = [[p for p in g.order if p in only and p not in claimed] for only in (a - b, b - a)]
        if late is not None:  # the branch is what runs after the tensor joins (CaiT's class token)
            sides[1 - late] = [p for p in sides[1 - late] if g.first_use[p] > g.index[n.args[late]]]
        weights = [[p for p in side if p in g.weights] for side in sides]
        first = _branch_side(weights, layers)
        if first is None:
            continue  # x + x, a sum over whole inner blocks, a position embedding, or no telling
        branch, skip = weights[first], weights[1 - first]
        gate = g.gate_layers(branch)  # a squeeze-excitation gate runs last but does not end it
        ends = [p for p in branch if p not in gate]
        if ends and ends[-1] != branch[-1]:
            branch = [p for p in branch if p != ends[-1]] + [ends[-1]]
        end = g.first_use[branch[-1]]
        after = sorted((a, p) for p in sides[first] if (a := g.acts_at(p)) > end)
        scale = next((p for _, p in reversed(after) if roles.get(p) in ("branch_scale", "layer_scale")
                      or g.multiplies(p) or (roles.get(p) is None and g.multiplier_module(p))), None)
        blocks.append(ResidualBlock(common_path(branch), tuple(branch), skip[-1] if skip else None,
                                    scale, g.norm_placement(n, sides[first], branch[0])))
        claimed.update(branch + skip)
        last = branch[-1]
        mlp = transformer and all(_pointwise(layers.get(p)) for p in branch)  # not a hybrid's conv block
        if free(last):
            roles[last] = ("attn_out" if attention.get(last) == "attn_out" else
                           "mlp_out" if mlp else "branch_last")
        if mlp and not any(p in attention for p in branch):
            for p in branch[:-1]:
                if free(p) and roles[p] in ("linear", "conv"):
                    roles[p] = "mlp_in"
        for p in skip:
            if free(p):
                roles[p] = "shortcut"
    for block in g.composite_blocks:  # PyTorch's transformer layers: their layout says it all
        for p in block.branch[:-1]:
            if free(p) and roles[p] == "linear":
                roles[p] = "mlp_in"
        if free(block.branch[-1]) and block.branch[-1] not in attention:
            roles[block.branch[-1]] = "mlp_out"

    main = _main_output(next(n for n in reversed(g.nodes) if n.op == "output").args[0])
    if not isinstance(main, fx.Node) or not g.upstream[main]:
        raise ValueError("no layer feeds the main output (the output or its first element)")
    feeds_main = g.upstream[main]
    heads = [p for p in g.weights if p not in feeds_main]
    inner = set().union(*(g.upstream[n] - set(g.uses.get(n, ())) for n in g.nodes
                          if set(g.uses.get(n, ())) & set(heads)))
    for p in heads:  # a head layer feeding another head layer is inside a head
        if free(p) and p not in inner:
            roles[p] = "aux_head"
    main_layers = [p for p in g.weights if p in feeds_main]
    if main_layers and free(main_layers[0]) and roles[main_layers[0]] in ("conv", "linear", "embedding"):
        roles[main_layers[0]] = "embedding" if transformer else "stem"
    if len(main_layers) > 1 and free(main_layers[-1]) and main_layers[-1] not in claimed:
        roles[main_layers[-1]] = "classifier"  # unless the output is a residual sum

    for path in units:
        if free(path) and (path not in layers or roles[path] is None):
            roles[path] = g.unit_role(path, blocks, attention)
    return Reading(roles, blocks, transformer, any(g.concat_skip(n) for n in g.nodes), traced)


class _Graph:
    """The traced graph with, per node: the units it uses, the units feeding it, whether it
    depends on the input."""

    def __init__(self, graph: fx.Graph, units: Mapping[str, Any], layers: Mapping[str, nn.Module],
                 modules: Mapping[str, nn.Module]) -> None:
        self.nodes = list(graph.nodes)  # topological: execution order
        self.units, self.layers, self.modules = units, layers, modules
        self.uses: dict[fx.Node, tuple[str, ...]] = {}
        self.composite_blocks: list[ResidualBlock] = []
        self.composite_roles: dict[str, str] = {}
        self.param_node: dict[str, fx.Node] = {}  # a tensor unit's get_attr, a module unit's call
        for n in self.nodes:
            if n.op == "call_module" and n.target in layers:
                mha = isinstance(layers[n.target], nn.MultiheadAttention)
                self.uses[n] = (n.target, f"{n.target}.out_proj") if mha else (n.target,)
                self.param_node.setdefault(n.target, n)
            elif n.op == "call_module" and isinstance(modules.get(n.target), COMPOSITES):
                self.uses[n] = self._expand(n.target, modules[n.target])
            elif n.op == "get_attr" and n.target in units:  # a tensor a container owns
                self.uses[n] = (n.target,)
                self.param_node[n.target] = n
            elif n.op == "get_attr" and n.target.rpartition(".")[0] in layers:  # a layer's weight
                self.uses[n] = (n.target.rpartition(".")[0],)
                self.param_node.setdefault(self.uses[n][0], n)  # a table read by a method of its own
            elif n.op == "call_function" and n.target in _LAYER_FUNCTIONS:  # F.linear(x, qkv.weight, b)
                weight = n.kwargs.get("weight", n.args[1] if len(n.args) > 1 else None)
                if isinstance(weight, fx.Node) and weight in self.uses:
                    self.uses[n] = self.uses[weight]
        self.upstream: dict[fx.Node, frozenset[str]] = {}
        self.live: dict[fx.Node, bool] = {}  # carries the input's data (not just its shape)
        for n in self.nodes:
            ins = n.all_input_nodes
            self.upstream[n] = frozenset().union(*(self.upstream[i] for i in ins), self.uses.get(n, ()))
            self.live[n] = n.op == "placeholder" or (not _shape_query(n)
                                                     and any(self.live[i] for i in ins))
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.norms = {p for p, m in layers.items() if role_by_type(m) == "norm"}
        self.first_use: dict[str, int] = {}
        for n in self.nodes:
            for p in self.uses.get(n, ()):
                self.first_use.setdefault(p, self.index[n])
        self.order = list(self.first_use)
        self.weights = [p for p in self.order if isinstance(layers.get(p), WEIGHT_TYPES)]

    # -- PyTorch's transformer layers, read from their layout ------------------------------------
    def _expand(self, path: str, module: nn.Module) -> tuple[str, ...]:
        """The units of a composite in execution order; records its blocks and attentions."""
        at = lambda name: f"{path}.{name}" if path else name  # noqa: E731
        if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            norm = "pre" if module.norm_first else "post"
            attns = ["self_attn"] + (["multihead_attn"] if hasattr(module, "multihead_attn") else [])
            norms = [n for n in ("norm1", "norm2", "norm3") if hasattr(module, n)]
            for name in attns:
                self.composite_roles[at(name)] = "attn_qkv"
                self.composite_roles[at(f"{name}.out_proj")] = "attn_out"
                self.composite_blocks.append(ResidualBlock(path, (at(name), at(f"{name}.out_proj")),
                                                           norm=norm))
            self.composite_blocks.append(ResidualBlock(path, (at("linear1"), at("linear2")), norm=norm))
            return tuple(at(n) for n in [*(x for a in attns for x in (a, f"{a}.out_proj")),
                                         "linear1", "linear2", *norms])
        return tuple(u for name, child in module.named_children()
                     for u in (self._expand(at(name), child) if isinstance(child, COMPOSITES)
                               else self._expand_children(at(name), child)))

    def _expand_children(self, path: str, module: nn.Module) -> tuple[str, ...]:
        if path in self.layers:
            return (path,)
        return tuple(u for name, child in module.named_children()
                     for u in (self._expand(f"{path}.{name}", child)
                               if isinstance(child, COMPOSITES)
                               else self._expand_children(f"{path}.{name}", child)))

    # -- attentions ------------------------------------------------------------------------------
    def attentions(self) -> dict[str, str]:
        """``{layer: attn_* role}`` for every attention in the graph."""
        found = dict(self.composite_roles)
        for n in self.nodes:
            if n.op == "call_module" and isinstance(self.layers.get(n.target), nn.MultiheadAttention):
                found[n.target], found[f"{n.target}.out_proj"] = "attn_qkv", "attn_out"
            elif n.op == "call_function" and n.target is F.scaled_dot_product_attention:
                self._label(found, [a for a in n.args[:3] if isinstance(a, fx.Node)], n)
            elif _is_softmax(n, self.modules):
                scores = self._back_to(n, _is_matmul)
                weighted = self._forward_to(n, _is_matmul)
                if scores is not None and weighted is not None:
                    v = next((a for a in weighted.args if isinstance(a, fx.Node)
                              and a is not n and self.live[a] and n not in self._ancestors(a)), None)
                    if v is not None:
                        self._label(found, [*scores.args[:2], v], weighted)
            elif n.op == "call_function" and "attention" in getattr(n.target, "__name__", ""):
                used = [u for a in _flat(n.args, n.kwargs) if isinstance(a, fx.Node)
                        for u in self.uses.get(a, ()) if isinstance(self.layers.get(u), nn.Linear)]
                used = list(dict.fromkeys(used))
                if len(used) == 2:  # an opaque attention of an in- and an out-projection
                    qkv = self.layers[used[0]]
                    found[used[0]] = "attn_qkv" if qkv.out_features == 3 * qkv.in_features else "attn_q"
                    found[used[1]] = "attn_out"
        return found

    def _label(self, found: dict[str, str], qkv: list[fx.Node], result: fx.Node) -> None:
        producers = [self._nearest(a, backward=True) for a in qkv]
        if len(producers) == 3 and producers[0] and producers[0] == producers[1] == producers[2]:
            for p in producers[0]:
                found[p] = "attn_qkv"
        else:
            for role, layers in zip(("attn_q", "attn_k", "attn_v"), producers):
                for p in layers:
                    found.setdefault(p, role)
        for p in self._nearest(result, backward=False):
            found[p] = "attn_out"

    def _nearest(self, node: fx.Node, backward: bool) -> set[str]:
        """The weight layers nearest to ``node`` upstream (or downstream) along live nodes."""
        seen, queue, out = {node}, deque([node]), set()
        while queue:
            n = queue.popleft()
            weights = [u for u in self.uses.get(n, ()) if u in self.weights]
            if weights and (backward or n is not node):  # a node's own layer makes its output
                out.update(weights if backward else weights[:1])
                continue
            nxt = n.all_input_nodes if backward else list(n.users)
            for m in nxt:
                if m not in seen and (self.live[m] or m.op == "get_attr"):
                    seen.add(m)
                    queue.append(m)
        return out

    def _weight_node(self, node: fx.Node) -> bool:
        return any(u in self.weights for u in self.uses.get(node, ()))

    def _ends_attention(self, node: fx.Node) -> bool:
        """A search for an attention's matmuls stops at a weight layer, except a talking-heads
        projection (CaiT: a square linear over the heads, mixing the scores); norms, scales and
        relative-position modules on the scores are passed through."""
        layers = [self.layers[u] for u in self.uses.get(node, ()) if u in self.weights]
        return bool(layers) and not all(isinstance(m, nn.Linear) and m.in_features == m.out_features
                                        <= _MAX_HEADS for m in layers)

    def _back_to(self, node: fx.Node, pred) -> fx.Node | None:
        """The nearest live ancestor satisfying ``pred`` within an attention (see
        :meth:`_ends_attention`)."""
        seen, queue = {node}, deque(node.all_input_nodes)
        while queue:
            n = queue.popleft()
            if n in seen or not self.live[n] or self._ends_attention(n):
                continue
            seen.add(n)
            if pred(n) and sum(isinstance(a, fx.Node) and self.live[a] for a in n.args) == 2:
                return n
            queue.extend(n.all_input_nodes)
        return None

    def _forward_to(self, node: fx.Node, pred, stop=None) -> fx.Node | None:
        """The nearest descendant satisfying ``pred``, searching no further than a node ``stop``
        accepts (default: an attention's end, :meth:`_ends_attention`)."""
        stop = stop or self._ends_attention
        seen, queue = {node}, deque(node.users)
        while queue:
            n = queue.popleft()
            if n in seen or stop(n):
                continue
            seen.add(n)
            if pred(n):
                return n
            queue.extend(n.users)
        return None

    def _ancestors(self, node: fx.Node) -> set[fx.Node]:
        seen, stack = set(), list(node.all_input_nodes)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(n.all_input_nodes)
        return seen

    # -- blocks ----------------------------------------------------------------------------------
    def norm_placement(self, add: fx.Node, branch_side: list[str], first: str) -> str | None:
        """``"pre"`` if a norm on the branch runs before its first weight layer, ``"post"`` if a
        norm is the first layer after the sum, else None."""
        norms = self.norms
        if any(p in norms for p in branch_side[:branch_side.index(first)]):
            return "pre"
        after = self._nearest_any(add)
        return "post" if after and after <= norms else None

    def _nearest_any(self, node: fx.Node) -> set[str]:
        """The units (of any kind) first reached downstream of ``node``."""
        seen, queue, out = {node}, deque(node.users), set()
        while queue:
            n = queue.popleft()
            if n in seen:
                continue
            seen.add(n)
            if n in self.uses and n.op != "get_attr":
                out.update(self.uses[n][:1])
                continue
            queue.extend(n.users)
        return out

    def multiplies(self, unit: str) -> bool:
        """``unit`` is a tensor multiplying the data (a branch multiplier)."""
        node = self.param_node.get(unit)
        return (unit not in self.layers and node is not None
                and any(_meeting(m) == "mul" for m in self._meetings(node)))

    def acts_at(self, unit: str) -> int:
        """Where a unit acts on the data: a layer where it is called, a tensor where it last
        meets the data (its get_attr may come earlier: ``x + self.gamma * f(x)``)."""
        node = self.param_node.get(unit)
        if unit in self.layers or node is None:
            return self.first_use[unit]
        return max((self.index[m] for m in self._meetings(node)), default=self.first_use[unit])

    def late_skip(self, add: fx.Node) -> int | None:
        """Which operand of ``add`` is a tensor computed from learned units but not from the input
        -- a token that joins the stream late (CaiT's class token, before its class-attention
        blocks) -- that the other operand reads: the skip of a residual on that token. None
        otherwise (a position embedding is added, not read by the other side)."""
        for i, (x, y) in enumerate((add.args[:2], add.args[1::-1])):
            if not self.live[x] and self.upstream[x] and self.live[y] and self._reads(y, x):
                return i
        return None

    def _reads(self, y: fx.Node, x: fx.Node) -> bool:
        """``x`` is an ancestor of ``y`` (searching no earlier than ``x``: a bounded walk)."""
        floor, seen, stack = self.index[x], set(), [y]
        while stack:
            n = stack.pop()
            if n is x:
                return True
            for m in n.all_input_nodes:
                if m not in seen and self.index[m] >= floor:
                    seen.add(m)
                    stack.append(m)
        return False

    def vector_module(self, path: str) -> bool:
        """A layer of no known type whose tensors are all per-channel vectors or scalars (timm's
        LayerScale and Scale, StarReLU): a multiplier or an elementwise function."""
        module = self.layers.get(path)
        return isinstance(module, nn.Module) and role_by_type(module) is None and per_channel(module)

    def gate_layers(self, branch: list[str]) -> set[str]:
        """The layers of ``branch`` that compute a gate (squeeze-excitation): the output passes
        a sigmoid before any other weight layer, or feeds only such layers."""
        gated: set[str] = set()
        for p in reversed(branch):
            node = self.param_node.get(p)
            if node is None:
                continue
            nearest = self._nearest(node, backward=False)
            if (self._forward_to(node, self._is_gate, stop=self._weight_node) is not None
                    or (nearest and nearest <= gated)):
                gated.add(p)
        return gated

    def _is_gate(self, n: fx.Node) -> bool:
        """A sigmoid-like activation: what turns squeeze-excitation's last layer into a gate."""
        if n.op == "call_function":
            return n.target in (torch.sigmoid, F.sigmoid, F.hardsigmoid)
        if n.op == "call_method":
            return n.target in ("sigmoid", "sigmoid_")
        return n.op == "call_module" and (isinstance(self.modules.get(n.target), (nn.Sigmoid, nn.Hardsigmoid))
                                          or "gate" in n.target.rpartition(".")[2].lower())

    def multiplier_module(self, path: str) -> bool:
        """A per-channel layer that can be a branch multiplier: one tensor (LayerScale's gamma,
        Scale's scale) or a class named for it -- not StarReLU's scale and bias."""
        module = self.layers.get(path)
        return self.vector_module(path) and (len(list(module.parameters(recurse=False))) == 1
                                             or "scale" in type(module).__name__.lower())

    def _summed(self, node: fx.Node) -> bool:
        """``node``'s output reaches a sum of two data-carrying terms (a residual addition, a
        weighted sum of heads) or a concatenation or stack before any weight layer."""
        def joins(n: fx.Node) -> bool:
            if n.op == "call_function" and (n.target in _CATS or n.target is torch.stack):
                return True
            return _is_add(n) and all(isinstance(a, fx.Node) and self.live[a] for a in n.args[:2])
        return self._forward_to(node, joins, stop=self._weight_node) is not None

    # -- units no type decides: tensors a container owns, small modules ---------------------------
    def unit_role(self, path: str, blocks: list[ResidualBlock], attention: Mapping[str, str]) -> str | None:
        """A unit's role from how it meets the data. A tensor -- or a module called on no data,
        such as a relative-position bias table -- is a ``token`` when concatenated to the
        stream, a ``pos_embedding`` when added to it or to attention scores, a ``bias`` when a
        weight layer's function adds it, an ``attn_param`` when it acts inside an attention
        (between the input and output projections), a ``layer_scale`` when it multiplies the
        data elsewhere. A per-channel module on the data is a ``layer_scale`` (``branch_scale``
        if scalar) when its output is summed, else an ``activation``; a larger one inside an
        attention (a relative-position module called on the queries or the scores) a
        ``pos_embedding``."""
        node = self.param_node.get(path)
        if node is None:
            return None
        if node.op == "call_module" and self.live[node]:
            inside = self._inside(node, attention)
            if not self.vector_module(path):
                return "pos_embedding" if inside else None
            if inside:
                return "attn_param"
            if any(b.scale == path for b in blocks) or (self.multiplier_module(path) and self._summed(node)):
                return multiplier_role(self.layers[path])
            return "activation"
        meetings = self._meetings(node)
        kinds = {_meeting(m) for m in meetings}
        unit = self.units[path]
        values = list(unit.parameters(recurse=False)) if isinstance(unit, nn.Module) else [unit]
        if "cat" in kinds:
            return "token"
        if kinds and kinds <= {"add", "attention"}:
            # a table (positions x channels) is a position embedding; a per-head or scalar
            # tensor handed to an attention function (Swin V2's logit scale) is the attention's
            return "pos_embedding" if "add" in kinds or not per_channel_tensors(values) else "attn_param"
        if meetings and all(self._bias_of(m, node) for m in meetings):
            return "bias"
        if meetings and all(self._inside(m, attention) for m in meetings):
            return "attn_param"
        if kinds == {"matmul"} and self._owner_is_attention(path):  # SwiftFormer's additive query vector
            return "attn_param"
        if kinds == {"mul"} and (any(b.scale == path for b in blocks)
                                 or all(self._summed(m) for m in meetings)):
            return multiplier_role(values)
        return None

    def _owner_is_attention(self, path: str) -> bool:
        """The module owning tensor ``path`` is an attention by its class name: one with no
        softmax for the graph to find (SwiftFormer's additive attention)."""
        owner = self.modules.get(path.rpartition(".")[0])
        return owner is not None and "attention" in type(owner).__name__.lower()

    def _bias_of(self, call: fx.Node, tensor: fx.Node) -> bool:
        """``tensor`` reaches ``call`` -- F.linear or F.convNd -- as its bias argument."""
        if not (call.op == "call_function" and call.target in _LAYER_FUNCTIONS):
            return False
        bias = call.kwargs.get("bias", call.args[2] if len(call.args) > 2 else None)
        return isinstance(bias, fx.Node) and (bias is tensor or tensor in self._ancestors(bias))

    def _inside(self, node: fx.Node, attention: Mapping[str, str]) -> bool:
        """``node`` sits between an attention's input projections and its output projection."""
        if not attention:
            return False
        before = self._nearest(node, backward=True)
        after = self._nearest(node, backward=False)
        return (any(attention.get(p) in ("attn_qkv", "attn_q", "attn_k", "attn_v") for p in before)
                and any(attention.get(p) == "attn_out" for p in after))

    def _meetings(self, node: fx.Node) -> list[fx.Node]:
        """Where a tensor (through shape ops on it alone) first meets the input's descendants."""
        seen, queue, out = {node}, deque(node.users), []
        while queue:
            n = queue.popleft()
            if n in seen:
                continue
            seen.add(n)
            if self.live[n]:
                out.append(n)
            else:
                queue.extend(n.users)
        return out

    def concat_skip(self, n: fx.Node) -> bool:
        """A concatenation joining a feature map with one computed from it (DenseNet's
        ``cat([x, f(x)])``), as opposed to parallel branches side by side (Inception)."""
        if not (n.op == "call_function" and n.target in _CATS and n.args
                and isinstance(n.args[0], (list, tuple))):
            return False
        parts = [a for a in n.args[0] if isinstance(a, fx.Node) and self.live[a]]
        return any(self.upstream[a] < self.upstream[b] for a in parts for b in parts)


def _meeting(n: fx.Node) -> str:
    if n.op == "call_function" and n.target in _CATS:
        return "cat"
    if (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_")):
        return "add"
    if (n.op == "call_function" and n.target in _MULS) or (n.op == "call_method" and n.target in ("mul", "mul_")):
        return "mul"
    if _is_matmul(n):
        return "matmul"
    if n.op == "call_function" and (n.target is F.scaled_dot_product_attention
                                    or "attention" in getattr(n.target, "__name__", "")):
        return "attention"
    return "other"


def _shape_query(n: fx.Node) -> bool:
    """``x.shape``, ``x.size()``, ``x.dim()``...: Python numbers about a tensor, not its data."""
    return ((n.op == "call_function" and n.target is getattr
             and n.args[1] in ("shape", "ndim", "dtype", "device"))
            or (n.op == "call_method" and n.target in ("size", "dim", "numel")))


def _is_add(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target in _ADDS)
            or (n.op == "call_method" and n.target in ("add", "add_")))


def _is_matmul(n: fx.Node) -> bool:
    return ((n.op == "call_function" and n.target in _MATMULS)
            or (n.op == "call_method" and n.target in ("matmul", "bmm")))


def _is_softmax(n: fx.Node, modules: Mapping[str, nn.Module]) -> bool:
    return ((n.op == "call_function" and n.target in _SOFTMAX)
            or (n.op == "call_method" and n.target == "softmax")
            or (n.op == "call_module" and isinstance(modules.get(n.target), nn.Softmax)))


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


def _pointwise(layer: nn.Module | None) -> bool:
    """A linear layer or a 1x1 conv: what a transformer's MLP is made of."""
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.modules.conv._ConvNd) and all(k == 1 for k in layer.kernel_size)


def _main_output(out: Any) -> Any:
    """The main output: the output itself, or the first element of a tuple/list/dict."""
    while isinstance(out, (tuple, list, dict)) and out:
        out = next(iter(out.values())) if isinstance(out, dict) else out[0]
    return out


def _flat(args: Any, kwargs: Mapping[str, Any]) -> list[Any]:
    out = []
    for a in (*args, *kwargs.values()):
        out.extend(a if isinstance(a, (list, tuple)) else [a])
    return out
