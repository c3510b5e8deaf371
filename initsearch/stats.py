"""Statistics of a confirmation: seed means with confidence intervals, paired differences, Holm,
equivalence.

Every recipe of a confirmation is trained on the same fresh seeds, and seed ``s`` fixes the data
order, the augmentation and the init RNG for every recipe (common random numbers). The
difference between two recipes is therefore measured seed by seed: ``d_s = a_s - b_s``, its mean
with a Student-t interval over the ``S`` seeds and a two-sided paired t-test (the statistic and
p of :func:`scipy.stats.ttest_rel`). How several tests share an error budget is the caller's
rule (the race's, :mod:`initsearch.race`); :func:`holm` is here for a fixed family (step-down
Bonferroni: controls the family-wise error without assuming independence).

Rules that keep a small sample from misleading:

* no test below :data:`MIN_SEEDS` paired seeds (:func:`paired` refuses): with two seeds the
  t-interval has one degree of freedom and a lucky pair reads as an effect;
* a difference with no spread (the same ``d`` on every seed) gets the exact sign-flip
  permutation p-value, ``2 / 2**S`` (0.25 with three seeds), never ``p = 0``;
* "better" and "worse" carry the sign (:meth:`Paired.better`, :meth:`Paired.worse`);
* equivalence within ``±delta`` is two one-sided tests (TOST): the ``1 - 2 alpha`` interval of
  the difference lies inside ``(-delta, +delta)`` (:meth:`Paired.equivalent`).

A claim about *spread* ("this init varies less from seed to seed") compares the two recipes'
variances over the same seeds (:func:`paired_variance`). The seeds pair the scores, so the two
samples are correlated and an F-test (which assumes independent samples) is wrong; the
Pitman-Morgan test is the paired one.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from scipy import special as _special
from scipy import stats as _scipy

ALPHA = 0.05   #: significance level of every verdict (95 % intervals)
MIN_SEEDS = 3  #: the fewest paired seeds a test is run on


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its ``1 - alpha`` confidence interval (a point for one seed)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci95": [self.lo, self.hi], "n": self.n}

    def pct(self) -> str:
        """``51.23 [49.80, 52.66]`` in percent."""
        return f"{100 * self.mean:.2f} [{100 * self.lo:.2f}, {100 * self.hi:.2f}]"


@dataclass(frozen=True)
class Paired:
    """``a - b`` seed by seed: the mean difference, its 95 % CI, the two-sided p-value (paired
    t-test, or the exact permutation test when every seed's difference is the same) and the
    p-value the decision reads, ``p_adj``: ``p`` itself until a multiplicity rule adjusts it
    (:func:`holm`, or the race's, :mod:`initsearch.race`). ``sd``: the seed-to-seed standard
    deviation of the difference."""

    diff: Estimate
    p: float
    p_adj: float
    sd: float = 0.0

    def better(self, alpha: float = ALPHA) -> bool:
        """``a`` beats ``b``: the difference is positive and its adjusted p < ``alpha``."""
        return self.diff.mean > 0 and self.p_adj < alpha

    def worse(self, alpha: float = ALPHA) -> bool:
        """``a`` loses to ``b``: the difference is negative and its adjusted p < ``alpha``."""
        return self.diff.mean < 0 and self.p_adj < alpha

    @property
    def significant(self) -> bool:
        """:meth:`better` at :data:`ALPHA` (the sign included: a significant loss is not)."""
        return self.better()

    def equivalent(self, delta: float, alpha: float = ALPHA) -> bool:
        """TOST: both one-sided tests reject at ``alpha`` -- the ``1 - 2 alpha`` interval of the
        difference lies strictly inside ``(-delta, +delta)``."""
        n = self.diff.n
        half = _t_quantile(1 - alpha, n - 1) * self.sd / math.sqrt(n)
        return -delta < self.diff.mean - half and self.diff.mean + half < delta

    def seeds_to_resolve(self, delta: float, alpha: float = ALPHA, power: float = 0.8) -> int:
        """Paired seeds at which a difference of ``delta`` would be found with ``power`` (or
        equivalence within ``delta`` shown) given this comparison's spread: the normal
        approximation ``((z_(1-alpha/2) + z_power) sd / delta)^2``, at least :data:`MIN_SEEDS`."""
        z = _scipy.norm.ppf(1 - alpha / 2) + _scipy.norm.ppf(power)
        return max(MIN_SEEDS, math.ceil((z * self.sd / delta) ** 2))

    def to_dict(self) -> dict[str, object]:
        return {"diff": self.diff.to_dict(), "p": self.p, "p_adj": self.p_adj}

    @property
    def n(self) -> int:
        """Paired seeds."""
        return self.diff.n

    def pp(self, versus: str = "") -> str:
        """``+1.23 pp [vs X ](95% CI [+0.10, +2.36], p=0.041)`` -- the adjusted p."""
        d = self.diff
        label = f" vs {versus}" if versus else ""
        return (f"{100 * d.mean:+.2f} pp{label} (95% CI [{100 * d.lo:+.2f}, {100 * d.hi:+.2f}], "
                f"p={self.p_adj:.2g})")


def estimate(values: Sequence[float], alpha: float = ALPHA) -> Estimate:
    """Mean and Student-t ``1 - alpha`` interval of ``values`` (one seed: no spread, a point)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, mean, mean, n)
    half = _t_quantile(1 - alpha / 2, n - 1) * _sd(values, mean) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def _sd(values: Sequence[float], mean: float) -> float:
    """Sample standard deviation in floats (``statistics.stdev`` is exact but 20x slower)."""
    return math.sqrt(max(0.0, sum((v - mean) ** 2 for v in values) / (len(values) - 1)))


def _t_quantile(q: float, df: int) -> float:
    """Student-t quantile (scipy's special function: the race calls it thousands of times)."""
    return float(_special.stdtrit(df, q))


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a - b`` over the same seeds (at least :data:`MIN_SEEDS`).

    Raises:
        ValueError: the sides differ in length or have fewer than :data:`MIN_SEEDS` seeds.
    """
    if len(a) != len(b) or len(a) < MIN_SEEDS:
        raise ValueError(f"a paired comparison needs the same >= {MIN_SEEDS} seeds on both sides "
                         f"(got {len(a)} and {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    sd = _sd(d, mean)
    if sd <= 1e-12 * max(1.0, abs(mean)):  # no spread: t is undefined; the sign-flip test is exact
        sd, p = 0.0, 1.0 if mean == 0 else min(1.0, 2 / 2 ** n)
    else:  # the paired t-test (scipy.stats.ttest_rel's statistic and two-sided p)
        p = float(2 * _special.stdtr(n - 1, -abs(mean) / (sd / math.sqrt(n))))
    return Paired(estimate(d), p, p, sd)


@dataclass(frozen=True)
class VarianceRatio:
    """``var(a) / var(b)`` over the same seeds: the ratio, its ``1 - alpha`` interval and the
    two-sided Pitman-Morgan p-value; ``sd_a``, ``sd_b``: each side's seed-to-seed standard
    deviation; ``r``: the correlation of ``a`` and ``b`` across seeds (what pairing shares)."""

    ratio: float
    lo: float
    hi: float
    p: float
    r: float
    sd_a: float
    sd_b: float
    n: int

    def pp(self) -> str:
        """``SD 0.80 vs 2.10 pp, variance ratio 0.15 (95% CI [0.03, 0.71], Pitman-Morgan p=0.012)``."""
        return (f"SD {100 * self.sd_a:.2f} vs {100 * self.sd_b:.2f} pp, variance ratio "
                f"{self.ratio:.3g} (95% CI [{self.lo:.3g}, {self.hi:.3g}], Pitman-Morgan p={self.p:.2g})")


def paired_variance(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> VarianceRatio:
    """``var(a) / var(b)`` for scores paired by seed (at least :data:`MIN_SEEDS`): the
    Pitman-Morgan test and its interval (Pitman 1939; Morgan 1939).

    With ``F = s_a^2 / s_b^2`` and ``r = corr(a, b)``: ``var(a) = var(b)`` exactly when
    ``a + b`` and ``a - b`` are uncorrelated, so the test is the t-test of that correlation,
    ``t = (F - 1) sqrt(n - 2) / (2 sqrt(F (1 - r^2)))`` on ``n - 2`` degrees of freedom. The
    interval inverts it (the test of ``a`` against ``sqrt(theta) b``): with
    ``K = 1 + 2 (1 - r^2) t_(1-alpha/2, n-2)^2 / (n - 2)`` it is ``F (K -+ sqrt(K^2 - 1))``.
    Assumes the pair is bivariate normal.

    Raises:
        ValueError: the sides differ in length, have fewer than :data:`MIN_SEEDS` seeds, one
            side does not vary, or one is exactly linear in the other (no t statistic exists,
            and a p of 0 from a few seeds would be no honest test).
    """
    n = len(a)
    if len(b) != n or n < MIN_SEEDS:
        raise ValueError(f"a paired variance test needs the same >= {MIN_SEEDS} seeds on both "
                         f"sides (got {len(a)} and {len(b)})")
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    sa, sb = _sd(a, ma), _sd(b, mb)
    if min(sa, sb) <= 1e-12:
        raise ValueError(f"no spread on one side (SD {sa:.3g} and {sb:.3g}): the variance ratio "
                         "is untestable")
    r = sum((x - ma) * (y - mb) for x, y in zip(a, b)) / ((n - 1) * sa * sb)
    r = max(-1.0, min(1.0, r))
    f = sa ** 2 / sb ** 2
    if 1 - r * r <= 1e-12:  # a = c b + d exactly: t is undefined, and p = 0 would overclaim
        raise ValueError(f"the sides are exactly linearly related (r = {r:.3g}): the variance "
                         "ratio is untestable")
    t = (f - 1) * math.sqrt(n - 2) / (2 * math.sqrt(f * (1 - r * r)))
    p = float(2 * _special.stdtr(n - 2, -abs(t)))
    k = 1 + 2 * (1 - r * r) * _t_quantile(1 - alpha / 2, n - 2) ** 2 / (n - 2)
    root = math.sqrt(k * k - 1)
    return VarianceRatio(f, f * (k - root), f * (k + root), p, r, sa, sb, n)


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
    return [Paired(c.diff, c.p, adj, c.sd) for c, adj in zip(comparisons, adjusted)]


def chance_level(num_classes: int, n_val: int) -> float:
    """The accuracy a recipe must exceed to count as trained: ``1/K`` plus three binomial
    standard errors of a guesser's accuracy on ``n_val`` images (2.0 pp on 2,000 CIFAR-10
    images). A recipe at or below it is never recommended."""
    p = 1.0 / num_classes
    return p + 3 * math.sqrt(p * (1 - p) / n_val)
