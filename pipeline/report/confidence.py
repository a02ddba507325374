"""Uncertainty of a comparison with DEQ: a paired bootstrap over (test image, seed) and a verdict.

A configuration is compared with the DEQ trial *of the same seed* on the *same test images*, so
the unit of resampling is the pair (image, seed) and its value the PSNR difference
``psnr_config − psnr_deq`` on that image::

    diffs = {0: np.array([...]), 1: np.array([...]), 2: np.array([...])}   # seed -> per image
    ci = paired_bootstrap(diffs)                  # Interval(mean, low, high, n_pairs, n_seeds)
    verdict(ci, tolerance=0.1)                    # "equivalent" | "worse" | "better" | "inconclusive"

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

Verdict = Literal["equivalent", "worse", "better", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("equivalent", "worse", "better", "inconclusive")


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
    """What the interval says about the configuration against DEQ, at ``tolerance`` dB.

    ``equivalent``: the whole interval lies within ±tolerance. ``worse`` / ``better``: it lies
    entirely below −tolerance / above +tolerance (so it excludes both 0 and the tolerance).
    ``inconclusive``: anything else, including no data.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
        return "inconclusive"
    if -tolerance <= ci.low and ci.high <= tolerance:
        return "equivalent"
    if ci.high < -tolerance:
        return "worse"
    if ci.low > tolerance:
        return "better"
    return "inconclusive"
