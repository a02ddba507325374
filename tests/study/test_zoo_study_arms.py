"""The zoo's estimators as study arms (issue 24, phase 2): their TrialSpec fields, validation,
trial names, report labels, grid points and the core estimator a trial builds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import tiny_rjfb_sweep

from pipeline.core.phantom import DampedPhantom, NeumannPhantom
from pipeline.core.shine import Shine
from pipeline.report.tables import deq_rows, normalise_trials
from pipeline.study.build import build_estimator
from pipeline.study.config import TrialSpec, parse_params
from pipeline.study.estimators import iterations_at_depth
from pipeline.study.tables import deq_baseline


def _study(**sweep):  # type: ignore[no-untyped-def]
    raw = tiny_rjfb_sweep("zoo", epochs=1)
    raw["sweep"] = {**raw["sweep"], **sweep}
    raw["sweep"]["deq"] = {**raw["sweep"]["deq"], "broyden_memory": 7, "anderson_memory": 4}
    return parse_params(raw)


def test_the_zoo_expands_to_named_trials_with_their_options() -> None:
    cfg = _study(
        estimators=["deq", "jfb", "phantom_unrolled", "phantom_neumann", "shine"],
        phantom_steps=[3, 8],
        seeds=[0],
        points=[
            {"prior": "l1", "estimator": "deq", "solver": "broyden"},
            {"prior": "l1", "estimator": "phantom_unrolled", "steps": 5, "damping": 0.25},
            {"prior": "l1", "estimator": "phantom_neumann", "steps": 4, "damping": 0.5},
            {"prior": "l1", "estimator": "shine", "refine": 5},
        ],
    )
    trials = {t.name: t for t in cfg.trials()}
    assert list(trials) == [
        "l1-deq-s0",
        "l1-jfb-s0",
        "l1-phantom_unrolled-S3-s0",
        "l1-phantom_unrolled-S8-s0",
        "l1-phantom_neumann-S3-s0",
        "l1-phantom_neumann-S8-s0",
        "l1-shine-s0",
        "l1-deq-broyden-s0",
        "l1-phantom_unrolled-S5-d0.25-s0",
        "l1-phantom_neumann-S4-d0.5-s0",
        "l1-shine-R5-s0",
    ]
    # the options each core estimator receives, from the spec and sweep.deq
    deq = build_estimator(cfg, trials["l1-deq-s0"])
    assert (deq.solver, deq.anderson_memory, deq.broyden_memory) == ("anderson", 4, 7)
    broyden = build_estimator(cfg, trials["l1-deq-broyden-s0"])
    assert (broyden.solver, broyden.backward_solver_, broyden.broyden_memory) == (
        "broyden",
        "broyden",
        7,
    )
    unrolled = build_estimator(cfg, trials["l1-phantom_unrolled-S5-d0.25-s0"])
    assert isinstance(unrolled, DampedPhantom)
    assert (unrolled.steps, unrolled.damping, unrolled.tol, unrolled.max_iter) == (
        5,
        0.25,
        1e-3,
        30,
    )
    default = build_estimator(cfg, trials["l1-phantom_unrolled-S3-s0"])
    assert (default.steps, default.damping) == (3, 0.5)  # the class default when unset
    neumann = build_estimator(cfg, trials["l1-phantom_neumann-S4-d0.5-s0"])
    assert isinstance(neumann, NeumannPhantom) and (neumann.steps, neumann.damping) == (4, 0.5)
    assert build_estimator(cfg, trials["l1-phantom_neumann-S8-s0"]).damping == 1.0
    shine = build_estimator(cfg, trials["l1-shine-R5-s0"])
    assert isinstance(shine, Shine)
    assert (shine.refine, shine.memory, shine.tol, shine.max_iter) == (5, 7, 1e-3, 30)
    assert build_estimator(cfg, trials["l1-shine-s0"]).refine == 0
    # every zoo arm's trained network is used at equilibrium (a solve, no fixed depth)
    for name in ("l1-phantom_unrolled-S3-s0", "l1-phantom_neumann-S3-s0", "l1-shine-s0"):
        assert iterations_at_depth(trials[name]) is None


@pytest.mark.parametrize(
    ("trial", "message"),
    [
        ({"estimator": "phantom_unrolled"}, "a phantom_unrolled trial needs steps >= 1"),
        ({"estimator": "phantom_neumann", "steps": 0}, "greater than or equal to 1"),
        ({"estimator": "phantom_unrolled", "steps": 2, "damping": 0.0}, "greater than 0"),
        ({"estimator": "phantom_neumann", "steps": 2, "damping": 1.5}, "less than or equal to 1"),
        ({"estimator": "rjfb", "steps": 3}, "applies to phantom_unrolled and phantom_neumann"),
        ({"estimator": "deq", "damping": 0.5}, "applies to phantom_unrolled and phantom_neumann"),
        ({"estimator": "rjfb", "solver": "broyden"}, "applies to deq, jfb, phantom_unrolled"),
        ({"estimator": "deq", "solver": "newton"}, "solver"),
        ({"estimator": "deq", "refine": 2}, "applies to shine trials only, not deq"),
        ({"estimator": "shine", "refine": -1}, "greater than or equal to 0"),
    ],
)
def test_zoo_fields_are_validated(trial: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        TrialSpec.model_validate({"prior": "l1", **trial})


def test_broyden_memory_is_validated() -> None:
    raw = tiny_rjfb_sweep("zoo", epochs=1)
    raw["sweep"]["deq"] = {**raw["sweep"]["deq"], "broyden_memory": 0}
    with pytest.raises(Exception, match="broyden_memory"):
        parse_params(raw)


def _row(**kw):  # type: ignore[no-untyped-def]
    base = dict(
        name="x", prior="p", estimator="deq", status="finished", depth=1.0, restarts=0.0,
        restart_tol=math.nan, iterations=math.nan, start="y", seed=0, test_psnr=20.0,
    )  # fmt: skip
    return {**base, **kw}


def test_report_labels_and_the_deq_baseline() -> None:
    """Labels tell every zoo configuration apart; a DEQ with its own solver is compared with the
    baseline (DEQ on sweep.deq.solver), never used as it, in the report and the registry."""
    t = pd.DataFrame(
        [
            _row(name="deq", test_psnr=25.0),
            _row(name="deqb", solver="broyden", test_psnr=25.5),
            _row(name="pu", estimator="phantom_unrolled", steps=5.0, damping=0.5),
            _row(name="pn", estimator="phantom_neumann", steps=10.0),
            _row(name="sh", estimator="shine", refine=5.0),
            _row(name="sh0", estimator="shine", refine=0.0),
            _row(name="jfb", estimator="jfb"),
        ]
    )
    n = normalise_trials(t)
    assert list(n["label"]) == [
        "DEQ",
        "DEQ broyden",
        "phantom-unrolled S5 λ0.5",
        "phantom-Neumann S10",
        "SHINE R5",
        "SHINE",
        "JFB",
    ]
    assert list(deq_baseline(n)["name"]) == ["deq"]
    assert list(deq_rows(n)["name"]) == ["deq"]
    # tables from before the zoo (no solver column) keep every DEQ as a candidate
    assert list(deq_baseline(normalise_trials(t.drop(columns="solver")))["name"]) == [
        "deq",
        "deqb",
    ]


def test_labels_of_a_row_with_missing_options() -> None:
    """A hand-made or older row (NaN options) still gets a label, no exception."""
    from pipeline.study.estimators import get_kind

    r = SimpleNamespace(depth=math.nan, steps=math.nan, damping=math.nan, refine=math.nan)
    assert get_kind("phantom_neumann").label_parts(r) == ["S?"]
    assert get_kind("shine").label_parts(r) == []
