"""``report.plot_depth``: the per-group gradient errors plotted against depth."""

from __future__ import annotations

from builders import SEEDS, normalise, seeded_tables


def test_group_errors_feed_the_per_group_plot(seeded_report):
    from pipeline.report.plots import group_errors

    trials, _ = seeded_tables()
    err = group_errors(normalise(trials))
    # τ's zero relative error has no place on a log scale; DEQ has no groups
    assert set(err["group"]) == {"lambda", "sigma"}
    assert len(err) == 2 * 3 * len(SEEDS)
    assert sorted(set(err["depth"])) == [1, 5]
