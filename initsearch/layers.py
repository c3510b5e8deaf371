"""Layers that the model zoo builds with and the role vocabulary knows by type: the scalar
parameters of normalization-free residual networks (Fixup, SkipInit).

Each is its own module type so role discovery can label it (``branch_scale``, ``scalar_bias``)
and init schemes can act on it like on any layer. They live below both the zoo and the roles so
that labelling a model never imports the zoo.
"""
from __future__ import annotations

import torch
from torch import nn


class Scale(nn.Module):
    """``x * s`` with one learnable scalar ``s``: the multiplier at the end of a residual branch
    (Fixup's ``scale``, SkipInit's ``alpha``). PyTorch-style default: 1."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class Bias(nn.Module):
    """``x + b`` with one learnable scalar ``b`` (Fixup's scalar biases). Default: 0."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias
