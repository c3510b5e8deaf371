"""Init schemes: one small in-place function per scheme, acting on one unit.

Every scheme takes one unit (:mod:`initsearch.roles.units`): a conv/linear layer, a
normalization layer where noted, one q/k/v block of an attention's packed in-projection (a
:class:`~initsearch.roles.units.Part`: :meth:`Recipe.apply <initsearch.recipe.Recipe.apply>`
hands the blocks over one by one, so each gets its own fan), or a tensor a container owns (a
class token, a position embedding) -- and re-initializes it in place; names end in ``_`` as in
``torch.nn.init``. After the scheme, :func:`scale_` multiplies the weight by the recipe's per-role
scale.

``fan_in`` of a conv weight ``(c_out, c_in, k_h, k_w)`` is ``c_in*k_h*k_w``; ``fan_out`` is
``c_out*k_h*k_w``. Biases are set to zero by every scheme except ``default``.

==============  =============================================================  ==============
scheme          rule                                                           layers
==============  =============================================================  ==============
``default``     PyTorch's own ``reset_parameters()`` (conv/linear: U(+-1/sqrt(  all
                fan_in)) i.e. Kaiming-uniform with a=sqrt(5); norm: gamma=1,
                beta=0)
``he``          He et al. 2015: N(0, 2/fan) or U(+-sqrt(6/fan)); fan_in keeps the  conv/linear
                forward variance of a ReLU net, fan_out the backward one
``xavier``      Glorot & Bengio 2010: N(0, 2/(fan_in+fan_out)) or U(+-sqrt(6/(   conv/linear
                fan_in+fan_out)))
``orthogonal``  Saxe et al. 2014: the flattened ``(c_out, c_in*k*k)`` weight is a  conv/linear
                (semi-)orthogonal matrix times ``gain`` (sqrt(2) for ReLU)
``zero``        all weights and biases 0 (norm: gamma=0, beta=0). On auxiliary   all
                heads this is LION-DG's rule (see :data:`initsearch.recipe.BASELINES`)
``normal``      N(0, std^2), bias 0, with a fixed ``std`` (GPT-2 and ViT use 0.02  any weight
                for every matrix and embedding; ViT 0.02 for position
                embeddings)
==============  =============================================================  ==============

An attention (``nn.MultiheadAttention``) under ``default`` gets PyTorch's own init of its packed
in-projection (Xavier over the whole ``3d x d`` matrix: std ``1/sqrt(2d)`` per block); under the
other schemes each q/k/v block is one ``d x d`` matrix. A tensor a container owns has no
``reset_parameters``: ``default`` keeps what the model built.

None of these needs data; each costs one pass over the layer's weights.

**Roles without a weight** -- ``layer_scale``, ``bias`` (owned apart from its layer), ``attn_param``,
``activation``, ``recurrent``, ``token``, ``pos_embedding`` -- take only ``default``, ``zero`` and
``normal``: ``default`` runs the unit's own ``reset_parameters`` where it has one (timm's
LayerScale refills its ``init_values``, an LSTM takes PyTorch's init) and otherwise keeps the
value the model was built with; a fan-based scheme is refused for them (a recipe error, not a
silent write).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from initsearch.roles import Part, matrices, tensors, weight

#: Units with a weight matrix and a fan (the schemes marked conv/linear act on these).
WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.MultiheadAttention, Part)


@torch.no_grad()
def default_(unit) -> None:
    """PyTorch's default init for the unit's type (its own ``reset_parameters``); a unit
    without one keeps the values it was constructed with, which are its default."""
    reset = getattr(unit, "reset_parameters", None) or getattr(unit, "_reset_parameters", None)
    if isinstance(unit, nn.Module) and reset is not None:
        reset()
    if isinstance(unit, NonDynamicallyQuantizableLinear) and unit.bias is not None:
        unit.bias.zero_()  # an attention's out_proj: nn.MultiheadAttention zeroes its bias


@torch.no_grad()
def he_(unit, distribution: str = "normal", mode: str = "fan_in") -> None:
    """He/Kaiming init for ReLU: variance ``2 / fan`` (He et al., ICCV 2015), bias 0."""
    init = nn.init.kaiming_normal_ if distribution == "normal" else nn.init.kaiming_uniform_
    for m in matrices(unit):
        init(m.weight, mode=mode, nonlinearity="relu")
        _zero_bias(m)


@torch.no_grad()
def xavier_(unit, distribution: str = "normal") -> None:
    """Glorot/Xavier init: variance ``2 / (fan_in + fan_out)`` (AISTATS 2010), bias 0."""
    init = nn.init.xavier_normal_ if distribution == "normal" else nn.init.xavier_uniform_
    for m in matrices(unit):
        init(m.weight)
        _zero_bias(m)


@torch.no_grad()
def orthogonal_(unit, gain: str = "relu") -> None:
    """(Semi-)orthogonal flattened weight times ``gain`` (Saxe et al., ICLR 2014), bias 0."""
    for m in matrices(unit):
        # Drawn into a contiguous tensor: torch's orthogonal_ views the weight as a matrix,
        # which fails on a channels_last conv weight.
        w = torch.empty(m.weight.shape, dtype=m.weight.dtype, device=m.weight.device)
        m.weight.copy_(nn.init.orthogonal_(w, gain=nn.init.calculate_gain(gain)))
        _zero_bias(m)


@torch.no_grad()
def normal_(unit, std: float = 0.02) -> None:
    """Every weight entry from N(0, std^2), bias 0: GPT-2's and ViT's rule (std 0.02). A unit
    with no single weight (StarReLU's scale and bias) draws every tensor."""
    for m in matrices(unit):
        w = weight(m)
        for t in [w] if w is not None else tensors(m):
            t.normal_(0.0, std)
        _zero_bias(m)


@torch.no_grad()
def zero_(unit) -> None:
    """Every parameter of the unit exactly 0 (for a norm layer: gamma = beta = 0)."""
    for p in tensors(unit):
        p.zero_()


@torch.no_grad()
def scale_(unit, scale: float) -> None:
    """Multiply the weight (a norm layer's gamma, an owned tensor itself, every q/k/v block of
    an attention) by ``scale``; biases are left alone."""
    if scale != 1.0:
        for m in matrices(unit):
            w = weight(m)
            if w is not None:
                w.mul_(scale)


def _zero_bias(unit) -> None:
    if getattr(unit, "bias", None) is not None:
        unit.bias.zero_()


@dataclass(frozen=True)
class Scheme:
    """A named scheme: its function, its options (first value is the default), where it applies."""

    name: str
    fn: Callable[..., None]
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    weight_layers_only: bool = True

    def applies_to(self, unit) -> bool:
        return isinstance(unit, WEIGHT_LAYERS) or not self.weight_layers_only

    def check_options(self, options: dict) -> str | None:
        """None if ``options`` are valid for this scheme, else what is wrong."""
        for key, value in options.items():
            if key not in self.options:
                return (f"scheme {self.name!r} has no option {key!r}"
                        + (f" (options: {', '.join(self.options)})" if self.options else ""))
            if value not in self.options[key]:
                return f"scheme {self.name!r} option {key}={value!r}: use one of {self.options[key]}"
        return None


SCHEMES: dict[str, Scheme] = {s.name: s for s in (
    Scheme("default", default_, weight_layers_only=False),
    Scheme("he", he_, {"distribution": ("normal", "uniform"), "mode": ("fan_in", "fan_out")}),
    Scheme("xavier", xavier_, {"distribution": ("normal", "uniform")}),
    Scheme("orthogonal", orthogonal_, {"gain": ("relu", "linear")}),
    Scheme("zero", zero_, weight_layers_only=False),
    Scheme("normal", normal_, {"std": (0.02, 0.01, 0.002)}, weight_layers_only=False),
)}
