"""``python -m pipeline.tools.overhead``: its study, its options, and one tiny real measurement.

The real measurement (seconds-long trials, the ``sequential`` and ``ray`` parts: no second Ray
node) runs the module as a user would, in a subprocess, and checks the JSON's structure and that
its numbers are finite and consistent with each other. The ``nodes`` part (two Ray nodes) is not
run here: it costs about a minute more of cluster start-up; ``tests/sweep/test_cluster.py`` covers a
two-node cluster.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.study.config import parse_params
from pipeline.tools import overhead

REPO = Path(__file__).resolve().parents[2]


def test_the_study_alternates_deq_and_deep_rjfb() -> None:
    s = overhead.Settings(trials=5, epochs=3, patches_per_image=4)
    cfg = parse_params(overhead.study_params(s, {"num_cpus": 1, "max_concurrent_trials": 1}))
    assert [t.name for t in cfg.trials()] == [
        "l1-deq-s0",
        "l1-rjfb-K5-T5-s0",
        "l1-deq-s1",
        "l1-rjfb-K5-T5-s1",
        "l1-deq-s2",
    ]
    assert cfg.train.epochs == 3 and cfg.data.patches_per_image == 4
    assert cfg.ray.cpus_per_trial == 1 and cfg.ray.max_concurrent_trials == 1
    one = overhead.study_params(overhead.Settings(trials=1), {})
    assert [t.name for t in parse_params(one).trials()] == ["l1-deq-s0"]


def test_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        overhead.parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--trials", "--epochs", "--parts", "--json", "--patches-per-image"):
        assert option in out
    args = overhead.parser().parse_args(["--parts", "nodes, sequential"])
    assert args.parts == ("sequential", "nodes")  # always measured in this order
    for bad in (["--parts", "sequential,gpu"], ["--parts", ","], ["--trials", "0"]):
        with pytest.raises(SystemExit) as exit_:
            overhead.parser().parse_args(bad)
        assert exit_.value.code == 2
    assert "expected a comma-separated subset" in capsys.readouterr().err


def test_summary_and_table_from_known_numbers() -> None:
    seq = {
        "threads": 1,
        "wall_s": 100.0,
        "train_seconds_sum": 60.0,
        "trials": [
            {"name": "a", "status": "finished", "wall_s": 40.0, "train_seconds": 25.0},
            {"name": "b", "status": "finished", "wall_s": 60.0, "train_seconds": 35.0},
        ],
        "load_before": [0.5, 0.5, 0.5],
        "load_after": [1.0, 0.6, 0.5],
    }
    ray = {
        "wall_s": 108.0,
        "train_seconds_sum": 61.0,
        "trials_per_min": 60.0 * 2 / 108.0,
        "mlflow_s": 0.5,
        "tune_s": 0.25,
        "load_before": [1.0, 0.6, 0.5],
        "load_after": [1.1, 0.7, 0.5],
    }
    result = {"settings": {"trials": 2}, "sequential": seq, "ray": ray}
    s = overhead.summarize(result)
    assert s["overhead"] == pytest.approx(0.08)
    assert s["overhead_per_trial_s"] == pytest.approx(4.0)
    assert s["min_trial_s"] == 40.0 and s["trials_long_enough"] is True
    assert s["goal_met"] is True
    result["summary"] = s
    table = overhead.markdown(result)
    assert "| sequential `run_trial`, 1 thread | 100.0 | 1.20 | 60.0 | 0.50 → 1.00 |" in table
    assert "Ray + MLflow overhead: 8.0% (8.0 s, 4.0 s per trial; goal ≤ 10%: met)" in table
    ray["wall_s"] = 120.0
    assert overhead.summarize(result)["goal_met"] is False


@pytest.mark.slow
def test_a_tiny_measurement_writes_consistent_numbers(tmp_path: Path) -> None:
    path = tmp_path / "overhead.json"
    cmd = [sys.executable, "-m", "pipeline.tools.overhead", "--trials", "2", "--epochs", "2"]
    cmd += ["--patches-per-image", "4", "--parts", "sequential,ray", "--json", str(path)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "| run | wall s | trials/min | Σ train s | load before → after |" in out.stdout
    assert "Ray + MLflow overhead:" in out.stdout
    assert "l1-deq-s0:" in out.stderr  # the per-trial seconds, for the >= 30 s condition

    r = json.loads(path.read_text())
    assert r["command"].startswith("python -m pipeline.tools.overhead --trials 2")
    assert r["settings"] == {
        "trials": 2,
        "epochs": 2,
        "patches_per_image": 4,
        "parts": ["sequential", "ray"],
    }
    assert "nodes" not in r
    assert {"cpu_count", "python", "torch", "ray", "mlflow"} <= set(r["machine"])
    names = ["l1-deq-s0", "l1-rjfb-K5-T5-s0"]
    assert r["trial_names"] == names
    for key in ("load_before", "load_after"):
        assert len(r[key]) == 3 and all(x >= 0 for x in r[key])

    seq, ray, s = r["sequential"], r["ray"], r["summary"]
    for part in (seq, ray):
        assert len(part["load_before"]) == len(part["load_after"]) == 3
        assert [t["name"] for t in part["trials"]] == names
        assert all(t["status"] == "finished" for t in part["trials"])
        assert all(
            math.isfinite(t["train_seconds"]) and t["train_seconds"] > 0 for t in part["trials"]
        )
        assert part["train_seconds_sum"] == pytest.approx(
            sum(t["train_seconds"] for t in part["trials"])
        )
        assert part["wall_s"] >= part["train_seconds_sum"] > 0
    assert seq["threads"] == 1
    assert all(t["wall_s"] >= t["train_seconds"] for t in seq["trials"])
    assert seq["wall_s"] >= sum(t["wall_s"] for t in seq["trials"])
    assert ray["process_s"] >= ray["wall_s"]
    assert ray["nodes_used"] == 1
    assert ray["trials_per_min"] == pytest.approx(60 * 2 / ray["wall_s"])
    # every trial logged its MLflow and Tune costs (a few epochs: small, never negative)
    assert 0 <= ray["mlflow_s"] < ray["wall_s"] and 0 <= ray["tune_s"] < ray["wall_s"]
    assert s["overhead"] == pytest.approx((ray["wall_s"] - seq["wall_s"]) / seq["wall_s"])
    assert s["overhead_s"] == pytest.approx(ray["wall_s"] - seq["wall_s"])
    assert s["min_trial_s"] == min(t["wall_s"] for t in seq["trials"])
    assert s["trials_long_enough"] is False  # seconds-long trials: the goal does not apply
    assert s["goal_met"] is False
    assert "kept" not in out.stderr  # the temporary folder was removed
