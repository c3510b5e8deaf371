"""Init schemes: one small in-place function per scheme, acting on one module.

Every scheme takes a module (a conv/linear layer, or a normalization layer where noted) and
re-initializes its parameters in place; names end in ``_`` as in ``torch.nn.init``. After the
scheme, :func:`scale_` multiplies the weight by the recipe's per-role scale.

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
==============  =============================================================  ==============

None of these needs data; each costs one pass over the layer's weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

WEIGHT_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


@torch.no_grad()
def default_(module: nn.Module) -> None:
    """PyTorch's default init for the module's type (its own ``reset_parameters``); a module
    without one keeps the values it was constructed with, which are its default."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


@torch.no_grad()
def he_(module: nn.Module, distribution: str = "normal", mode: str = "fan_in") -> None:
    """He/Kaiming init for ReLU: variance ``2 / fan`` (He et al., ICCV 2015), bias 0."""
    init = nn.init.kaiming_normal_ if distribution == "normal" else nn.init.kaiming_uniform_
    init(module.weight, mode=mode, nonlinearity="relu")
    _zero_bias(module)


@torch.no_grad()
def xavier_(module: nn.Module, distribution: str = "normal") -> None:
    """Glorot/Xavier init: variance ``2 / (fan_in + fan_out)`` (AISTATS 2010), bias 0."""
    init = nn.init.xavier_normal_ if distribution == "normal" else nn.init.xavier_uniform_
    init(module.weight)
    _zero_bias(module)


@torch.no_grad()
def orthogonal_(module: nn.Module, gain: str = "relu") -> None:
    """(Semi-)orthogonal flattened weight times ``gain`` (Saxe et al., ICLR 2014), bias 0."""
    # Drawn into a contiguous tensor: torch's orthogonal_ views the weight as a matrix, which
    # fails on a channels_last conv weight.
    w = torch.empty(module.weight.shape, dtype=module.weight.dtype, device=module.weight.device)
    module.weight.copy_(nn.init.orthogonal_(w, gain=nn.init.calculate_gain(gain)))
    _zero_bias(module)


@torch.no_grad()
def zero_(module: nn.Module) -> None:
    """Every parameter of the module exactly 0 (for a norm layer: gamma = beta = 0)."""
    for p in module.parameters(recurse=False):
        p.zero_()


@torch.no_grad()
def scale_(module: nn.Module, scale: float) -> None:
    """Multiply the weight (a norm layer's gamma) by ``scale``; biases are left alone."""
    if scale != 1.0 and getattr(module, "weight", None) is not None:
        module.weight.mul_(scale)


def _zero_bias(module: nn.Module) -> None:
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()


@dataclass(frozen=True)
class Scheme:
    """A named scheme: its function, its options (first value is the default), where it applies."""

    name: str
    fn: Callable[..., None]
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    weight_layers_only: bool = True

    def applies_to(self, module: nn.Module) -> bool:
        return isinstance(module, WEIGHT_LAYERS) or not self.weight_layers_only

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
)}
