"""Residual blocks: each residual addition as the roles see it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from initsearch.roles.vocabulary import BRANCH_ENDS


@dataclass(frozen=True)
class ResidualBlock:
    """One residual addition ``skip + branch``: the branch's weight layers in execution order
    (the last ends the branch: ``branch_last``, ``attn_out`` or ``mlp_out``), the skip's layer
    if it has one, the branch multiplier if any (a Fixup/SkipInit scalar, a layer scale), and
    where a normalization sits: ``"pre"`` (on the branch, before its first layer: Pre-LN),
    ``"post"`` (right after the sum: Post-LN) or None. ``path`` is the deepest module holding
    the whole branch."""

    path: str
    branch: tuple[str, ...]
    shortcut: str | None = None
    scale: str | None = None
    norm: str | None = None


def reconcile(blocks: Iterable[ResidualBlock], roles: Mapping[str, str]) -> list[ResidualBlock]:
    """Blocks as the final roles say: a block whose last layer no longer ends a branch
    (overridden, or the classifier) is dropped; a ``branch_last`` set by an override that ends
    no block gets one -- its parent module's ``conv``/``linear`` layers, shortcut and scale."""
    kept = [b for b in blocks if roles[b.branch[-1]] in BRANCH_ENDS]
    ends = {b.branch[-1] for b in kept}
    for last in [p for p, r in roles.items() if r == "branch_last" and p not in ends]:
        parent = last.rpartition(".")[0]
        under = [p for p in roles if parent == "" or p.startswith(parent + ".")]
        taken = {q for b in kept for q in b.branch}
        branch = [p for p in under[:under.index(last)]
                  if roles[p] in ("conv", "linear") and p not in taken] + [last]
        kept.append(ResidualBlock(parent, tuple(branch),
                                  next((p for p in under if roles[p] == "shortcut"), None),
                                  next((p for p in under if roles[p] in ("branch_scale", "layer_scale")),
                                       None)))
    return kept


def common_path(paths: list[str]) -> str:
    """The deepest module path holding every path (a one-layer branch: its parent)."""
    parts = [p.split(".") for p in paths]
    common = []
    for segment in zip(*parts):
        if len(set(segment)) > 1:
            break
        common.append(segment[0])
    if len(common) == len(parts[0]):
        common = common[:-1]
    return ".".join(common)
