"""A deep MLP on flattened CIFAR images: the classic testbed of init analyses.

Glorot & Bengio 2010, He et al. 2015 and Klambauer et al. 2017 (SELU) study signal propagation
in exactly this kind of network; without skips or (by default) normalization, its trainability
at depth rests on the init alone.

Layout: the 3x32x32 input is flattened to 3072 features, then ``depth`` hidden layers of
``Linear(-, width) - [norm] - activation`` (in ``self.layers``, an ``nn.Sequential``), then
``classifier = Linear(width, num_classes)``.

Options:

* ``depth``: the number of hidden layers (>= 1); ``width``: their units.
* ``activation``: ``relu``, ``tanh``, ``gelu``, ``selu`` or ``identity`` (a deep linear net).
* ``norm``: ``"none"``, ``"batch"`` (BatchNorm1d) or ``"layer"`` (LayerNorm), after each hidden
  Linear and before its activation. With ``"batch"`` the hidden Linears have no bias (BN's shift
  replaces it); otherwise they do.
"""
from __future__ import annotations

import torch
from torch import nn

from initsearch.archs.checks import one_of, positive_int

IN_FEATURES = 3 * 32 * 32
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU,
                                           "selu": nn.SELU, "identity": nn.Identity}
NORMS: dict[str, type[nn.Module]] = {"none": nn.Identity, "batch": nn.BatchNorm1d,
                                     "layer": nn.LayerNorm}


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` units on flattened 3x32x32 images."""

    def __init__(self, depth: int = 8, width: int = 512, num_classes: int = 10,
                 activation: str = "relu", norm: str = "none") -> None:
        super().__init__()
        positive_int("depth", depth, " (hidden layers)")
        positive_int("width", width)
        positive_int("num_classes", num_classes)
        one_of("activation", activation, ACTIVATIONS)
        one_of("norm", norm, NORMS)
        layers: list[nn.Module] = []
        cin = IN_FEATURES
        for _ in range(depth):
            layers.append(nn.Linear(cin, width, bias=norm != "batch"))
            if norm != "none":  # no Identity placeholders between the layers
                layers.append(NORMS[norm](width))
            layers.append(ACTIVATIONS[activation]())
            cin = width
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.layers(x.flatten(1)))
