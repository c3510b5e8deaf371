"""ResNet: the CIFAR ResNet of He et al. 2016 (6n+2 layers), optionally with deep-supervision taps.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, section 4.2.

Layout for a 3x32x32 input and ``depth`` = 6n+2 (``n = (depth - 2) / 6``)::

    stem     conv3x3(3 -> w) - BN - ReLU                     32x32
    stage1   n basic blocks at width w                        32x32
    stage2   n basic blocks at width 2w, the first stride 2   16x16
    stage3   n basic blocks at width 4w, the first stride 2    8x8
    head     global average pool - Linear(4w, num_classes)  (``classifier``)

With ``width`` 16 this is ResNet-20/32/44/56/110 (depth 20/32/44/56/110; 0.27M/0.46M/0.66M/
0.85M/1.7M parameters). Where the shape changes the shortcut is a 1x1-conv + BN projection
(option B, so "shortcut" is a role that has weights; the paper's CIFAR nets use option A, zero
padding, which has none -- B adds under 3k parameters at width 16).

Options:

* ``aux_stages``: the stages (1 and/or 2) that get an auxiliary head, stored in
  ``self.aux_heads`` as ``"stage1"``/``"stage2"``. A head is a *side tap*: it reads the stage's
  output, global-average-pools it and applies one affine map ``y = W h + b`` (the form LION-DG
  analyses); nothing flows back into the main path. Default none.
* ``norm="none"`` gives the normalization-free variant used by Fixup, SkipInit, ZerO and RISOTTO
  without BN: every BatchNorm becomes the identity and each block gains Fixup's scalars (Zhang et
  al. 2019) -- scalar biases before each conv and activation and one multiplier at the end of the
  branch (:mod:`initsearch.layers`). At their defaults (biases 0, multiplier 1) they change
  nothing, so any scheme applies; Fixup and SkipInit set them (see ``initsearch.schemes.fixup``)::

      out = relu(bias1b + conv1(x + bias1a))
      out = bias2b + scale * conv2(out + bias2a)
      y   = relu(out + shortcut(x + bias1a))

Training loss with heads (see :func:`initsearch.trial.deep_supervision_loss`):
``L = CE(main) + aux_weight * sum_k CE(aux_k)`` -- a plain sum over heads, aux_weight 0.3.

With heads, ``forward`` returns ``(logits, [aux_logits, ...])`` in ``train()`` mode and the main
logits only in ``eval()`` mode, so evaluation and any standard tooling see one head. Without
heads it returns the logits in both modes.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from initsearch.archs.checks import one_of, positive_int, subset
from initsearch.layers import Bias, Scale


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


class ResNet(nn.Module):
    """CIFAR ResNet of ``depth`` = 6n+2 with auxiliary heads after the stages in ``aux_stages``."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 aux_stages: tuple[int, ...] = (), norm: str = "batch") -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 56, 110...), "
                             f"not {depth!r}")
        positive_int("width", width, " (16 in the paper)")
        positive_int("num_classes", num_classes)
        aux_stages = subset("aux_stages", aux_stages, {1, 2})
        one_of("norm", norm, ("batch", "none"))
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
                                        for s in sorted(set(aux_stages))})
        self.head_bias = nn.Identity() if bn else Bias()
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        x = F.relu(self.stem_bias(self.stem_bn(self.stem(x))))
        with_aux = self.training and len(self.aux_heads) > 0
        aux = []
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if with_aux and f"stage{i}" in self.aux_heads:
                # side tap: reads the stage, feeds nothing back
                aux.append(self.aux_heads[f"stage{i}"](x.mean((2, 3))))
        logits = self.classifier(self.head_bias(x.mean((2, 3))))
        return (logits, aux) if with_aux else logits
