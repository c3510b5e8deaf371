"""Tracing a model into a :mod:`torch.fx` graph whose layers stay single nodes.

Two tracers, tried in order:

1. **symbolic** (fx's own): nothing is computed, so the graph holds for every input; it fails
   on Python control flow over a tensor's shape or value (``if H != self.window_size``,
   ``max(ceil(ih / s) ...)`` for TF "same" padding, ``if x.ndim != 4``), which many timm
   families have;
2. **concrete**: the same trace, but every proxy also carries the value an example batch of one
   input gives at that point (computed as the trace goes, without gradients; each leaf layer
   in eval mode, which leaves its node unchanged and lets BatchNorm take one image), so
   ``x.shape``, ``x.size()``, ``x.ndim`` and ``len`` answer with real numbers and a branch on them takes
   the path that input takes. The graph is the model's for inputs of the example's shape --
   what a study trains on. A branch on a tensor's *values* (``if x.mean() > 0``) still fails:
   no single graph describes every input, and discovery falls back to names. The model's
   buffers (BatchNorm's running statistics) and the caller's random streams are left as they
   were.

Both trace the forward as a model is called on one input: the arguments after the first are
constants at their defaults (``if patch_coord is None`` takes its branch).

Both keep every layer (and every PyTorch transformer composite, which fx cannot trace through)
one ``call_module`` node, and keep timm's registered untraceable helpers (window partitioning,
position-embedding resampling) single calls.
"""
from __future__ import annotations

import inspect
import sys
from typing import Any, Iterable, Iterator

import torch
from torch import fx, nn

#: torch.nn modules that fx cannot trace through: read from their known layout instead.
COMPOSITES = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
              nn.TransformerDecoder, nn.Transformer)


def trace(model: nn.Module, layers: Iterable[nn.Module],
          example_shape: tuple[int, ...]) -> tuple[fx.Graph, str]:
    """The graph of ``model`` in train mode (auxiliary heads run only in training), with each
    of ``layers`` one node, and how it was traced: symbolically (``""``) if fx can, else on
    one random input of ``example_shape`` (the words say so).
    Raises what the concrete trace raised, naming the symbolic failure too, when neither can."""
    layers = list(layers)
    modes = {m: m.training for m in model.modules()}
    model.train()
    defaults = _defaults(model)
    try:
        try:
            return _Tracer(layers).trace(model, defaults), ""
        except Exception as exc:  # noqa: BLE001 -- any failure: try with values
            symbolic = exc
        device = _device(model)
        buffers = list(model.buffers())
        kept = [b.detach().clone() for b in buffers]  # BatchNorm's running stats move in train mode
        try:  # the caller's random streams stay as they were (the example, dropout)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(0)
                example = torch.randn(1, *example_shape, device=device)
                graph = _ConcreteTracer(layers, example).trace(model, defaults)
        except Exception as concrete:
            raise Untraceable(f"{type(concrete).__name__}: {concrete} (symbolically: "
                              f"{type(symbolic).__name__}: {symbolic})") from concrete
        finally:
            with torch.no_grad():
                for b, v in zip(buffers, kept):
                    b.copy_(v)
        return graph, (f"traced on a {'x'.join(map(str, example.shape))} example: its forward "
                       "branches on shapes")
    finally:
        for m, mode in modes.items():
            m.training = mode


class Untraceable(Exception):
    """Neither tracer could follow the forward: why each failed."""


class _Tracer(fx.Tracer):
    """Keeps every layer (and every PyTorch transformer composite) one node."""

    def __init__(self, layers: Iterable[nn.Module]) -> None:
        super().__init__(autowrap_functions=_timm_functions())
        self.layers = {id(m) for m in layers}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if id(m) in self.layers or isinstance(m, COMPOSITES):
            return True
        if next(m.parameters(), None) is not None:
            return False  # a container of layers: trace through it
        return super().is_leaf_module(m, qualname)


class _ValueProxy(fx.Proxy):
    """A proxy that also holds the value the example gives at its node: shape queries, ``len``
    and iteration read that value, so shape arithmetic becomes constants. A tensor's *values*
    stay symbolic: a branch on them has no single graph, and fails the trace."""

    value: Any = None

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self.value.dtype

    @property
    def device(self) -> torch.device:
        return self.value.device

    def size(self, *dim: int) -> Any:
        return self.value.size(*dim)

    def dim(self) -> int:
        return self.value.dim()

    def __len__(self) -> int:
        return len(self.value)


class _ConcreteTracer(_Tracer):
    """:class:`_Tracer` whose proxies carry the example's values (see the module docstring)."""

    def __init__(self, layers: Iterable[nn.Module], example: torch.Tensor) -> None:
        super().__init__(layers)
        self.example = example
        self.computing = False  # inside a value computation: modules and parameters run as-is
        self.leaf: nn.Module | None = None
        self.forward = None

    def proxy(self, node: fx.Node) -> _ValueProxy:
        return _ValueProxy(node, self)

    def call_module(self, m: nn.Module, forward, args, kwargs) -> Any:
        if self.computing:
            return forward(*args, **kwargs)
        self.leaf, self.forward = m, forward  # a leaf, which create_proxy runs next for its value
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        return attr_val if self.computing else super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_proxy(self, kind: str, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None) -> _ValueProxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        proxy.value = self._value(kind, target, args, kwargs)
        return proxy

    def _value(self, kind: str, target, args, kwargs) -> Any:
        if kind == "placeholder":  # the input, or an argument fx keeps at its default
            return args[0] if args else self.example
        if kind == "output":
            return None
        args, kwargs = fx.node.map_aggregate((args, kwargs), _value_of)
        self.computing = True
        try:
            if kind == "get_attr":  # a copy: in-place ops in the forward must not touch the model
                value = self.root
                for atom in target.split("."):
                    value = getattr(value, atom)
                return value.detach().clone() if isinstance(value, torch.Tensor) else value
            if kind == "call_function":
                return target(*args, **kwargs)
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            return self._leaf_value(args, kwargs)
        finally:
            self.computing = False

    def _leaf_value(self, args, kwargs) -> Any:
        """A leaf layer's output, computed in eval mode: the graph keeps the leaf one node
        whatever its mode, and eval lets BatchNorm see one image (at 1x1 maps in train mode it
        cannot), so the example is a single image."""
        modes = {m: m.training for m in self.leaf.modules()}
        self.leaf.eval()
        try:
            return self.forward(*args, **kwargs)
        finally:
            for m, mode in modes.items():
                m.training = mode

    def to_bool(self, obj: fx.Proxy) -> bool:  # a branch on values, not shapes: no one graph
        raise fx.proxy.TraceError(f"the forward branches on a tensor's values ({obj.node.format_node()})")

    def iter(self, obj: fx.Proxy) -> Iterator:
        return (obj[i] for i in range(len(obj.value)))

    def keys(self, obj: fx.Proxy) -> Any:
        return obj.value.keys()


def _value_of(a: Any) -> Any:
    if isinstance(a, fx.proxy.Attribute):  # ``x.T`` and the like, not yet a node
        return getattr(_value_of(a.root), a.attr)
    return a.value if isinstance(a, _ValueProxy) else a


def _defaults(model: nn.Module) -> dict[str, Any] | None:
    """The forward's arguments after the first that have defaults, as constants: a model is
    traced as it is called on one input (``if patch_coord is None`` takes its branch)."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty} or None


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _timm_functions() -> tuple:
    """The helpers timm registers as not traceable (window partitioning, position-embedding
    resampling: shape arithmetic in Python), kept as single calls, when timm is loaded."""
    fx_registry = sys.modules.get("timm.layers._fx")
    return tuple(getattr(fx_registry, "_autowrap_functions", ()))
