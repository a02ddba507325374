"""Uncertainty of a comparison with DEQ: a paired bootstrap over (test image, seed) and a verdict.

A configuration is compared with the DEQ trial *of the same seed* on the *same test images*, so
the unit of resampling is the pair (image, seed) and its value the PSNR difference
``psnr_config − psnr_deq`` on that image::

    diffs = {0: np.array([...]), 1: np.array([...]), 2: np.array([...])}   # seed -> per image
    ci = paired_bootstrap(diffs)                  # Interval(mean, low, high, n_pairs, n_seeds)
    verdict(ci, tolerance=0.1)   # "equivalent" | "better" | "worse" | "small difference"
                                 # | "inconclusive"

The interval is the percentile interval of the bootstrap distribution of the mean difference.
Resampling is stratified by seed (each seed keeps its number of images, drawn with replacement
from its own images), so a seed with many images cannot crowd out the others, and a seed that
failed is simply absent. The generator is seeded: the same table gives the same interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

Verdict = Literal["equivalent", "better", "worse", "small difference", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = (
    "equivalent",
    "better",
    "worse",
    "small difference",
    "inconclusive",
)

# The verdicts' definitions, stated once: the report's methods paragraph quotes this text.
VERDICT_RULES = (
    "For a paired difference with 95% interval [lo, hi], point estimate d and tolerance t: "
    "*equivalent* when −t < lo and hi < t (checked first); *better* when lo > 0 and d > t; "
    "*worse* when hi < 0 and d < −t; *small difference* when the interval excludes 0 "
    "otherwise; *inconclusive* when it contains 0 and reaches beyond ±t (or there is no "
    "interval)."
)


@dataclass(frozen=True)
class Interval:
    """A mean difference with its bootstrap confidence interval."""

    mean: float  # mean over every (image, seed) pair
    low: float  # lower end of the interval (NaN without pairs)
    high: float  # upper end
    n_pairs: int  # (image, seed) pairs resampled
    n_seeds: int  # seeds that contributed pairs


def paired_bootstrap(
    diffs: Mapping[object, np.ndarray],
    level: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of the mean of per-(image, seed) differences.

    ``diffs`` maps a seed to that seed's per-image differences; non-finite values (an image
    whose PSNR is missing in either trial) are dropped. With a single pair the interval is
    that value; with none, NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    groups = [np.asarray(v, dtype=float).ravel() for v in diffs.values()]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if g.size]
    n = sum(g.size for g in groups)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0)
    mean = float(np.mean(np.concatenate(groups)))
    rng = np.random.default_rng(seed)
    totals = np.zeros(n_boot)
    for g in groups:  # stratified: each seed resamples its own images
        idx = rng.integers(0, g.size, size=(n_boot, g.size))
        totals += g[idx].sum(axis=1)
    boot = totals / n
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return Interval(mean, float(low), float(high), n, len(groups))


def verdict(ci: Interval, tolerance: float) -> Verdict:
    """One of five outcomes for a paired difference (``VERDICT_RULES``), the same function for
    every paired comparison of the report.

    With lo, hi the interval and d its point estimate (``ci.mean``), t the tolerance:
    ``equivalent`` when −t < lo and hi < t (checked first); ``better`` when lo > 0 and d > t;
    ``worse`` when hi < 0 and d < −t; ``small difference`` when the interval excludes 0
    otherwise (a real difference, smaller than the tolerance at its point estimate);
    ``inconclusive`` when it contains 0 and reaches beyond ±t, and without an interval.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    lo, hi, d = ci.low, ci.high, ci.mean
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(d)):
        return "inconclusive"
    if -tolerance < lo and hi < tolerance:
        return "equivalent"
    if lo > 0 and d > tolerance:
        return "better"
    if hi < 0 and d < -tolerance:
        return "worse"
    if lo > 0 or hi < 0:
        return "small difference"
    return "inconclusive"
