"""ResNet-DS: a CIFAR ResNet (He et al. 2016, 6n+2 layers) with deep-supervision side taps.

Three stages of ``n`` basic blocks at widths w, 2w, 4w; a 1x1-conv + BN projection shortcut
where the shape changes (option B, so "shortcut" is a role that has weights). Auxiliary heads
are *side taps*: each reads a stage's output, global-average-pools it and applies one affine
map ``y = W h + b`` (the form LION-DG analyses); nothing flows back into the main path.

``norm="none"`` gives the normalization-free variant used by Fixup, SkipInit, ZerO and RISOTTO
without BN: every BatchNorm becomes the identity and each block gains Fixup's scalars (Zhang et
al. 2019) -- scalar biases before each conv and activation and one multiplier at the end of the
branch (:mod:`initsearch.archs.scalars`). At their defaults (biases 0, multiplier 1) they change
nothing, so any scheme applies; Fixup and SkipInit set them (see ``initsearch.schemes.fixup``)::

    out = relu(bias1b + conv1(x + bias1a))
    out = bias2b + scale * conv2(out + bias2a)
    y   = relu(out + shortcut(x + bias1a))

Training loss (see :func:`initsearch.trial.deep_supervision_loss`):
``L = CE(main) + aux_weight * sum_k CE(aux_k)`` -- a plain sum over heads, aux_weight 0.3.

In ``train()`` mode ``forward`` returns ``(logits, [aux_logits, ...])``; in ``eval()`` mode it
returns the main logits only, so evaluation and any standard tooling see one head.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs.scalars import Bias, Scale


class BasicBlock(nn.Module):
    """Post-activation basic block; with ``norm=False`` BN is dropped and Fixup's scalars added."""

    def __init__(self, cin: int, cout: int, stride: int, norm: bool = True) -> None:
        super().__init__()
        bn = (lambda: nn.BatchNorm2d(cout)) if norm else nn.Identity
        scalar = nn.Identity if norm else Bias  # BN already centres; without it, Fixup's biases
        self.bias1a = scalar()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn()
        self.bias1b = scalar()
        self.bias2a = scalar()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn()
        self.scale = nn.Identity() if norm else Scale()
        self.bias2b = scalar()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), bn())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bias1a(x)
        out = F.relu(self.bias1b(self.bn1(self.conv1(x))))
        out = self.bias2b(self.scale(self.bn2(self.conv2(self.bias2a(out)))))
        return F.relu(out + self.shortcut(x))


class ResNetDS(nn.Module):
    """CIFAR ResNet of ``depth`` = 6n+2 with auxiliary heads after the stages in ``aux_stages``."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 aux_stages: tuple[int, ...] = (1, 2), norm: str = "batch") -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56...), not {depth}")
        if not set(aux_stages) <= {1, 2}:
            raise ValueError(f"aux_stages must be a subset of (1, 2), not {aux_stages}")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', not {norm!r}")
        bn = norm == "batch"
        n = (depth - 2) // 6
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.stem_bias = nn.Identity() if bn else Bias()
        widths = [width, 2 * width, 4 * width]
        self.stages = nn.ModuleList()
        cin = width
        for i, cout in enumerate(widths):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, bn)
                      for j in range(n)]
            self.stages.append(nn.Sequential(*blocks))
            cin = cout
        self.aux_heads = nn.ModuleDict({f"stage{s}": nn.Linear(widths[s - 1], num_classes)
                                        for s in sorted(aux_stages)})
        self.head_bias = nn.Identity() if bn else Bias()
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor):
        x = F.relu(self.stem_bias(self.stem_bn(self.stem(x))))
        aux = []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            head = self.aux_heads[f"stage{i}"] if f"stage{i}" in self.aux_heads else None
            if head is not None and self.training:
                aux.append(head(x.mean((2, 3))))  # side tap: reads the stage, feeds nothing back
        logits = self.classifier(self.head_bias(x.mean((2, 3))))
        return (logits, aux) if self.training else logits
