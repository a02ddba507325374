"""The paired bootstrap and the verdicts, on synthetic differences whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.report.confidence import (
    VERDICT_RULES,
    VERDICTS,
    Interval,
    paired_bootstrap,
    verdict,
)


def test_constant_differences_give_a_point_interval() -> None:
    ci = paired_bootstrap({0: np.full(5, -0.2), 1: np.full(7, -0.2)})
    assert ci.mean == pytest.approx(-0.2, abs=1e-12)
    assert ci.low == pytest.approx(-0.2, abs=1e-12) and ci.high == pytest.approx(-0.2, abs=1e-12)
    assert (ci.n_pairs, ci.n_seeds) == (12, 2)


def test_interval_width_matches_the_standard_error() -> None:
    """For n iid N(mu, s^2) differences the 95% interval of the mean is about
    mu_hat ± 1.96 s/sqrt(n). With n = 400 and s = 1 the half-width is 0.098; the percentile
    bootstrap with 4000 resamples estimates it within a few percent (Monte Carlo error of a
    2.5% quantile at 4000 draws is about 3% of the half-width), so 10% is a safe bound."""
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, size=400)
    ci = paired_bootstrap({0: d[:200], 1: d[200:]})
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert ci.mean == pytest.approx(d.mean(), abs=1e-12)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.10)
    assert ci.low < ci.mean < ci.high


def test_coverage_of_the_true_mean() -> None:
    """Over 200 synthetic studies (3 seeds x 16 images, true mean 0.05) the 95% interval
    covers the true mean in 0.95 ± 0.05 of them (binomial sd at 200 draws is 0.015; the
    percentile bootstrap undercovers slightly at n = 48)."""
    rng = np.random.default_rng(2)
    hits = 0
    for k in range(200):
        diffs = {s: rng.normal(0.05, 0.2, size=16) for s in range(3)}
        ci = paired_bootstrap(diffs, n_boot=1000, seed=k)
        hits += ci.low <= 0.05 <= ci.high
    assert 0.90 <= hits / 200 <= 1.0


def test_non_finite_pairs_and_empty_seeds_are_dropped() -> None:
    ci = paired_bootstrap({0: np.array([0.1, np.nan, 0.1]), 1: np.array([np.inf]), 2: []})
    assert (ci.n_pairs, ci.n_seeds) == (2, 1)
    empty = paired_bootstrap({0: np.array([np.nan])})
    assert empty.n_pairs == 0 and math.isnan(empty.low)
    assert verdict(empty, 0.1) == "inconclusive"


def test_same_input_same_interval() -> None:
    d = {0: np.linspace(-1, 1, 9), 1: np.linspace(0, 2, 9)}
    assert paired_bootstrap(d) == paired_bootstrap(d)


@pytest.mark.parametrize(
    ("low", "high", "mean", "expected"),
    [
        (-0.05, 0.08, 0.01, "equivalent"),
        (-0.09, -0.01, -0.05, "equivalent"),  # excludes 0 but inside ±t: equivalence first
        (-0.1, 0.05, 0.0, "inconclusive"),  # the bounds are strict: lo = -t is not inside
        (-0.5, -0.2, -0.35, "worse"),
        (0.15, 0.4, 0.3, "better"),
        (0.05, 0.4, 0.2, "better"),  # lo > 0 and d > t: the interval may reach inside ±t
        (-0.20, -0.07, -0.13, "worse"),  # the K1 T5: d = -0.13 beyond -t
        (-0.14, -0.04, -0.09, "small difference"),  # excludes 0, d inside ±t
        (0.02, 0.30, 0.08, "small difference"),
        (-0.2, 0.05, -0.07, "inconclusive"),  # contains 0 and reaches beyond -t
        (-0.5, 0.5, 0.0, "inconclusive"),
        (math.nan, math.nan, 0.3, "inconclusive"),  # no interval
    ],
)
def test_five_verdicts_on_hand_made_intervals(
    low: float, high: float, mean: float, expected: str
) -> None:
    assert verdict(Interval(mean, low, high, 10, 3), tolerance=0.1) == expected


def test_every_verdict_is_reachable_and_named_once() -> None:
    assert set(VERDICTS) == {"equivalent", "better", "worse", "small difference", "inconclusive"}
    for v in VERDICTS:
        assert f"*{v}*" in VERDICT_RULES
