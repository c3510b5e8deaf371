"""DenseNet-BC for CIFAR (Huang et al. 2017), optionally with deep-supervision taps.

Huang, Liu, van der Maaten, Weinberger, "Densely Connected Convolutional Networks", CVPR 2017,
section 3 ("DenseNet-BC") and the CIFAR setup of section 4.

Layout for a 3x32x32 input, ``depth`` L, growth rate k and ``n = (L - 4) / 6`` layers per
dense block (3 dense blocks of n layers, 2 convs each, plus stem, 2 transitions and the
classifier: 6n + 4 = L); m is the number of channels coming in::

    stem          conv3x3(3 -> 2k)                                        32x32
    block1        n dense layers, each adding k channels                  32x32
    transition1   BN - ReLU - conv1x1(m -> floor(compression * m)) - avgpool2  -> 16x16
    block2        n dense layers                                          16x16
    transition2   as transition1                                           -> 8x8
    block3        n dense layers                                           8x8
    head          BN - ReLU - global average pool - Linear(m, num_classes)  (``classifier``)

A dense layer is the bottleneck ``BN - ReLU - conv1x1(4k) - BN - ReLU - conv3x3(k)``; its k new
channels are concatenated to its input (``torch.cat``; nothing is added anywhere, so role
discovery finds no residual branch). The modules sit in ``self.features``, a ModuleDict in
forward order: ``block1``, ``transition1``, ``block2``, ``transition2``, ``block3``.

DenseNet-BC-100 with k=12 (the defaults, 10 classes) has 769,162 parameters without auxiliary
heads and 775,374 with both, in the 0.77-0.80M range of the paper's "0.8M". No dropout (the
paper uses none with data augmentation).

Options:

* ``growth``: k, the channels each dense layer adds (12, 24 or 40 in the paper).
* ``compression``: theta in (0, 1], the fraction of channels a transition keeps (0.5 for BC).
* ``aux_blocks``: the dense blocks (1 and/or 2) that get an auxiliary head, stored in
  ``self.aux_heads`` as ``"block1"``/``"block2"``. A head is a *side tap* on the block's output
  (before the transition): ``BN - ReLU - global average pool`` then one affine map
  ``y = W h + b`` (``fc``, the layer LION-DG zeroes); nothing flows back into the main path.
* ``norm="none"``: every BatchNorm (heads' included) becomes the identity; convs keep
  ``bias=False`` as in the normalized net, so the two variants differ only by the BNs.

Training loss with heads (see :func:`initsearch.trial.deep_supervision_loss`):
``L = CE(main) + aux_weight * sum_k CE(aux_k)``.

With heads, ``forward`` returns ``(logits, [aux_logits, ...])`` (in block order) in ``train()``
mode and the main logits only in ``eval()`` mode; without heads it returns the logits in both.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs.checks import one_of, positive_int, subset


class DenseLayer(nn.Module):
    """``BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)``; its k channels are concatenated to the input."""

    def __init__(self, cin: int, growth: int, bn: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm1 = bn(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.norm2 = bn(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


class DenseStage(nn.Sequential):
    """One dense block: ``n`` dense layers; ``out_channels`` = cin + n * growth."""

    def __init__(self, cin: int, n: int, growth: int, bn: Callable[[int], nn.Module]) -> None:
        super().__init__(*(DenseLayer(cin + i * growth, growth, bn) for i in range(n)))
        self.out_channels = cin + n * growth


class Transition(nn.Module):
    """``BN-ReLU-conv1x1(cout)-avgpool2`` between dense blocks: halves the map, compresses."""

    def __init__(self, cin: int, cout: int, bn: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm = bn(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.norm(x))), 2)


class AuxHead(nn.Module):
    """Side-tap classifier: ``BN-ReLU-global-avg-pool`` then one Linear ``fc``."""

    def __init__(self, cin: int, num_classes: int, bn: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.norm = bn(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.norm(x)).mean((2, 3)))


class DenseNet(nn.Module):
    """CIFAR DenseNet-BC of ``depth`` = 6n+4 with auxiliary heads after the blocks in
    ``aux_blocks``."""

    def __init__(self, depth: int = 100, growth: int = 12, compression: float = 0.5,
                 num_classes: int = 10, aux_blocks: tuple[int, ...] = (1, 2),
                 norm: str = "batch") -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be 6n+4 with n >= 1 (10, 16, 22, 40, 100, 190, 250...), "
                             f"not {depth!r}")
        positive_int("growth", growth, " (12, 24 or 40 in the paper)")
        if not isinstance(compression, (int, float)) or not 0 < compression <= 1:
            raise ValueError(f"compression must be a number in (0, 1] (0.5 for DenseNet-BC), "
                             f"not {compression!r}")
        positive_int("num_classes", num_classes)
        aux_blocks = subset("aux_blocks", aux_blocks, {1, 2})
        one_of("norm", norm, ("batch", "none"))
        bn = nn.BatchNorm2d if norm == "batch" else (lambda _: nn.Identity())
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)
        # One dict in forward order, so registration order (which order-based schemes such as
        # LSUV follow) is the order data flows through the layers.
        self.features = nn.ModuleDict()
        channels = {}  # block name -> its output channels, for the heads
        cin = 2 * growth
        for b in (1, 2, 3):
            stage = DenseStage(cin, n, growth, bn)
            self.features[f"block{b}"] = stage
            channels[f"block{b}"] = cin = stage.out_channels
            if b < 3:
                cout = math.floor(compression * cin)
                if cout < 1:
                    raise ValueError(f"compression {compression!r} leaves no channels after "
                                     f"block{b} ({cin} channels); use a larger value in (0, 1]")
                self.features[f"transition{b}"] = Transition(cin, cout, bn)
                cin = cout
        self.aux_heads = nn.ModuleDict({f"block{b}": AuxHead(channels[f"block{b}"], num_classes, bn)
                                        for b in sorted(set(aux_blocks))})
        self.norm = bn(cin)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        with_aux = self.training and len(self.aux_heads) > 0
        aux = []
        for name, module in self.features.items():
            x = module(x)
            if with_aux and name in self.aux_heads:
                aux.append(self.aux_heads[name](x))  # side tap: feeds nothing back
        logits = self.classifier(F.relu(self.norm(x)).mean((2, 3)))
        return (logits, aux) if with_aux else logits
