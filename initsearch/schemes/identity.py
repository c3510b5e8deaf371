"""ZerO: deterministic init with only zeros and ones (up to a normalization), from identity and
Hadamard transforms.

Paper: Jiawei Zhao, Florian Schäfer, Anima Anandkumar, "ZerO Initialization: Initializing Neural
Networks with only Zeros and Ones", TMLR 2022, arXiv 2110.12661.

Rule for a matrix ``W`` of shape ``(m, n)`` (``m`` outputs, ``n`` inputs), Algorithm 1::

    m <= n:  W = I_{m x n}                      (partial identity: output i copies input i)
    m >  n:  W = c * H_p[:m, :n],  p = 2^k,  k = ceil(log2 m)

``H_p`` is the Sylvester Hadamard matrix (``H_1 = [1]``, ``H_2p = [[H_p, H_p], [H_p, -H_p]]``;
entries +-1, rows orthogonal, ``H_p H_p^T = p I``). A growing layer needs it: with a plain
partial identity the extra outputs would be dead and training stays rank-limited by the input
width (the paper's "training degeneracy").

**The constant c is where paper and code disagree** (init-methods.md section 3.1):

* ``c="code"`` (default): ``c = 2^(-k/2) = 1/sqrt(p)``, the official notebook's constant; it
  makes ``H_p / sqrt(p)`` orthonormal.
* ``c="paper"``: ``c = 2^(-(k-1)/2) = sqrt(2)/sqrt(p)``, the constant the paper prints (as two
  independent third parties transcribe it; not checked against the PDF), an extra ``sqrt(2)``
  that acts as a ReLU gain.

The partial-identity case has no constant; ``c`` only matters where a layer grows.

Convolutions, Algorithm 2: kernel ``(c_out, c_in, k, ..., k)`` with every size odd; every tap is
0 except the spatial centre, which holds the Algorithm-1 matrix for ``(c_out, c_in)`` -- a delta
kernel, so at init a ``k x k`` conv acts as a 1x1 identity/Hadamard channel map (subsampling when
strided). A grouped conv gets the matrix of one group in each group's block (so a depthwise conv
is the identity). An even kernel has no centre tap: :class:`~initsearch.errors.UsageError`.
Biases are 0. No randomness: every seed gives bit-identical weights.

Layers: the ``identity`` scheme re-initializes one conv/linear layer. The ZerO recipe
(:data:`ZERO_ROLES`, which the recipe module assembles into a baseline) maps roles as below. On a
ResNet each block starts as its skip; on a plain network (VGG, an MLP -- the official notebook's
setting) there is no ``branch_last`` and every layer is Algorithm 1 or 2, so the network is a
chain of identity and Hadamard maps up to its zero classifier. No mapping is built for DenseNets
or transformers (the baseline is refused there: ``initsearch.recipe.why_not``)::

    stem, conv, shortcut, linear             identity   (Algorithm 2 for convs, 1 for linears)
    branch_last                              zero       (each residual block is the identity)
    classifier, aux_head                     zero       (UNVERIFIED, see below)
    norm                                     default    (gamma 1, beta 0)
    branch_scale, scalar_bias                default    (1 and 0, as the no-BN runs' scalars)

The classifier is UNVERIFIED: the authors' older (ICLR-2022 submission) code sets it to 0, a
third-party reproduction of the arXiv version uses Algorithm 1 (a partial identity ``10 x d``).
Both are expressible: ``classifier: zero`` or ``classifier: identity``. The paper has no
auxiliary heads; here they are classifiers and zero like the main one.

Pitfall, ReLU at exactly 0: many pre-activations are exactly 0 at init (zero branches, zero
classifier), and PyTorch's ReLU has derivative 0 at 0. The authors' old code used a ReLU with
derivative 1 at 0; the TMLR version needs no custom ReLU, but one should check that gradients
reach every layer after the first steps (``tests/test_scheme_zero.py`` does, with PyTorch's ReLU).

Data: none. Cost: one write per weight, plus building ``H_p`` (``O(p^2)``, ``p < 2 c_out``).

Roles ZerO's table does not name (layer scales, biases owned apart from their layer,
attention tensors, learnable activations, recurrent layers, tokens, position embeddings) keep
their init (``default``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import matrices
from initsearch.schemes.layer import Scheme

#: ZerO's mapping for ResNets and plain networks, ``{role: (scheme, options)}``; see the module
#: docstring.
ZERO_ROLES: dict[str, tuple[str, dict]] = {
    "stem": ("identity", {}),
    "conv": ("identity", {}),
    "shortcut": ("identity", {}),
    "linear": ("identity", {}),
    "aux_head": ("zero", {}),  # an auxiliary head is a classifier: zero like the main one
    "branch_last": ("zero", {}),
    "classifier": ("zero", {}),
    "norm": ("default", {}),
    "branch_scale": ("default", {}),
    "scalar_bias": ("default", {}),
}


def hadamard(p: int, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
    """The ``p x p`` Sylvester Hadamard matrix (entries +-1); ``p`` must be a power of 2."""
    if p < 1 or p & (p - 1):
        raise UsageError(f"a Sylvester Hadamard matrix needs a power-of-2 size, not {p}")
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def zero_matrix(m: int, n: int, c: str = "code", dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Algorithm 1's ``(m, n)`` matrix: partial identity if ``m <= n``, else ``c * H_p[:m, :n]``."""
    if m <= n:
        return torch.eye(m, n, dtype=dtype, device=device)
    k = math.ceil(math.log2(m))
    scale = 2.0 ** (-k / 2) if c == "code" else 2.0 ** (-(k - 1) / 2)
    return scale * hadamard(2 ** k, dtype, device)[:m, :n]


@torch.no_grad()
def identity_(module, c: str = "code") -> None:
    """ZerO init of a conv/linear layer (Algorithm 1 or 2), bias 0. ``c``: ``"code"`` (1/sqrt(p))
    or ``"paper"`` (sqrt(2)/sqrt(p)), used only where the layer grows (see the module docstring).
    Any matrix (a linear layer, an embedding, a q/k/v block of an attention) takes Algorithm 1.

    Raises:
        UsageError: a conv kernel with an even size (no centre tap).
    """
    if c not in ("code", "paper"):
        raise UsageError(f"ZerO option c={c!r}: use 'code' or 'paper'")
    if not isinstance(module, nn.modules.conv._ConvNd):
        for m in matrices(module):
            m.weight.copy_(zero_matrix(*m.weight.shape, c, m.weight.dtype, m.weight.device))
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        return
    w = module.weight
    kernel = w.shape[2:]
    if any(k % 2 == 0 for k in kernel):
        raise UsageError(f"ZerO (identity) needs odd kernel sizes for a centre tap; "
                         f"{type(module).__name__} has kernel {tuple(kernel)}: "
                         "use another scheme")
    groups = module.groups
    # A conv weight is (out, in/groups, ...); a transposed conv's is (in, out/groups, ...).
    rows, cols = w.shape[:2]
    if module.transposed:
        block = zero_matrix(cols, rows // groups, c, w.dtype, w.device).T
    else:
        block = zero_matrix(rows // groups, cols, c, w.dtype, w.device)
    w.zero_()
    w[(slice(None), slice(None), *(k // 2 for k in kernel))] = block.repeat(groups, 1)
    if module.bias is not None:
        module.bias.zero_()


SCHEME = Scheme("identity", identity_, {"c": ("code", "paper")})
