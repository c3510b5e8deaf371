"""Statistics of a confirmation: seed means with confidence intervals, paired differences, Holm.

Every recipe of a confirmation is trained on the same fresh seeds, and seed ``s`` fixes the data
order, the augmentation and the init RNG for every recipe (common random numbers). The
difference between two recipes is therefore measured seed by seed: ``d_s = a_s - b_s``, its mean
with a Student-t 95 % interval over the ``S`` seeds and a two-sided paired t-test
(:func:`scipy.stats.ttest_rel`). When several candidates are tested against one reference, the
p-values are Holm-corrected (step-down Bonferroni: controls the family-wise error at ``alpha``
without assuming independence).

With ``S`` seeds the interval has ``S - 1`` degrees of freedom: with 3 seeds ``t = 4.30``, so a
difference must be large relative to its seed-to-seed spread before it is called one.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _scipy

ALPHA = 0.05  #: significance level of every verdict (95 % intervals)


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its 95 % confidence interval (``lo == hi == mean`` for one seed)."""

    mean: float
    lo: float
    hi: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci95": [self.lo, self.hi], "n": self.n}

    def pct(self) -> str:
        """``51.23 [49.80, 52.66]`` in percent."""
        return f"{100 * self.mean:.2f} [{100 * self.lo:.2f}, {100 * self.hi:.2f}]"


@dataclass(frozen=True)
class Paired:
    """``a - b`` seed by seed: the mean difference, its 95 % CI, the paired t-test's p-value and
    (when part of a family) the Holm-adjusted p-value."""

    diff: Estimate
    p: float
    p_holm: float

    @property
    def significant(self) -> bool:
        """The difference is positive and survives the family's correction at :data:`ALPHA`."""
        return self.diff.mean > 0 and self.p_holm < ALPHA

    def to_dict(self) -> dict[str, object]:
        return {"diff": self.diff.to_dict(), "p": self.p, "p_holm": self.p_holm}

    def pp(self, versus: str = "") -> str:
        """``+1.23 pp [vs X ](95% CI [+0.10, +2.36], p=0.041)`` -- the Holm-adjusted p."""
        d = self.diff
        label = f" vs {versus}" if versus else ""
        return (f"{100 * d.mean:+.2f} pp{label} (95% CI [{100 * d.lo:+.2f}, {100 * d.hi:+.2f}], "
                f"p={self.p_holm:.2g})")


def estimate(values: Sequence[float]) -> Estimate:
    """Mean and Student-t 95 % interval of ``values`` (one seed: no spread, a point)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, mean, mean, n)
    half = float(_scipy.t.ppf(1 - ALPHA / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a - b`` over the same seeds; ``p_holm`` equals ``p`` until :func:`holm` adjusts it."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired comparison needs the same >= 2 seeds on both sides "
                         f"(got {len(a)} and {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    if max(d) == min(d):  # no spread: the t statistic is undefined, the sign is certain
        p = 1.0 if d[0] == 0 else 0.0
    else:
        p = float(_scipy.ttest_rel(a, b).pvalue)
    return Paired(estimate(d), p, p)


def holm(comparisons: Sequence[Paired]) -> list[Paired]:
    """The same comparisons with Holm-adjusted p-values (in the given order).

    Sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    m = len(comparisons)
    order = sorted(range(m), key=lambda i: comparisons[i].p)
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * comparisons[i].p))
        adjusted[i] = running
    return [Paired(c.diff, c.p, adj) for c, adj in zip(comparisons, adjusted)]


def chance_level(num_classes: int, n_val: int) -> float:
    """The accuracy a recipe must exceed to count as trained: ``1/K`` plus three binomial
    standard errors of a guesser's accuracy on ``n_val`` images (2.0 pp on 2,000 CIFAR-10
    images). A recipe at or below it is never recommended."""
    p = 1.0 / num_classes
    return p + 3 * math.sqrt(p * (1 - p) / n_val)
