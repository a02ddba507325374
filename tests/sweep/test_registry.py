"""The registry's choice of a prior's best configuration, on a hand-made trials table: the
Jacobian-regularised DEQ arm is a configuration of its own, and the DEQ reference is the plain
DEQ arm started from y."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.sweep.registry import best_per_prior


def _row(name: str, estimator: str, val: float, test: float, **spec: object) -> dict:
    return {
        "name": name,
        "prior": "p",
        "status": "finished",
        "mlflow_run_id": f"run-{name}",
        "estimator": estimator,
        "depth": 10,
        "restarts": 0,
        "restart_tol": math.nan,
        "start": "y",
        "iterations": math.nan,
        "jac_reg": 0.0,
        "final_val_psnr": val,
        "test_psnr": test,
        **spec,
    }


def test_jac_reg_deq_is_its_own_arm_and_not_the_reference() -> None:
    t = pd.DataFrame(
        [
            _row("deq-s0", "deq", 29.0, 28.0),
            _row("deq-s1", "deq", 29.2, 28.2),
            # the regularised arm validates best: chosen as a configuration of its own (both
            # seeds), never averaged into the DEQ reference
            _row("jr-s0", "deq", 30.0, 27.0, jac_reg=1.0),
            _row("jr-s1", "deq", 30.2, 27.4, jac_reg=1.0),
            _row("warm-s0", "deq", 28.0, 20.0, start="warm"),
            _row("rjfb-s0", "rjfb", 28.5, 27.9, restarts=25),
        ]
    )
    best = best_per_prior(t)["p"]
    assert best["name"] == "jr-s1" and best["seeds"] == 2
    assert best["config_test_psnr"] == pytest.approx(27.2)
    assert best["deq_test_psnr"] == pytest.approx(28.1)  # plain DEQ from y: s0 and s1 only
    assert best["delta_psnr_vs_deq"] == pytest.approx(27.2 - 28.1)


def test_a_table_without_jac_reg_groups_as_before() -> None:
    t = pd.DataFrame([_row("deq-s0", "deq", 29.0, 28.0), _row("r-s0", "rjfb", 29.5, 28.3)])
    best = best_per_prior(t.drop(columns="jac_reg"))["p"]
    assert best["name"] == "r-s0" and best["delta_psnr_vs_deq"] == pytest.approx(0.3)
