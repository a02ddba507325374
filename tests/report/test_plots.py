"""``report.plots`` (and the phase plot of ``report.cost``): the report draws every figure it
declares from the tables and saves each one under its name."""

from __future__ import annotations

import importlib
from pathlib import Path

from builders import CFG
from PIL import Image

from pipeline.report import PLOT_FILES, plot_pareto, plotting, write_report

# every module that saves a figure, each through its own name for plotting.save_png
SAVING = tuple(
    importlib.import_module(f"pipeline.report.{name}")
    for name in (
        "cost",
        "plot_cost",
        "plot_depth",
        "plot_histograms",
        "plot_pareto",
        "plot_theta_depth",
        "plot_training",
        "plotting",
    )
)
TITLES = {
    "theta_distance_vs_depth.png": "Learned θ against DEQ's vs total depth / contraction horizon",
    "psnr_vs_depth.png": "Test PSNR at equilibrium vs truncation depth K",
    "grad_error_vs_depth.png": "Gradient error vs DEQ (relative, at the final θ) against depth K",
    "cost.png": "Training cost per configuration",
    "cost_phases.png": "Where the trials' wall time went, per prior × estimator",
    "theta_trajectories.png": (
        "Learned hyperparameters θ along training (from the initial θ at epoch 0)"
    ),
    "psnr_histograms.png": (
        "Per-image test PSNR: estimators at equilibrium, and one trained rJFB model at depths "
        "(dashed: means)"
    ),
    "val_psnr_curves.png": "Validation PSNR vs training wall time",
    "grad_groups_vs_depth.png": "Gradient error per parameter group vs DEQ against depth K",
    "pareto.png": plot_pareto.TITLE,
}


def _drawn(fig) -> int:
    """Lines, bars and other artists that show data, over every panel."""
    return sum(len(ax.lines) + len(ax.patches) + len(ax.collections) for ax in fig.axes)


def _title(fig) -> str:
    # a placeholder has one panel and no figure title: its panel's title is the plot's
    return fig.get_suptitle() or fig.axes[0].get_title()


def test_every_plot_is_drawn_from_the_tables_and_saved(tables, tmp_path, monkeypatch):
    saved: dict[str, object] = {}

    def record(fig, path: Path) -> None:
        saved[Path(path).name] = fig
        real(fig, path)

    real = plotting.save_png
    for module in SAVING:
        monkeypatch.setattr(module, "save_png", record)
    write_report(*tables, tmp_path, CFG)
    assert sorted(saved) == sorted(PLOT_FILES) == sorted(TITLES)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(PLOT_FILES)
    for name, fig in saved.items():
        assert _title(fig) == TITLES[name], name
        # the file is this figure, drawn at the report's resolution
        w, h = fig.get_size_inches() * plotting.DPI
        assert Image.open(tmp_path / "plots" / name).size == (round(w), round(h)), name
    # synthetic_trials has no per-group gradient errors and no phase times: those two say so;
    # every other figure draws the tables' data
    empty = {n for n, fig in saved.items() if not _drawn(fig)}
    assert empty == {"grad_groups_vs_depth.png", "cost_phases.png"}
    (ax,) = saved["grad_groups_vs_depth.png"].axes
    assert ax.texts[0].get_text().startswith("no finished rJFB trial records per-group")
    (ax,) = saved["cost_phases.png"].axes
    assert ax.texts[0].get_text() == "no phase times in the trials table"
