"""VGG for CIFAR (Simonyan & Zisserman 2015): plain stacks of 3x3 convs, no skip connections.

Simonyan, Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015, Table 1 (configurations A, B, D, E = VGG-11, 13, 16, 19).

Layout for a 3x32x32 input: five stages of 3x3 convs (stride 1, padding 1) at widths
w, 2w, 4w, 8w, 8w, each conv followed by BN (``norm="batch"``) and ReLU, each stage ended by a
2x2 max-pool (``M``), so the map after the last pool is 8w x 1 x 1. Convs per stage::

    depth 11 (A)   1 1 2 2 2      w M 2w M 4w 4w M 8w 8w M 8w 8w M
    depth 13 (B)   2 2 2 2 2
    depth 16 (D)   2 2 3 3 3
    depth 19 (E)   2 2 4 4 4

``depth`` counts the convs plus the paper's three fully connected layers; the CIFAR head here
has ``fc_layers`` of them instead (so VGG-16 with ``fc_layers=1`` has 14 weight layers): with 1
it is just ``classifier = Linear(8w, num_classes)``; with 2 or 3, hidden ``Linear(-, fc_width)
+ ReLU`` layers in ``self.fc`` come first. The convs sit in ``self.features`` (an
``nn.Sequential``). No dropout.

Options:

* ``width``: channels of the first stage (64 in the paper).
* ``norm``: ``"batch"`` puts a BatchNorm after every conv (VGG-BN; the convs then have no bias,
  BN's shift replaces it); ``"none"`` is the paper's plain VGG, convs with bias.
* ``fc_layers``: 1, 2 or 3 linear layers in the head; ``fc_width``: the hidden ones' width
  (4096 in the paper, 512 is the usual CIFAR choice).
"""
from __future__ import annotations

import torch
from torch import nn

from initsearch.archs.checks import one_of, positive_int

#: Convs in each of the five stages, by depth.
CONVS_PER_STAGE = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
                   19: (2, 2, 4, 4, 4)}
#: Stage widths as multiples of ``width``.
STAGE_MULTIPLIERS = (1, 2, 4, 8, 8)


class VGG(nn.Module):
    """CIFAR VGG-``depth`` (11, 13, 16, 19) with a ``fc_layers``-deep head."""

    def __init__(self, depth: int = 11, width: int = 64, num_classes: int = 10,
                 norm: str = "batch", fc_layers: int = 1, fc_width: int = 512) -> None:
        super().__init__()
        one_of("depth", depth, CONVS_PER_STAGE)
        positive_int("width", width, " (64 in the paper)")
        positive_int("num_classes", num_classes)
        one_of("norm", norm, ("batch", "none"))
        one_of("fc_layers", fc_layers, (1, 2, 3))
        positive_int("fc_width", fc_width)
        bn = norm == "batch"
        layers: list[nn.Module] = []
        cin = 3
        for convs, mult in zip(CONVS_PER_STAGE[depth], STAGE_MULTIPLIERS):
            for _ in range(convs):
                layers.append(nn.Conv2d(cin, mult * width, 3, 1, 1, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(mult * width))
                layers.append(nn.ReLU())
                cin = mult * width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        hidden: list[nn.Module] = []
        for _ in range(fc_layers - 1):
            hidden += [nn.Linear(cin, fc_width), nn.ReLU()]
            cin = fc_width
        self.fc = nn.Sequential(*hidden)  # empty with fc_layers=1
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc(self.features(x).flatten(1)))
