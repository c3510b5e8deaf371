"""ResNet-DS: a CIFAR ResNet (He et al. 2016, 6n+2 layers) with deep-supervision side taps.

Three stages of ``n`` basic blocks at widths w, 2w, 4w; a 1x1-conv + BN projection shortcut
where the shape changes (option B, so "shortcut" is a role that has weights). Auxiliary heads
are *side taps*: each reads a stage's output, global-average-pools it and applies one affine
map ``y = W h + b`` (the form LION-DG analyses); nothing flows back into the main path.

Training loss (see :func:`initsearch.trial.deep_supervision_loss`):
``L = CE(main) + aux_weight * sum_k CE(aux_k)`` -- a plain sum over heads, aux_weight 0.3.

In ``train()`` mode ``forward`` returns ``(logits, [aux_logits, ...])``; in ``eval()`` mode it
returns the main logits only, so evaluation and any standard tooling see one head.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetDS(nn.Module):
    """CIFAR ResNet of ``depth`` = 6n+2 with auxiliary heads after the stages in ``aux_stages``."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 aux_stages: tuple[int, ...] = (1, 2)) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56...), not {depth}")
        if not set(aux_stages) <= {1, 2}:
            raise ValueError(f"aux_stages must be a subset of (1, 2), not {aux_stages}")
        n = (depth - 2) // 6
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        widths = [width, 2 * width, 4 * width]
        self.stages = nn.ModuleList()
        cin = width
        for i, cout in enumerate(widths):
            blocks = [BasicBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1)
                      for j in range(n)]
            self.stages.append(nn.Sequential(*blocks))
            cin = cout
        self.aux_heads = nn.ModuleDict({f"stage{s}": nn.Linear(widths[s - 1], num_classes)
                                        for s in sorted(aux_stages)})
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor):
        x = F.relu(self.stem_bn(self.stem(x)))
        aux = []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            head = self.aux_heads[f"stage{i}"] if f"stage{i}" in self.aux_heads else None
            if head is not None and self.training:
                aux.append(head(x.mean((2, 3))))  # side tap: reads the stage, feeds nothing back
        logits = self.classifier(x.mean((2, 3)))
        return (logits, aux) if self.training else logits
