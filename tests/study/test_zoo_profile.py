"""``profiles/zoo.yaml``: the estimator zoo on the default data validates through the real CLI,
runs every estimator on both priors with every seed, and leaves the default study alone."""

from __future__ import annotations

from collections import Counter

import yaml
from helpers import REPO, run_module

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
