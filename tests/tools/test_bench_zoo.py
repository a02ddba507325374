"""``rjfb bench --suite zoo``: the profiler-based peak memory, and one tiny run's rows (never times)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.tools import bench_zoo

pytestmark = pytest.mark.filterwarnings("ignore:Power iteration:UserWarning")


def test_peak_bytes_is_the_peak_of_live_tensor_bytes() -> None:
    """4 MB and 2 MB live together (6 MB), then 4 MB freed and 1 MB allocated: peak 6 MB."""

    def fn():
        a = torch.zeros(1_000_000)  # 4 MB of float32
        b = torch.zeros(500_000)  # 2 MB
        del a
        c = torch.zeros(250_000)  # 1 MB
        return b, c

    assert bench_zoo.peak_bytes(fn) == pytest.approx(6_000_000, rel=0.01)


def test_every_zoo_row_runs_on_the_wl12_problem(tmp_path) -> None:
    result = bench_zoo.main(repeats=1, batch=2, json_path=str(tmp_path / "zoo.json"))
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == [c.label for c in bench_zoo.ZOO]
    ref = rows[bench_zoo.REFERENCE]
    assert ref["time_x"] == 1.0 and ref["mem_x"] == 1.0
    for label, row in rows.items():
        for column in ("ms_per_step", "peak_mib", "saved_mib", "rel_err"):
            assert math.isfinite(row[column]) and row[column] >= 0, (label, column)
        assert row["steps"] >= 1, label
    # what the implicit-style rows did: DEQ solves its backward, Neumann-K makes K products
    assert rows["deq anderson"]["backward"] > 0 and rows["phantom neumann K5"]["backward"] == 5
    # the live peak sees what autograd's saved tensors miss (SHINE: Broyden's pairs, held
    # until the backward; DEQ: Anderson's history)
    for label in ("shine", "deq anderson"):
        assert rows[label]["peak_mib"] > rows[label]["saved_mib"], label
    assert (tmp_path / "zoo.json").is_file()
