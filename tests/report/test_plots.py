"""``report.plots``: every figure of the report is written."""

from __future__ import annotations

from builders import assert_pngs

from pipeline.report import PLOT_FILES


def test_every_plot_is_a_png(report):
    out, _ = report
    assert_pngs(out)
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(PLOT_FILES)
