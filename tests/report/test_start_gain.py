"""The start gain: a chained prior (``sigma_init_from``) against the trial it started from, on
hand-made tables whose differences are known exactly."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.report import write_report
from pipeline.report.comparisons import start_gain_table
from pipeline.report.tables import normalise_trials
from pipeline.study.config import ReportConfig

N_IMG = 8


def _row(prior: str, estimator: str, seed: int, psnr: float, **kw) -> dict:
    depth, restarts = kw.pop("depth", 10), kw.pop("restarts", 0)
    name = f"{prior}-{estimator}-K{depth}-T{restarts}-s{seed}"
    source = kw.pop("source", None)
    overrides = {"sigma_init": [0.05], "sigma_init_from": source} if source else {}
    row = {
        "trial_id": f"id-{name}",
        "name": name,
        "prior": prior,
        "prior_type": "pnp",
        "estimator": estimator,
        "depth": depth,
        "restarts": restarts,
        "restart_tol": math.nan,
        "start": "y",
        "iterations": math.nan,
        "seed": seed,
        "status": "finished",
        "status_reason": "",
        "test_psnr": psnr,
        "test_psnr_per_image": [psnr] * N_IMG,
        "test_psnr_input": 25.0,
        "test_psnr_input_per_image": [25.0] * N_IMG,
        "gamma_hat": 0.9,
        "gamma_hat_k": 0.5,
        "inits_json": json.dumps({"overrides": overrides, "theta": {}}),
    }
    row.update(kw)
    return row


def _study(deq_gain: dict[int, float], undefined: dict[int, float] | None = None) -> pd.DataFrame:
    rows = []
    for s in (0, 1, 2):
        start = 28.0 + 0.1 * s
        rows.append(_row("pnp", "deq", s, start))
        rows.append(
            _row(
                "drunet_fb",
                "deq",
                s,
                start + deq_gain[s],
                source=f"pnp-deq-K10-T0-s{s}",
                deq_undefined_epoch=(undefined or {}).get(s, math.nan),
            )
        )
        rows.append(
            _row("drunet_fb", "rjfb", s, start + 0.3, restarts=25, source=f"pnp-deq-K10-T0-s{s}")
        )
    return pd.DataFrame(rows)


def test_every_seed_above_its_start() -> None:
    g = start_gain_table(normalise_trials(_study({0: 0.2, 1: 0.2, 2: 0.2})), 0.1)
    assert set(g["label"]) == {"DEQ K10", "rJFB K10 T25"}
    r = g.set_index("label").loc["DEQ K10"]
    # 0.2 dB on every (image, seed): an exact interval above t
    assert r["gain_mean"] == pytest.approx(0.2) and r["gain_ci_low"] == pytest.approx(0.2)
    assert (r["n_seeds"], r["n_pairs"], r["verdict"]) == (3, 3 * N_IMG, "better")
    assert (r["source_prior"], r["seed_gains"]) == ("pnp", "+0.20 / +0.20 / +0.20")
    assert r["below_start_seeds"] == "" and r["status"] == "at or above its start on every seed"


def test_a_seed_below_its_start_is_named() -> None:
    g = start_gain_table(normalise_trials(_study({0: 0.2, 1: -0.25, 2: 0.0})), 0.1)
    r = g.set_index("label").loc["DEQ K10"]
    assert r["below_start_seeds"] == "1"
    assert r["status"] == "below its start on seed(s) 1"
    assert r["seed_gains"] == "+0.20 / -0.25 / +0.00"
    assert r["gain_mean"] == pytest.approx((0.2 - 0.25 + 0.0) / 3)


def test_an_undefined_deq_is_not_compared() -> None:
    t = _study({0: -1.0, 1: 0.1, 2: 0.1}, undefined={0: 2.0})
    r = start_gain_table(normalise_trials(t), 0.1).set_index("label").loc["DEQ K10"]
    # seed 0's PSNR (1 dB below its start) is no result: it is reported undefined instead
    assert r["n_seeds"] == 2 and r["below_start_seeds"] == ""
    assert r["undefined_seeds"] == "seed 0: DEQ undefined at epoch 2 (γ̂_K 0.500)"
    assert r["gain_mean"] == pytest.approx(0.1)


def test_unchained_priors_have_no_rows() -> None:
    t = _study({0: 0.1, 1: 0.1, 2: 0.1})
    t = t[t["prior"] == "pnp"]
    assert start_gain_table(normalise_trials(t), 0.1).empty


def test_the_report_shows_the_start_gain(tmp_path) -> None:
    out = tmp_path / "r"
    metrics = write_report(_study({0: 0.2, 1: -0.25, 2: 0.0}), None, out, ReportConfig())
    g = pd.read_parquet(out / "start_gain.parquet")
    assert set(g["label"]) == {"DEQ K10", "rJFB K10 T25"}
    assert {r["label"]: r["below_start_seeds"] for r in metrics["start_gain"]} == {
        "DEQ K10": "1",
        "rJFB K10 T25": "",
    }
    md = (out / "ablation.md").read_text()
    section = md.split("## Against the start")[1].split("\n## ")[0]
    assert "**below its start on seed(s) 1**" in section
    assert "+0.20 / -0.25 / +0.00" in section
    assert np.isfinite(g["gain_mean"]).all()
