r"""RISOTTO: exact dynamical isometry for ReLU ResNets from looks-linear residual blocks.

Paper: Advait Gadhikar & Rebekka Burkholz, "Dynamical Isometry for Residual Networks",
ICLR-2023 submission (OpenReview n-5qp16As_C), arXiv 2210.02411. No code was published.

**What is verified** (abstract and introduction only, see init-methods.md section 4): a random
init that gives *perfect* dynamical isometry -- every singular value of the input-output
Jacobian exactly 1 -- for ReLU ResNets at finite width and depth; it builds on the looks-linear
(LL) construction of Balduzzi et al. (2017) with orthogonal submatrices; and it *balances* the
residual and skip branches instead of biasing the block towards the skip (Fixup, SkipInit).
The paper's exact matrices and its skip weights are UNVERIFIED. Everything below is a
reconstruction (ANALYSIS) that provably has the verified properties; its free choices are the
options ``beta`` and ``mix``.

**LL state.** A state ``z in R^N`` is carried by 2N channels ``[[z]] = [relu(z); relu(-z)]``
(first half positive part, second half negative part). With ``L(U) = [[U, -U], [-U, U]]``,
``L(U) [[z]] = [Uz; -Uz]`` because ``relu(z) - relu(-z) = z``, so the next ReLU gives
``[[Uz]]``: the ReLU net acts *exactly linearly* on z. Every layer is written so that it maps
``[[z]]`` to ``[[Q z]]`` with Q (semi-)orthogonal:

* stem (C -> 2N): ``[U0; -U0]``, U0 (N x C) Haar semi-orthogonal, so ``h = [[U0 x]]``.
* hidden conv/linear outside blocks (2N -> 2M): ``L(U)``, U (M x N) Haar semi-orthogonal.
* projection block, He et al.'s "type C", ``y = relu(W2 relu(W1 h) + Ws h)``:
  ``W1 = L(U1)``, ``W2 = L(U2)``, ``Ws = L(beta Us)``. The pre-activation is
  ``[(U2 U1 + beta Us) z; -(...)]``, so the block outputs ``[[Q z]]`` iff
  ``U2 U1 = B := Q - beta Us``. Take U1 (H x N, hidden width H >= N) with orthonormal columns
  and ``U2 = B U1^T``: then ``U2 U1 = B U1^T U1 = B`` exactly. Q, Us are M x N with
  orthonormal columns (M >= N; a narrowing block cannot be an isometry and is refused).
  Q is chosen by ``mix``:

  - ``"balanced"`` (default): ``Q = Us G`` with ``G = V R_theta V^T`` (V Haar N x N, R_theta
    rotations by theta in N/2 planes, ``cos(theta) = 1/(2 beta)``). The branch is then
    ``B = Us V (R_theta - beta I) V^T``, and each 2x2 block of ``R_theta - beta I`` is a
    rotation scaled by ``|e^{i theta} - beta| = sqrt(1 - 2 beta cos(theta) + beta^2) = beta``.
    So for *every* input, ``|skip(z)| = |branch(z)| = beta |z|`` and ``|out| = |z|``: the two
    branches contribute equally, per input, not only on average. The default
    ``beta = 1/sqrt(2)`` (theta = 45 deg) also makes them orthogonal, each carrying exactly half
    of the output's energy (``beta^2 + beta^2 = 1``, like ``(x + f(x))/sqrt(2)``);
    ``beta = 1`` (theta = 60 deg) makes skip, branch and output three unit-norm vectors.
    Needs ``beta >= 1/2``. Odd N: one direction keeps eigenvalue 1 (there the branch is
    ``(1 - beta)`` times the skip's direction); every other direction is balanced. Q is still
    marginally Haar (Us G with Us Haar).
  - ``"independent"``: Q Haar, independent of Us (init-methods.md 4.2's example). Exact
    isometry too, but ``E<beta Us z, Q z> = 0``: the skip is, on average, noise that the
    branch cancels, so the block leans on the branch. Offered for comparison.
* identity block, "type B", ``y = relu(r + h)``: the skip ``h = [[z]] = 1/2 [z; -z] +
  1/2 [|z|; |z|]`` is *not* LL, so the branch must cancel ``1/2 |z|`` exactly. Its only kinks
  are those of ``relu(W1 h)``, and ``|z_j|`` kinks on the hyperplane ``z_j = 0``; with hidden
  width N this forces each hidden pair to read one coordinate: ``W1 = L(P)`` with P a random
  permutation (per-unit positive scales and signs would be hidden-unit relabellings). Then
  ``relu(W1 h) = [P p; P n]`` (``p = relu(z)``, ``n = relu(-z)``) and

      W2 = [[(Q - I) P^T, -Q P^T], [-Q P^T, (Q - I) P^T]]

  gives ``r = [Q z - p; -Q z - n]``, so ``r + h = [Qz; -Qz]`` and the block outputs
  ``[[Q z]]`` with Q Haar orthogonal (P only relabels hidden units, so Q is the block's
  effective randomness). In z-coordinates the skip contributes ``z/2`` and the branch
  ``(Q - I/2) z``: neither vanishes. ``beta`` does not apply (the skip has no weight); a
  per-input balance here would force Q = I, an identity block, which is what RISOTTO avoids.
* classifier (2N -> K): ``[UL, -UL]``, UL (K x N) Haar semi-orthogonal. Global average pooling
  (or a flatten) keeps the pairing by halves, and ``mean relu(z) - mean relu(-z) = mean z``,
  so the logits are ``UL`` times the pooled z.

**Convolutions** are delta-orthogonal (Xiao et al. 2018): only the spatial centre tap is
nonzero and holds the matrix above. This is forced, not just convenient: type B's |z|
cancellation needs each hidden unit to read one coordinate *at one pixel*, and a full
(flattened-orthogonal) kernel does not make the conv operator orthogonal. Consequence
(init-methods.md 4.3): zero spatial mixing at init; the network acts pixel by pixel, a stride
subsamples pixels. Kernels must be odd with ``padding = dilation * (k // 2)``; groups 1.

**The whole network** (norm-free, scalars neutral) thus computes, at init,
``logits = UL pool(Q_L ... Q_1 U0 x)``, linear in x. With C <= N <= ... and stride 1, every
block and the stem are exact isometries; only striding, pooling and a classifier with fewer
outputs than features (K < N_L) have singular values other than 1, and they must.

**Scalars and norms.** Every ``scalar_bias`` is set to 0, every ``branch_scale`` to 1 (the
neutral values of Fixup's scalars in ``norm="none"`` models), every norm affine to gamma 1,
beta 0, and the biases of the layers written to 0. With batch-statistics BN the init is
LL-structured but not exactly isometric: BN maps an LL pair ``(a, -a)`` to ``(a', -a')`` (the
means are opposite, the variances equal), so the pairing survives the stem, conv1 and type C;
but the per-channel ``1/sigma`` breaks orthogonality, and in type B bn2 normalizes
``Qz - p`` and ``-Qz - n`` separately, which breaks the |z| cancellation. How the paper adapts
to BN is UNVERIFIED.

**Assumptions** (not checkable from roles): ReLU after the stem, between the two branch convs
and after each block sum (as in ``resnet_ds`` and torchvision's BasicBlock); average pooling or
flatten before the classifier; no max pooling. Basic blocks only (two convs per branch);
bottlenecks are refused. The LL doubling halves the effective width at init (pitfall 4.3).

**Layers touched:** stem, conv, branch_last, shortcut, linear, classifier (weights, biases 0);
scalar_bias, branch_scale, norm (neutral values). Auxiliary heads are not touched.
**Data:** none. **Cost:** no forward pass; one to four QRs of width-sized float64 matrices per
layer or block, O(sum of width^3); draws from torch's global RNG (``Recipe.apply(seed=)`` forks
and seeds it).

Layer scales, biases owned apart from their layer, attention tensors, learnable
activations and recurrent layers keep their init: the step refuses what it cannot make
isometric rather than rewriting them.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from initsearch.errors import UsageError
from initsearch.roles import ResidualBlock, Roles
from initsearch.schemes.base import InitData, Step, modules_by_path
from initsearch.schemes.layer import default_

_F64 = torch.float64


def looks_linear(u: torch.Tensor) -> torch.Tensor:
    """``[[U, -U], [-U, U]]``: maps ``[relu(z); relu(-z)]`` to ``[Uz; -Uz]``."""
    return torch.cat([torch.cat([u, -u], 1), torch.cat([-u, u], 1)], 0)


def _haar(rows: int, cols: int) -> torch.Tensor:
    """A Haar-random matrix with orthonormal columns (rows >= cols) or rows (rows < cols)."""
    return nn.init.orthogonal_(torch.empty(rows, cols, dtype=_F64))


def _balanced_rotation(n: int, beta: float) -> torch.Tensor:
    """``V R V^T``: rotations by theta, ``cos(theta) = 1/(2 beta)``, in random planes, so that
    ``G - beta I`` is beta times an orthogonal matrix (one eigenvalue 1 left over if n is odd)."""
    c = 1.0 / (2.0 * beta)
    s = math.sqrt(1.0 - c * c)
    r = torch.eye(n, dtype=_F64)
    for i in range(0, n - 1, 2):
        r[i:i + 2, i:i + 2] = torch.tensor([[c, -s], [s, c]], dtype=_F64)
    v = _haar(n, n)
    return v @ r @ v.T


def _centre(path: str, layer: nn.Module) -> tuple[int, ...]:
    """The centre-tap index of a conv kernel (``()`` for a Linear), or a UsageError."""
    if isinstance(layer, nn.Linear):
        return ()
    if not isinstance(layer, nn.modules.conv._ConvNd) or layer.transposed or layer.groups != 1:
        raise UsageError(f"risotto: {path} ({type(layer).__name__}) is not a dense conv or linear "
                         "layer; RISOTTO writes ungrouped, non-transposed convs and linears only")
    k, d = layer.kernel_size, layer.dilation
    want = tuple(di * (ki // 2) for ki, di in zip(k, d))
    pad = {"same": want, "valid": (0,) * len(k)}.get(layer.padding, layer.padding)
    if any(ki % 2 == 0 for ki in k) or tuple(pad) != want:
        raise UsageError(f"risotto: {path} has kernel {tuple(k)} and padding {layer.padding}; the "
                         "delta (centre-tap) kernel needs odd kernel sizes and padding = "
                         "dilation*(k//2), so that each output reads its own pixel")
    return tuple(ki // 2 for ki in k)


def _pairs(path: str, channels: int, side: str) -> int:
    if channels % 2:
        raise UsageError(f"risotto: {path} has {channels} {side} channels; looks-linear layers "
                         "carry each feature as a (+, -) pair, so the count must be even")
    return channels // 2


def _io(path: str, layer: nn.Module) -> tuple[int, int]:
    """(out, in) channel counts of a conv or linear layer."""
    _centre(path, layer)
    return layer.weight.shape[0], layer.weight.shape[1]


@torch.no_grad()
def _write_(path: str, layer: nn.Module, matrix: torch.Tensor) -> None:
    """Weight = ``matrix`` at the centre tap, 0 elsewhere; bias 0."""
    w = torch.zeros_like(layer.weight)
    w[(slice(None), slice(None), *_centre(path, layer))] = matrix.to(w)
    layer.weight.copy_(w)
    if getattr(layer, "bias", None) is not None:
        layer.bias.zero_()


def _identity_block(block: ResidualBlock, layers: Mapping[str, nn.Module]) -> dict:
    (p1, p2), (c1, c2) = block.branch, (layers[p] for p in block.branch)
    (hid, cin), (cout, hid2) = _io(p1, c1), _io(p2, c2)
    n = _pairs(p1, cin, "input")
    if not cin == hid == hid2 == cout:
        raise UsageError(f"risotto: identity-skip block {block.path} maps {cin}->{hid}->{cout} "
                         "channels; the exact |z| cancellation needs every width equal (each "
                         "hidden pair reads one input pair)")
    perm = torch.eye(n, dtype=_F64)[torch.randperm(n)]
    q = _haar(n, n)
    a, b = (q - torch.eye(n, dtype=_F64)) @ perm.T, -q @ perm.T
    return {p1: looks_linear(perm), p2: torch.cat([torch.cat([a, b], 1), torch.cat([b, a], 1)], 0)}


def _projection_block(block: ResidualBlock, layers: Mapping[str, nn.Module], beta: float,
                      mix: str) -> dict:
    (p1, p2), ps = block.branch, block.shortcut
    (hid, cin), (cout, hid2), (sout, sin) = (_io(p, layers[p]) for p in (p1, p2, ps))
    n, h, m = _pairs(p1, cin, "input"), _pairs(p1, hid, "output"), _pairs(p2, cout, "output")
    if (sin, sout, hid2) != (cin, cout, hid):
        raise UsageError(f"risotto: block {block.path}: branch {cin}->{hid}->{cout} and shortcut "
                         f"{sin}->{sout} do not fit together")
    if m < n or h < n:
        raise UsageError(f"risotto: block {block.path} narrows {cin}->{hid}->{cout} channels; an "
                         "isometry cannot lose dimensions (widths must not decrease)")
    us = _haar(m, n)
    q = us @ _balanced_rotation(n, beta) if mix == "balanced" else _haar(m, n)
    u1 = _haar(h, n)
    u2 = (q - beta * us) @ u1.T  # U2 U1 = Q - beta Us since U1^T U1 = I
    return {p1: looks_linear(u1), p2: looks_linear(u2), ps: looks_linear(beta * us)}


def risotto_(model: nn.Module, roles: Roles, data: InitData | None = None, *,
             beta: float, mix: str) -> dict:
    """RISOTTO in place: every stem/hidden/residual/classifier layer in looks-linear form with
    (semi-)orthogonal blocks, scalars and norm affines neutral (see the module docstring).

    Args:
        model: a ReLU ResNet of basic blocks, labelled by ``roles``.
        roles: :func:`initsearch.roles.discover_roles` of ``model``.
        data: unused (RISOTTO needs no data).
        beta: the weight of the projection shortcut (type C blocks); >= 1/2 for ``"balanced"``.
        mix: ``"balanced"`` (skip and branch of equal size for every input) or
            ``"independent"`` (Q drawn independently of the shortcut).

    Returns:
        ``{"blocks": {"identity": n, "projection": n}, "layers": layers written,
        "neutral": scalars and norms reset}``.

    Raises:
        UsageError: a layer or block does not fit the construction (odd channel count, a branch
            without exactly two convs, a kernel that cannot be centred, a narrowing block, no
            stem or classifier).
    """
    if mix == "balanced" and beta < 0.5:
        raise UsageError(f"risotto: mix='balanced' needs beta >= 0.5 (cos(theta) = 1/(2 beta)), "
                         f"not {beta}")
    layers = modules_by_path(model, roles)
    for role in ("stem", "classifier"):
        if role not in roles.values():
            raise UsageError(f"risotto: the network has no {role} layer; RISOTTO needs the stem "
                             "and the classifier in looks-linear form (label them with "
                             "role_overrides)")
    blocks = roles.blocks
    in_blocks = {p for b in blocks for p in (*b.branch, b.shortcut) if p}
    matrices: dict[str, torch.Tensor] = {}
    for path, role in roles.items():
        if role == "stem":
            out, cin = _io(path, layers[path])
            u0 = _haar(_pairs(path, out, "output"), cin)
            matrices[path] = torch.cat([u0, -u0], 0)
        elif role == "classifier":
            out, cin = _io(path, layers[path])
            ul = _haar(out, _pairs(path, cin, "input"))
            matrices[path] = torch.cat([ul, -ul], 1)
        elif role in ("conv", "linear") and path not in in_blocks:
            out, cin = _io(path, layers[path])
            matrices[path] = looks_linear(_haar(_pairs(path, out, "output"),
                                                _pairs(path, cin, "input")))
        elif role == "shortcut" and path not in in_blocks:
            raise UsageError(f"risotto: shortcut {path} belongs to no residual block (no "
                             "branch_last beside it); RISOTTO cannot pair it with a branch")
    counts = {"identity": 0, "projection": 0}
    for block in blocks:
        if len(block.branch) != 2:
            raise UsageError(f"risotto: block {block.path} has {len(block.branch)} convs in its "
                             f"branch ({', '.join(block.branch)}); the construction covers basic "
                             "blocks (two convs), not bottlenecks")
        if block.shortcut is None:
            matrices.update(_identity_block(block, layers))
            counts["identity"] += 1
        else:
            matrices.update(_projection_block(block, layers, beta, mix))
            counts["projection"] += 1
    for path, matrix in matrices.items():
        _write_(path, layers[path], matrix)
    # Fixup's scales and norm gammas back to 1, scalar biases and betas to 0: their defaults.
    neutral = [p for p, r in roles.items() if r in ("scalar_bias", "branch_scale", "norm")]
    for path in neutral:
        default_(layers[path])
    return {"blocks": counts, "layers": len(matrices), "neutral": len(neutral)}


STEP = Step("risotto", risotto_, {"beta": 1 / math.sqrt(2), "mix": "balanced"},
            choices={"mix": ("balanced", "independent")}, bounds={"beta": (0.5, 4.0)},
            summary="RISOTTO looks-linear init: exact dynamical isometry of a ReLU ResNet")
