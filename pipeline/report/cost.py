"""Where the trials' wall time went: the phase split per prior × estimator, and the sweep's
own overhead (start-up before the first training step, the tail after the last trial).

Reads the ``seconds_*`` columns of the trials table (:mod:`pipeline.study.phases`) and the
sweep stage's ``sweep_timing.json``; a table without the columns (an older sweep) gives no
section and an empty plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipeline.report.common import safe_name
from pipeline.report.plotting import save_png
from pipeline.study.phases import PHASES

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

PHASE_PLOT = "cost_phases.png"
PHASE_PLOT_TITLE = "Where the trials' wall time went, per prior × estimator"
# colours of the stacked bar: training steps first, in a colour of their own
_COLOURS = {
    "train": "#2b8cbe",
    "startup": "#bdbdbd",
    "val": "#fdae6b",
    "probe": "#e6550d",
    "test": "#a1d99b",
    "artifacts": "#9e9ac8",
    "other": "#f0f0f0",
}


def phase_table(t: pd.DataFrame) -> pd.DataFrame:
    """Summed seconds per phase and prior × estimator (finished trials), with ``other`` (the
    total's part no phase holds), ``total``, ``n`` and ``train_fraction`` (Σ train / Σ total);
    empty when the table has no phase columns."""
    cols = [f"seconds_{p}" for p in PHASES]
    if not {*cols, "seconds_total"} <= set(t.columns):
        return pd.DataFrame()
    done = t[(t["status"] == "finished") & t["seconds_total"].notna()]
    if done.empty:
        return pd.DataFrame()
    g = done.groupby(["prior", "estimator"], sort=False)
    out = g[[*cols, "seconds_total"]].sum()
    out.columns = [*PHASES, "total"]
    out["other"] = (out["total"] - out[list(PHASES)].sum(axis=1)).clip(lower=0.0)
    out["n"] = g.size()
    out["train_fraction"] = out["train"] / out["total"]
    return out.reset_index()


def plot_phases(table: pd.DataFrame, path: Path) -> None:
    save_png(phase_figure(table), path)


def phase_figure(table: pd.DataFrame) -> Figure:
    """A stacked horizontal bar per prior × estimator of :func:`phase_table`: summed seconds of
    each phase."""
    from matplotlib.figure import Figure

    # no pyplot: nothing to close, and the report stage never opens a window
    fig = Figure(figsize=(8, 0.45 * max(len(table), 2) + 1.9))
    ax = fig.subplots()
    if table.empty:
        ax.text(0.5, 0.5, "no phase times in the trials table", ha="center", va="center")
        ax.set_axis_off()
    else:
        labels = [
            f"{safe_name(r.prior)} · {safe_name(r.estimator)} ({r.n})" for r in table.itertuples()
        ]
        left = pd.Series(0.0, index=table.index)
        for phase in ("train", *[p for p in PHASES if p != "train"], "other"):
            ax.barh(labels, table[phase], left=left, color=_COLOURS[phase], label=phase)
            left = left + table[phase]
        for i, r in enumerate(table.itertuples()):
            ax.text(r.total, i, f" {r.train_fraction:.0%} training", va="center", fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("summed trial wall time (s)")
        # below the axes: never over a bar or its label
        ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.5, -0.28))
        ax.set_xlim(0, float(table["total"].max()) * 1.25)
    ax.set_title(PHASE_PLOT_TITLE, fontsize=9)
    fig.tight_layout()
    return fig


def cost_section(metrics: Mapping[str, Any]) -> list[str]:
    """The markdown section: the phase split per prior × estimator (``metrics["phases"]``, the
    records of :func:`phase_table`) and the sweep's overhead (``metrics["sweep_timing"]``)."""
    table = pd.DataFrame(metrics.get("phases") or [])
    md: list[str] = []
    if not table.empty:
        md += [
            "## Where the time went",
            "",
            "Summed wall time of the finished trials per phase (seconds; start-up runs from "
            "the trial's entry to its first training step, artifacts are the epoch rows, "
            "checkpoints and files) and the share spent in training steps "
            f"([plot](plots/{PHASE_PLOT})). Overall: "
            f"**{metrics.get('train_fraction', math.nan):.0%}** of the trials' time trains.",
            "",
            "| prior | estimator | trials | "
            + " | ".join(PHASES)
            + " | other | total | train share |",
            "|" + "---|" * (len(PHASES) + 6),
        ]
        for r in table.itertuples():
            cells = [f"{getattr(r, p):.1f}" for p in PHASES]
            md.append(
                f"| `{safe_name(r.prior)}` | {safe_name(r.estimator)} | {r.n} | "
                + " | ".join(cells)
                + f" | {r.other:.1f} | {r.total:.1f} | {r.train_fraction:.0%} |"
            )
        md.append("")
    timing = dict(metrics.get("sweep_timing") or {})
    before, after = timing.get("before_first_step_s"), timing.get("after_last_trial_s")
    if isinstance(before, (int, float)) and isinstance(after, (int, float)):
        md += [
            f"Sweep stage: {timing.get('stage_seconds', math.nan):.0f} s; "
            f"{before:.1f} s from its start to the first training step, {after:.1f} s from "
            "the last trial's end to its end.",
            "",
        ]
    return md
