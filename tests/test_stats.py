"""The paired variance test (Pitman-Morgan): it is the correlation test of ``a + b`` with
``a - b``, its interval inverts that test, and it covers a known ratio at its stated rate where
an F-test that ignores the pairing does not."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from initsearch.stats import paired_variance

A = [0.612, 0.598, 0.605, 0.601, 0.609, 0.603]
B = [0.640, 0.571, 0.622, 0.588, 0.655, 0.566]


def test_the_test_is_the_correlation_of_sum_and_difference():
    v = paired_variance(A, B)
    u, w = np.add(A, B), np.subtract(A, B)
    assert math.isclose(v.p, scipy_stats.pearsonr(u, w).pvalue, rel_tol=1e-9)
    assert math.isclose(v.ratio, np.var(A, ddof=1) / np.var(B, ddof=1), rel_tol=1e-12)
    assert math.isclose(v.r, np.corrcoef(A, B)[0, 1], rel_tol=1e-9)
    assert v.lo < v.ratio < v.hi < 1 and v.p < 0.05 and v.n == 6
    assert "variance ratio" in v.pp() and "Pitman-Morgan" in v.pp()


def test_the_interval_ends_where_the_test_of_that_ratio_rejects_at_alpha():
    """Testing ``a`` against ``sqrt(theta) b`` at ``theta`` = either end gives p = 0.05 exactly."""
    v = paired_variance(A, B)
    for theta in (v.lo, v.hi):
        u, w = np.add(A, math.sqrt(theta) * np.array(B)), np.subtract(A, math.sqrt(theta) * np.array(B))
        assert math.isclose(scipy_stats.pearsonr(u, w).pvalue, 0.05, rel_tol=1e-6)


def test_coverage_of_a_known_ratio_with_correlated_seeds():
    """Bivariate normal pairs, true variance ratio 0.25, correlation 0.7 (common data order), six
    seeds: the interval covers 0.25 in 95 % of draws; a plain F interval, which treats the
    samples as independent, is too wide (covers far more than 95 %)."""
    rng = np.random.default_rng(0)
    sa, sb, rho, n, draws = 0.5, 1.0, 0.7, 6, 4000
    cov = [[sa * sa, rho * sa * sb], [rho * sa * sb, sb * sb]]
    covered = covered_f = 0
    lo_f, hi_f = scipy_stats.f.ppf([0.975, 0.025], n - 1, n - 1)
    for _ in range(draws):
        x = rng.multivariate_normal([0, 0], cov, size=n)
        v = paired_variance(list(x[:, 0]), list(x[:, 1]))
        covered += v.lo <= 0.25 <= v.hi
        covered_f += v.ratio / lo_f <= 0.25 <= v.ratio / hi_f
    assert abs(covered / draws - 0.95) < 0.015
    assert covered_f / draws > 0.97


def test_no_spread_or_too_few_seeds_is_refused():
    with pytest.raises(ValueError, match="no spread"):
        paired_variance([0.5, 0.5, 0.5], [0.4, 0.6, 0.5])
    with pytest.raises(ValueError, match="exactly linearly related"):
        paired_variance([0.1, 0.2, 0.4], [0.3, 0.5, 0.9])  # a = b / 2 - 0.05
    with pytest.raises(ValueError, match=">= 3 seeds"):
        paired_variance([0.5, 0.6], [0.4, 0.6])
