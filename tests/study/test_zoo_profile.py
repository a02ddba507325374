"""``profiles/zoo.yaml``: the estimator zoo on the default data validates through the real CLI,
runs every estimator on both priors with every seed, and leaves the default study alone."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml
from helpers import REPO, run_module, tiny_data

from pipeline.study.config import load_params
from pipeline.study.estimators import estimator_names

ZOO = REPO / "profiles" / "zoo.yaml"


def test_rjfb_check_validates_the_zoo_profile() -> None:
    result = run_module("pipeline.cli", "check", "--params", "profiles/zoo.yaml", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "profiles/zoo.yaml: valid; 32 trials" in result.stdout


def test_the_zoo_runs_every_estimator_on_both_priors_beside_the_deq_baseline() -> None:
    cfg = load_params(ZOO)
    trials = cfg.trials()
    seeds = cfg.sweep.seeds
    assert len(seeds) >= 2
    per = Counter((t.prior, t.estimator, t.solver) for t in trials)
    for prior in ("wl12", "pnp"):
        for est in estimator_names():  # every registered estimator, DEQ twice (two solvers)
            assert per[(prior, est, None)] == len(seeds), (prior, est)
        assert per[(prior, "deq", "broyden")] == len(seeds)
        rjfb = [t for t in trials if t.prior == prior and t.estimator == "rjfb"]
        assert {(t.depth, t.restarts) for t in rjfb} == {(5, 5)}
    # the baseline DEQ runs Anderson; pnp's equilibrium arms differentiate DEQ's 10-block
    assert cfg.sweep.deq.solver == "anderson"
    for t in trials:
        if t.prior == "pnp" and t.estimator in ("deq", "jfb", "shine", "phantom_neumann"):
            assert t.depth == 10, t.name
    # the default data, pretrain and priors: only the sweep differs
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    zoo = yaml.safe_load(ZOO.read_text())
    for key in ("data", "pretrain", "train"):
        assert zoo[key] == default[key], key
    for prior in ("wl12", "pnp"):
        assert zoo["priors"][prior] == default["priors"][prior], prior
    assert set(default["sweep"]["estimators"]) == {"deq", "rjfb"}  # the default study as it was


@pytest.mark.slow
def test_a_two_trial_cut_of_the_zoo_runs_through_ray_mlflow_and_the_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The profile's wl12 prior and sweep.deq, on tiny data and one epoch: its DEQ baseline and
    SHINE through real Ray and MLflow, then the report's Pareto section, plot and fidelity."""
    import ray

    from pipeline.report.writer import write_report
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare
    from pipeline.sweep.driver import run_sweep

    assert not ray.is_initialized(), "the sweep must start its own Ray (workers see PYTHONPATH)"
    zoo = yaml.safe_load(ZOO.read_text())
    raw = {
        "data": tiny_data(patches_per_image=2),
        "priors": {"wl12": zoo["priors"]["wl12"]},
        "train": {"epochs": 1, "batch_size": 2, "steps_per_epoch": 1, "probe_batch_size": 2},
        "sweep": {
            **{k: v for k, v in zoo["sweep"].items() if k not in ("points", "priors")},
            "priors": ["wl12"],
            "estimators": ["deq", "shine"],
            "seeds": [0],
        },
        "ray": {"num_cpus": 2, "max_concurrent_trials": 2},
        "mlflow": {"experiment": "zoo-cut"},
        "report": {"images": 1},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_params(tmp_path / "params.yaml")
    prepare(cfg, tmp_path / "data" / "prepared", progress=False)
    trials, history = run_sweep(cfg, tmp_path / "data" / "prepared")
    assert list(trials["name"]) == ["wl12-deq-s0", "wl12-shine-s0"]
    assert (trials["status"] == "finished").all(), list(trials["status_reason"])
    out = tmp_path / "report"
    metrics = write_report(trials, history, out, cfg.report, priors=cfg.priors)
    fronts = metrics["pareto"]["wl12"]
    assert set(fronts["time_psnr"]) <= {"DEQ", "SHINE"} and fronts["time_psnr"]
    assert (out / "plots" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "ablation.md").read_text()
    assert "## Equal compute: quality against cost (Pareto fronts)" in md
    assert "| wl12 | SHINE |" in md  # its fidelity row
