"""The equal-compute comparison (``report.pareto``, ``report.plot_pareto``): the Pareto fronts on
hand-worked points, the per-configuration table, the plot's drawn data (from the Figure) and the
report's section and fidelity table."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.report.pareto import (
    fidelity_table,
    front_labels,
    pareto_front,
    pareto_table,
    zoo_section,
)
from pipeline.report.plot_pareto import pareto_figure
from pipeline.report.tables import normalise_trials

NAN = math.nan


def test_front_on_hand_worked_points_with_ties_and_dominated_points() -> None:
    #         p0    p1    p2    p3    p4    p5     p6    p7
    cost = [1.0, 2.0, 2.0, 3.0, 1.0, NAN, 4.0, 0.5]
    psnr = [10.0, 12.0, 12.0, 11.0, 9.0, 20.0, 13.0, NAN]
    # p0: nothing as cheap is better. p1 = p2: a tie, neither dominates, both on it. p3 is
    # dominated by p1 (cheaper and better); p4 by p0 (as cheap, better). p5 and p7 have a NaN
    # coordinate: on no front, and they dominate nothing (p7 would dominate every point).
    # p6: the best PSNR of all the finite points.
    assert pareto_front(cost, psnr, maximise=True).tolist() == [
        True, True, True, False, False, False, True, False,
    ]  # fmt: skip
    dist = [0.5, 0.3, 0.3, 0.2, 0.6, 0.0, 0.1, NAN]
    # minimised: p3 now beats every cheaper point (0.2 < 0.3), so it joins the front; p4 is
    # dominated by p0 (as cheap, closer); p6 is the closest finite point
    assert pareto_front(cost, dist, maximise=False).tolist() == [
        True, True, True, True, False, False, True, False,
    ]  # fmt: skip
    # strict on one axis: a point equal in cost and worse in quality is dominated
    assert pareto_front([1, 1], [5, 5], True).tolist() == [True, True]
    assert pareto_front([1, 1], [5, 4], True).tolist() == [True, False]
    assert pareto_front([], [], True).tolist() == []


def _trial(prior: str, estimator: str, seed: int, psnr: float, sec: float, mem: float, **kw):  # type: ignore[no-untyped-def]
    groups = kw.pop("groups", {})
    return {
        "name": f"{prior}-{estimator}-{kw.get('steps', '')}-{seed}",
        "prior": prior, "estimator": estimator, "status": "finished", "seed": seed,
        "depth": 1.0, "restarts": 0.0, "restart_tol": NAN, "iterations": NAN, "start": "y",
        "test_psnr": psnr, "seconds_per_step": sec, "peak_mem_mib": mem,
        "prior_type": "wavelet", "grad_groups_json": json.dumps(groups), **kw,
    }  # fmt: skip


def _table() -> pd.DataFrame:
    g = {"lambda": {"cos": 0.9, "rel_err": 0.4, "sign_agree": 1.0},
         "tau": {"cos": None, "rel_err": 3.0, "sign_agree": None}}  # fmt: skip
    g2 = {"lambda": {"cos": 0.7, "rel_err": 0.6, "sign_agree": 0.5},
          "tau": {"cos": None, "rel_err": 5.0, "sign_agree": None}}  # fmt: skip
    rows = [
        # DEQ: slow, the reference PSNR, θ distance 0
        _trial("w", "deq", 0, 26.0, 0.20, 0.35),
        _trial("w", "deq", 1, 26.2, 0.30, 0.35),
        # Neumann: cheaper, slightly worse: on the time–PSNR front
        _trial("w", "phantom_neumann", 0, 25.9, 0.10, 0.35, steps=5.0, groups=g),
        _trial("w", "phantom_neumann", 1, 25.9, 0.10, 0.35, steps=5.0, groups=g2),
        # SHINE: as slow as Neumann and worse: dominated
        _trial("w", "shine", 0, 25.0, 0.10, 0.50),
        _trial("w", "shine", 1, 25.2, 0.10, 0.50),
        # a failed seed does not enter the mean
        {**_trial("w", "jfb", 0, 24.0, 0.05, 0.08), "status": "failed"},
        _trial("w", "jfb", 1, 25.5, 0.05, 0.08),
    ]
    t = normalise_trials(pd.DataFrame(rows))
    dist = {"deq": 0.0, "phantom_neumann": 0.4, "shine": 0.3, "jfb": 0.9}
    return t.assign(theta_dist_all=t["estimator"].map(dist))


def test_pareto_table_means_over_finished_seeds_and_marks_the_fronts() -> None:
    p = pareto_table(_table())
    assert list(p["label"]) == ["DEQ", "JFB", "phantom-Neumann S5", "SHINE"]
    by = p.set_index("label")
    assert by.loc["DEQ", "test_psnr"] == pytest.approx(26.1)
    assert by.loc["DEQ", "seconds_per_step"] == pytest.approx(0.25)
    assert by.loc["JFB", "n_seeds"] == 1 and by.loc["JFB", "test_psnr"] == 25.5
    assert by.loc["SHINE", "test_psnr"] == pytest.approx(25.1)
    # time vs PSNR: JFB (cheapest), Neumann (0.1 s, 25.9), DEQ (best); SHINE is dominated
    assert by["front_time_psnr"].to_dict() == {
        "DEQ": True, "JFB": True, "phantom-Neumann S5": True, "SHINE": False,
    }  # fmt: skip
    # time vs θ distance: SHINE (0.3) beats Neumann (0.4) at the same time
    assert by["front_time_theta"].to_dict() == {
        "DEQ": True, "JFB": True, "phantom-Neumann S5": False, "SHINE": True,
    }  # fmt: skip
    # memory vs PSNR: JFB (0.08 MiB) and the best PSNR at 0.35 MiB (DEQ); Neumann ties DEQ's
    # memory with a lower PSNR: dominated
    assert by["front_mem_psnr"].to_dict() == {
        "DEQ": True, "JFB": True, "phantom-Neumann S5": False, "SHINE": False,
    }  # fmt: skip
    assert front_labels(p)["w"]["time_psnr"] == ["DEQ", "JFB", "phantom-Neumann S5"]


def test_the_plot_draws_every_point_and_the_front() -> None:
    p = pareto_table(_table())
    fig = pareto_figure(p)
    axes = fig.axes[:4]  # one row (prior w), a panel per front
    assert [ax.get_title() for ax in axes] == [
        "w: time per step vs test PSNR",
        "w: time per step vs θ distance to DEQ",
        "w: peak memory vs test PSNR",
        "w: peak memory vs θ distance to DEQ",
    ]
    ax = axes[0]
    points = {
        c.get_label(): tuple(c.get_offsets()[0])
        for c in ax.collections
        if c.get_label() != "on the front"
    }
    assert points == pytest.approx(
        {
            "DEQ": (0.25, 26.1),
            "JFB": (0.05, 25.5),
            "phantom-Neumann S5": (0.1, 25.9),
            "SHINE": (0.1, 25.1),
        }
    )
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "front"]
    np.testing.assert_allclose(line.get_xdata(), [0.05, 0.1, 0.25])
    np.testing.assert_allclose(line.get_ydata(), [25.5, 25.9, 26.1])
    (ring,) = [c for c in ax.collections if c.get_label() == "on the front"]
    assert len(ring.get_offsets()) == 3
    (line,) = [ln for ln in axes[1].get_lines() if ln.get_label() == "front"]
    np.testing.assert_allclose(line.get_xdata(), [0.05, 0.1, 0.25])
    np.testing.assert_allclose(line.get_ydata(), [0.9, 0.3, 0.0])


def test_fidelity_table_per_group_and_the_report_section() -> None:
    t = _table()
    f = fidelity_table(t)
    neu = f[f["label"] == "phantom-Neumann S5"].set_index("group")
    assert neu.loc["lambda", "cos"] == pytest.approx(0.8)
    assert neu.loc["lambda", "rel_err"] == pytest.approx(0.5)
    assert neu.loc["lambda", "sign_agree"] == pytest.approx(0.75)
    assert neu.loc["lambda", "undefined"] == ""
    # wavelet FB's τ does not move the fixed point: its cosine is undefined, not averaged
    assert math.isnan(neu.loc["tau", "cos"]) and neu.loc["tau", "undefined"]
    assert neu.loc["tau", "rel_err"] == pytest.approx(4.0)
    md = "\n".join(zoo_section(pareto_table(t), f))
    assert "| phantom-Neumann S5 | 2 | 0.1 s | 0.35 | 25.90 | 0.40 | ★ |  |  |  |" in md
    assert "| SHINE | 2 | 0.1 s | 0.5 | 25.10 | 0.30 |  | ★ |  |  |" in md
    assert "- On the front of time per step vs test PSNR: DEQ, JFB, phantom-Neumann S5." in md
    assert "| w | phantom-Neumann S5 | 0.800 / 0.5 / 0.75 | undef. / 4 / — |" in md
    assert zoo_section(None, None) == []


def test_configurations_of_one_estimator_get_distinct_markers() -> None:
    # DEQ-Broyden shares DEQ's estimator colour: it must not look like DEQ (the zoo run's plot
    # drew both as black dots); a log axis within a decade gets readable labels that do not
    # overlap (matplotlib's default labelled every minor tick on top of each other)
    p = pareto_table(_table())
    deq = p[p["label"] == "DEQ"].assign(label="DEQ broyden", seconds_per_step=0.5)
    fig = pareto_figure(pd.concat([p, deq], ignore_index=True))
    ax = fig.axes[0]
    shapes = {
        c.get_label(): c.get_paths()[0].vertices.round(3).tobytes()
        for c in ax.collections
        if c.get_label() in ("DEQ", "DEQ broyden")
    }
    assert len(shapes) == 2 and shapes["DEQ"] != shapes["DEQ broyden"]
    legend = {h.get_label(): h.get_marker() for h in fig.legends[0].legend_handles}
    assert legend["DEQ"] == "o" and legend["DEQ broyden"] == "D"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the report's figures have no canvas of their own
    canvas.draw()
    renderer = canvas.get_renderer()
    shown = [
        t
        for t in ax.xaxis.get_majorticklabels() + ax.xaxis.get_minorticklabels()
        if t.get_visible()
        and t.get_text()
        and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]
    ]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    assert len(boxes) >= 2  # a narrow log axis is labelled (here 0.05 to 0.5 s)
    assert all(a.x1 <= b.x0 for a, b in itertools.pairwise(boxes))  # no two labels overlap
