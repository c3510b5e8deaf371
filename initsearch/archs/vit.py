"""Transformers on 32x32 images: the pre-LN Vision Transformer and the original Post-LN encoder.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021 (ViT, pre-LN: LayerNorm at the start of each residual branch).
Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (Post-LN: LayerNorm after each
residual addition). Xiong et al., "On Layer Normalization in the Transformer Architecture",
ICML 2020, analyse why the two differ at initialization.

Layout for a 3x32x32 input, ``p = patch_size``, ``w = width``, ``N = (32 / p)^2`` patches::

    patch_embed    Conv2d(3, w, p, stride=p)             -> N tokens of width w
    class_token    Parameter (1, 1, w), zeros            prepended -> N + 1 tokens
    pos_embedding  Parameter (1, N + 1, w), N(0, 0.02^2) added
    blocks         ``depth`` encoder blocks (``blocks.<i>``), each with
                   norm1 = LayerNorm(w), attn = MultiheadAttention(w, heads, batch_first=True),
                   norm2 = LayerNorm(w), mlp = Linear(w, r*w) - GELU - Linear(r*w, w)
    norm           final LayerNorm(w) (ViT only; ``nn.Identity`` in the Post-LN net)
    classifier     Linear(w, num_classes) on the class token

``class_token`` and ``pos_embedding`` are owned by the model itself (as in torchvision's ViT),
initialized as torchvision does; every other layer keeps PyTorch's default init. No dropout.

Blocks (``r = mlp_ratio``)::

    vit                  x = x + attn(norm1(x));  x = x + mlp(norm2(x))   [PreLNBlock]
    transformer_postln   x = norm1(x + attn(x));  x = norm2(x + mlp(x))   [PostLNBlock]

The blocks are written here rather than taken from ``nn.TransformerEncoderLayer``, whose
fast-path checks branch on tensor properties, so that ``torch.fx.symbolic_trace`` traces the
whole model in train mode (role discovery reads that graph).

Options:

* ``patch_size``: side of the square patches; must divide 32 (4 gives 64 patches).
* ``depth``: encoder blocks (>= 1); ``width``: token width; ``heads``: attention heads, must
  divide ``width``; ``mlp_ratio``: hidden width of each MLP as a multiple of ``width``.
* ``norm``: ``"layer"`` (LayerNorm, the default) or ``"none"``: every LayerNorm becomes an
  ``nn.Identity`` -- the normalization-free transformer T-Fixup (Huang et al. 2020) trains.

The defaults (patch 4, depth 6, width 192, 3 heads, ratio 4) are a ViT-Tiny-width net for CIFAR
with 2.69M parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from initsearch.archs.checks import one_of, positive_int

IMAGE_SIZE = 32


def _norm(kind: str, width: int) -> nn.Module:
    return nn.LayerNorm(width) if kind == "layer" else nn.Identity()


class _Block(nn.Module):
    """The layers of one encoder block; the subclasses say where the LayerNorms go."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, norm: str = "layer") -> None:
        super().__init__()
        self.norm1 = _norm(norm, width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = _norm(norm, width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def _attend(self, h: torch.Tensor) -> torch.Tensor:
        # self-attention; the weights are not needed, and skipping them skips their average
        return self.attn(h, h, h, need_weights=False)[0]


class PreLNBlock(_Block):
    """ViT's block: LayerNorm at the start of each residual branch, the skip path left clean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._attend(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PostLNBlock(_Block):
    """The 2017 block: LayerNorm after each residual addition, so every sum is renormalized."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self._attend(x))
        return self.norm2(x + self.mlp(x))


class ViT(nn.Module):
    """Pre-LN Vision Transformer for 32x32 images, classifying from the class token."""

    block: type[_Block] = PreLNBlock
    final_norm: bool = True  # pre-LN leaves the residual stream unnormalized: the head needs one

    def __init__(self, patch_size: int = 4, depth: int = 6, width: int = 192, heads: int = 3,
                 mlp_ratio: int = 4, norm: str = "layer", num_classes: int = 10) -> None:
        super().__init__()
        positive_int("patch_size", patch_size)
        if IMAGE_SIZE % patch_size:
            raise ValueError(f"patch_size must divide {IMAGE_SIZE} (1, 2, 4, 8, 16, 32), "
                             f"not {patch_size!r}")
        positive_int("depth", depth, " (encoder blocks)")
        positive_int("width", width)
        positive_int("heads", heads)
        if width % heads:
            raise ValueError(f"heads must divide width ({width}), not {heads!r}")
        positive_int("mlp_ratio", mlp_ratio)
        positive_int("num_classes", num_classes)
        one_of("norm", norm, ("layer", "none"))
        # fixed here, so forward has no shape logic for fx to trip on
        self.num_patches = (IMAGE_SIZE // patch_size) ** 2
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embedding = nn.Parameter(torch.empty(1, 1 + self.num_patches, width)
                                          .normal_(std=0.02))
        self.blocks = nn.Sequential(*(self.block(width, heads, mlp_ratio, norm)
                                      for _ in range(depth)))
        self.norm = _norm(norm if self.final_norm else "none", width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, w), patches row by row
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embedding)
        return self.classifier(self.norm(x[:, 0]))


class PostLNTransformer(ViT):
    """The Post-LN encoder of Vaswani et al. on ViT's patches, tokens and head; its last block
    already ends in a LayerNorm, so there is no final one."""

    block = PostLNBlock
    final_norm = False
