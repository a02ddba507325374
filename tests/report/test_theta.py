"""θ distance to DEQ, its floors, the depth axis, restart gains, baselines, DEQ arms and
undefined gradient groups, on hand-made tables whose answers are known in closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.report import write_report
from pipeline.report.comparisons import baseline_table, restart_gain_table
from pipeline.report.configs import group_cos_min, undefined_groups, worst_group
from pipeline.report.plot_training import theta_figure
from pipeline.report.plots import theta_depth_figure, theta_depth_series
from pipeline.report.tables import history_for, normalise_history, normalise_trials
from pipeline.report.theta import horizon, theta_distance, total_depth
from pipeline.study.config import ReportConfig

CFG = ReportConfig()
N_IMG = 8
SEEDS = (0, 1, 2)
GAMMA = 0.98  # DEQ's γ̂: horizon 1/(1 − γ̂) = 50
LAM0 = 0.01  # λ's initial value (every seed: the jitter is part of inits_json only)
LAM_DEQ = 0.04  # what DEQ learns: log moves by log 4
W0, W_DEQ = [1.0, 1.0], [2.0, 0.5]  # band weights: DEQ moves log w by (log 2, −log 2)


def _row(prior: str, estimator: str, seed: int, **kw) -> dict:
    depth, restarts = kw.pop("depth", 1), kw.pop("restarts", 0)
    parts = [prior, estimator] + ([f"K{depth}", f"T{restarts}"] if estimator == "rjfb" else [])
    name = "-".join([*parts, f"s{seed}"])
    psnr = kw.pop("psnr", np.full(N_IMG, 26.0))
    theta = kw.pop("theta", {"lambda": LAM_DEQ, "weights": W_DEQ, "tau": 1.0})
    init = kw.pop("init", {"lambda": LAM0, "weights": W0, "tau": 1.0})
    row = {
        "trial_id": f"id-{name}",
        "name": name,
        "prior": prior,
        "prior_type": "wavelet",
        "estimator": estimator,
        "depth": depth,
        "restarts": restarts,
        "restart_tol": math.nan,
        "start": "y",
        "iterations": math.nan,
        "seed": seed,
        "status": "finished",
        "status_reason": "",
        "test_psnr": float(np.mean(psnr)),
        "test_psnr_per_image": list(map(float, psnr)),
        "test_psnr_input": 25.0,
        "test_psnr_input_per_image": [25.0] * N_IMG,
        "gamma_hat": GAMMA,
        "theta_json": json.dumps(theta),
        "inits_json": json.dumps({"overrides": {}, "theta": init}),
        "final_val_psnr": 26.0,
        "initial_val_psnr": 25.5,
        "scheme_key": "scheme-a",
        "epochs": 6.0,
        "seed_train_noise": 1.0,
    }
    row.update(kw)
    return row


def _study(extra: list[dict] | None = None) -> pd.DataFrame:
    rows = []
    for s in SEEDS:
        rows.append(_row("wl", "deq", s))
        # rJFB K1 T0: λ at 0.02 (halfway in log), weights at DEQ's: closed-form distance
        rows.append(
            _row(
                "wl",
                "rjfb",
                s,
                theta={"lambda": 0.02, "weights": W_DEQ, "tau": 1.0},
                psnr=np.full(N_IMG, 25.9),
            )
        )
        rows.append(_row("wl", "rjfb", s, depth=5, restarts=5, psnr=np.full(N_IMG, 26.3)))
        rows.append(_row("wl", "rjfb", s, depth=5, restarts=0, psnr=np.full(N_IMG, 26.0)))
        # floors: the same scheme, DEQ only; another noise draw (λ at 0.05) and more epochs
        rows.append(
            _row("wl_noise", "deq", s, theta={"lambda": 0.05, "weights": W_DEQ, "tau": 1.0},
                 seed_train_noise=0.0)
        )  # fmt: skip
        rows.append(
            _row("wl_long", "deq", s, theta={"lambda": 0.045, "weights": W_DEQ, "tau": 1.0},
                 epochs=12.0)
        )  # fmt: skip
    return pd.DataFrame(rows + (extra or []))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict, pd.DataFrame]:
    out = tmp_path_factory.mktemp("theta")
    metrics = write_report(_study(), None, out, CFG)
    return out, metrics, pd.read_parquet(out / "configs.parquet")


def _cfg(c: pd.DataFrame, prior: str, label: str) -> pd.Series:
    r = c[(c["prior"] == prior) & (c["label"] == label)]
    assert len(r) == 1, (prior, label, list(c["label"]))
    return r.iloc[0]


# ----------------------------------------------------------------------------- θ distance


def test_theta_distance_of_deq_to_itself_is_zero() -> None:
    deq = {"lambda": [0.04, 0.03], "weights": W_DEQ, "sigma": 0.1, "relaxation": 0.7}
    init = {"lambda": [0.01, 0.01], "weights": W0, "sigma": 0.05, "relaxation": 0.5}
    d = theta_distance(deq, deq, init)
    assert all(d[g] == 0.0 for g in ("all", "lambda", "weights", "sigma", "relaxation"))


def test_a_known_theta_difference_is_given_back() -> None:
    init = {"lambda": LAM0, "weights": W0, "tau": 1.0}
    deq = {"lambda": LAM_DEQ, "weights": W_DEQ, "tau": 1.5}
    est = {"lambda": 0.02, "weights": [4.0, 0.5], "tau": 0.5}
    d = theta_distance(est, deq, init, free={"tau": "FB ignores τ"})
    # λ: |log 0.02 − log 0.04| / |log 0.04 − log 0.01| = log 2 / log 4
    assert d["lambda"] == pytest.approx(0.5)
    # weights: ‖(log 2, 0)‖ / ‖(log 2, −log 2)‖ = 1/√2
    assert d["weights"] == pytest.approx(1 / math.sqrt(2))
    # τ apart: |log 0.5 − log 1.5| / |log 1.5|, and not in "all"
    assert d["tau"] == pytest.approx(math.log(3) / math.log(1.5))
    l2 = math.log(2)
    assert d["all"] == pytest.approx(math.sqrt(l2**2 + l2**2) / math.sqrt(4 * l2**2 + 2 * l2**2))


def test_one_sigma_broadcasts_to_the_deq_per_layer_sigmas_and_relaxation_is_logit() -> None:
    init = {"sigma": [0.1, 0.1], "relaxation": 0.5}
    deq = {"sigma": [0.2, 0.4], "relaxation": 0.75}
    d = theta_distance({"sigma": 0.2, "relaxation": 0.5}, deq, init)
    assert d["sigma"] == pytest.approx(math.log(2) / math.sqrt(math.log(2) ** 2 + math.log(4) ** 2))
    assert d["relaxation"] == pytest.approx(1.0)  # logit 0.5 = 0: as far as DEQ moved


def test_configs_carry_theta_distance_with_floors_and_depth(report) -> None:
    out, metrics, c = report
    # the floor priors are not priors of the report
    assert set(c["prior"]) == {"wl"} and metrics["n_floor_trials"] == 6
    deq = _cfg(c, "wl", "DEQ")
    assert deq["theta_dist_all_mean"] == 0.0 and deq["verdict"] == "reference"
    one = _cfg(c, "wl", "rJFB K1 T0")
    l2, l4 = math.log(2), math.log(4)
    want = l2 / math.sqrt(l4**2 + 2 * l2**2)  # λ off by log 2; DEQ moved λ and both weights
    assert one["theta_dist_all_mean"] == pytest.approx(want)
    assert one["theta_dist_all_ci_low"] == pytest.approx(want)  # the same on every seed
    assert one["theta_dist_lambda_mean"] == pytest.approx(0.5)
    assert one["n_seeds_theta"] == 3
    # floors beside every row: DEQ vs DEQ with other noise (λ 0.05), trained longer (λ 0.045)
    noise = math.log(0.05 / 0.04) / math.sqrt(l4**2 + 2 * l2**2)
    longer = math.log(0.045 / 0.04) / math.sqrt(l4**2 + 2 * l2**2)
    for _, r in c.iterrows():
        assert r["theta_dist_all_floor_noise"] == pytest.approx(noise)
        assert r["theta_dist_all_floor_longer"] == pytest.approx(longer)
    # depth axis: (T+1)·K and the horizon 1/(1 − γ̂) of DEQ's scheme
    k5 = _cfg(c, "wl", "rJFB K5 T5")
    assert k5["total_depth"] == 30 and k5["horizon"] == pytest.approx(50.0)
    assert k5["depth_over_horizon"] == pytest.approx(0.6)
    assert math.isnan(deq["total_depth"])
    md = (out / "ablation.md").read_text()
    assert "## Learned θ against DEQ's (headline)" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("- **Learned θ against DEQ's"))
    assert f"rJFB K1 T0 (depth 1, 0.02 horizons) {want:.2f}" in line
    assert f"another training noise {noise:.2f}" in line


def test_total_depth_and_horizon_closed_forms() -> None:
    assert total_depth({"estimator": "rjfb", "depth": 10, "restarts": 25}) == 260
    assert total_depth({"estimator": "unrolled", "iterations": 20}) == 20
    assert math.isnan(total_depth({"estimator": "deq", "depth": 1}))
    assert horizon(0.98) == pytest.approx(50.0)
    assert math.isnan(horizon(1.0)) and math.isnan(horizon(float("nan")))


def _data_line(ax, label: str):
    """The data line of the errorbar series labelled ``label``."""
    return next(c.lines[0] for c in ax.containers if c.get_label() == label)


def test_headline_figure_draws_the_configs_numbers(report) -> None:
    _, _, c = report
    t = normalise_trials(_study().query("prior == 'wl'"))
    fig = theta_depth_figure(c, t, 0.1)
    top, bottom = fig.axes[0], fig.axes[1]
    series = theta_depth_series(c, "wl")["theta"]
    line = _data_line(top, "θ distance (identifiable groups)")
    assert list(line.get_xdata()) == pytest.approx([1 / 50, 5 / 50, 30 / 50])
    assert list(line.get_ydata()) == pytest.approx(series["mean"].tolist())
    floors = sorted(ln.get_ydata()[0] for ln in top.lines if "DEQ vs DEQ" in ln.get_label())
    assert floors == pytest.approx(
        sorted([c["theta_dist_all_floor_noise"].iloc[0], c["theta_dist_all_floor_longer"].iloc[0]])
    )
    psnr = _data_line(bottom, "ΔPSNR at equilibrium")
    assert list(psnr.get_ydata()) == pytest.approx([-0.1, 0.0, 0.3])
    assert top.get_xscale() == "log"


# ----------------------------------------------------------------------------- restart gain


def test_restart_gain_is_paired_per_prior_and_k(report) -> None:
    out, _, _ = report
    g = pd.read_parquet(out / "restart_gain.parquet")
    assert len(g) == 1
    r = g.iloc[0]
    assert (r["prior"], r["depth"], r["restarts"], r["total_depth"]) == ("wl", 5, 5, 30)
    # 26.3 − 26.0 on every (image, seed): an exact interval, 0.3 dB > t: better
    assert r["gain_mean"] == pytest.approx(0.3) and r["gain_ci_low"] == pytest.approx(0.3)
    assert (r["n_pairs"], r["n_seeds"], r["verdict"]) == (3 * N_IMG, 3, "better")
    md = (out / "ablation.md").read_text()
    assert "## Restart gain" in md
    assert "K5 T5 vs T0: better +0.300 dB [+0.300, +0.300]" in md
    assert "on average" not in md.split("## Summary")[1].split("## Methods")[0]


def test_restart_gain_with_noise_gives_a_small_difference() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for s in SEEDS:
        rows.append(_row("p", "rjfb", s, depth=5, restarts=0, psnr=np.full(N_IMG, 26.0)))
        rows.append(
            _row("p", "rjfb", s, depth=5, restarts=5,
                 psnr=26.09 + rng.normal(0, 0.1, N_IMG))
        )  # fmt: skip
    r = restart_gain_table(normalise_trials(pd.DataFrame(rows)), 0.1).iloc[0]
    # the interval excludes 0 and reaches beyond t, its point estimate is inside ±t
    assert 0 < r["gain_ci_low"] < r["gain_mean"] < 0.1 < r["gain_ci_high"]
    assert r["verdict"] == "small difference"


# ----------------------------------------------------------------------------- baselines


def test_a_deq_below_the_observation_is_not_a_baseline_and_its_verdicts_are_withheld(
    tmp_path,
) -> None:
    rows = []
    for s in SEEDS:
        rows.append(_row("good", "deq", s))
        rows.append(_row("good", "rjfb", s, psnr=np.full(N_IMG, 25.0)))
        rows.append(_row("bad", "deq", s, psnr=np.full(N_IMG, 24.0), scheme_key="b"))
        rows.append(_row("bad", "rjfb", s, psnr=np.full(N_IMG, 22.0), scheme_key="b"))
    metrics = write_report(pd.DataFrame(rows), None, tmp_path, CFG)
    b = pd.read_parquet(tmp_path / "baselines.parquet").set_index("prior")
    assert b.loc["good", "is_baseline"] and not b.loc["bad", "is_baseline"]
    assert b.loc["bad", "delta_vs_observation_mean"] == pytest.approx(-1.0)
    assert b.loc["bad", "verdict_vs_observation"] == "worse"
    assert b.loc["good", "verdict_vs_observation"] == "better"
    assert b.loc["bad", "best_other_prior"] == "good"
    assert b.loc["bad", "delta_vs_best_other_mean"] == pytest.approx(-2.0)
    assert b.loc["good", "deq_test_psnr_mean"] == pytest.approx(26.0)
    c = pd.read_parquet(tmp_path / "configs.parquet")
    bad = c[(c["prior"] == "bad") & (c["estimator"] == "rjfb")].iloc[0]
    assert bad["verdict"] == "worse" and not bad["counted"]
    assert "withheld" in bad["note"]
    assert metrics["verdict_counts"]["worse"] == 1  # good's only: bad's is withheld
    assert metrics["verdict_counts_withheld"]["worse"] == 1
    assert metrics["not_a_baseline_priors"] == ["bad"]
    md = (tmp_path / "ablation.md").read_text()
    assert md.index("## Baselines") < md.index("## Summary")
    assert "**Prior bad is not a baseline**" in md
    assert "**worse** (withheld)" in md


# ----------------------------------------------------------------------------- DEQ arms


def test_undefined_deq_uses_the_jacobian_regularised_arm_or_says_so(tmp_path) -> None:
    rows = []
    for s in SEEDS:
        # prior a: plain DEQ undefined on seed 0, a jac_reg arm there on every seed
        rows.append(_row("a", "deq", s, deq_undefined_epoch=3.0 if s == 0 else math.nan,
                         jac_reg=0.0, psnr=np.full(N_IMG, 20.0 if s == 0 else 26.0)))  # fmt: skip
        rows.append(_row("a", "deq", s, jac_reg=0.5, psnr=np.full(N_IMG, 26.2)))
        rows.append(_row("a", "rjfb", s, psnr=np.full(N_IMG, 26.2)))
        # prior b: plain DEQ undefined, no regularised arm
        rows.append(_row("b", "deq", s, deq_undefined_epoch=2.0, jac_reg=0.0, scheme_key="b"))
        rows.append(_row("b", "rjfb", s, scheme_key="b"))
    metrics = write_report(pd.DataFrame(rows), None, tmp_path, CFG)
    c = pd.read_parquet(tmp_path / "configs.parquet")
    # the baselines' PSNR: the jac arm on seed 0 (26.2), plain DEQ on seeds 1, 2 (26.0)
    assert metrics["priors"]["a"]["deq_test_psnr"] == pytest.approx(26.2 / 3 + 52 / 3)
    assert metrics["priors"]["b"]["deq_test_psnr"] is None
    a = _cfg(c, "a", "rJFB K1 T0")
    assert a["deq_arm"] == "DEQ jac_reg=0.5 (seed 0); DEQ (seed 1, 2)"
    # seed 0 against the jac arm (0), seeds 1, 2 against plain DEQ (+0.2)
    assert a["delta_psnr_mean"] == pytest.approx(0.4 / 3)
    b = _cfg(c, "b", "rJFB K1 T0")
    assert b["deq_arm"] == "none: DEQ undefined at epoch 2"
    assert b["verdict"] == "inconclusive" and math.isnan(b["delta_psnr_mean"])
    base = pd.read_parquet(tmp_path / "baselines.parquet").set_index("prior")
    assert base.loc["b", "status"] == "DEQ undefined at epoch 2"
    md = (tmp_path / "ablation.md").read_text()
    assert "DEQ `b-deq-s0`: **DEQ undefined at epoch 2**" in md
    assert "DEQ baseline `b-deq-s0`" not in md


def test_tables_without_the_new_columns_are_plain_deq(report) -> None:
    old = _study().drop(
        columns=["scheme_key", "epochs", "seed_train_noise", "initial_val_psnr",
                 "test_psnr_input_per_image"]
    )  # fmt: skip
    b = baseline_table(normalise_trials(old[old["prior"] == "wl"]), 0.1)
    assert b.iloc[0]["deq_arm"] == "DEQ" and b.iloc[0]["is_baseline"]
    assert b.iloc[0]["delta_vs_observation_mean"] == pytest.approx(1.0)  # scalar observation


# ----------------------------------------------------------------------------- gradients


def _groups(**groups: dict) -> str:
    return json.dumps(groups)


def test_a_zero_deq_group_gradient_is_undefined_not_minus_one() -> None:
    # an older table: wavelet FB's τ recorded with cosine −1 against DEQ's zero τ gradient
    rows = pd.DataFrame(
        [
            {
                "prior_type": "wavelet",
                "grad_cos_min_group_vs_deq": -1.0,
                "grad_groups_json": _groups(
                    tau={"cos": -1.0, "rel_err": 178.0, "sign_agree": 0.0},
                    **{"lambda": {"cos": 0.9, "rel_err": 0.2, "sign_agree": 1.0}},
                ),
            },
            {  # a newer one: null cosine, norms recorded; a pnp σ group numerically zero
                "prior_type": "pnp",
                "grad_cos_min_group_vs_deq": 0.5,
                "grad_groups_json": _groups(
                    sigma={
                        "cos": None,
                        "rel_err": 40.0,
                        "sign_agree": None,
                        "norm": 4.0,
                        "ref_norm": 0.1,
                    },
                    tau={"cos": 0.5, "rel_err": 0.5, "sign_agree": 1.0, "norm": 1, "ref_norm": 1},
                ),
            },
        ]
    )
    assert group_cos_min(rows.iloc[0]) == pytest.approx(0.9)  # τ left out, not −1
    assert group_cos_min(rows.iloc[1]) == pytest.approx(0.5)
    name, cos, _ = worst_group(rows.iloc[:1])
    assert (name, cos) == ("lambda", pytest.approx(0.9))
    text, ratio = undefined_groups(rows)
    assert "tau: undefined (FB's fixed point does not depend on τ" in text
    assert "sigma: undefined (DEQ's gradient is numerically zero; ‖g‖/‖g_DEQ‖ 40)" in text
    assert ratio == pytest.approx(40.0)


def test_training_that_made_it_worse_is_flagged(tmp_path) -> None:
    rows = []
    for s in SEEDS:
        rows.append(_row("w", "deq", s))
        rows.append(_row("w", "rjfb", s, initial_val_psnr=26.5, final_val_psnr=26.0))
    write_report(pd.DataFrame(rows), None, tmp_path, CFG)
    c = pd.read_parquet(tmp_path / "configs.parquet")
    r = _cfg(c, "w", "rJFB K1 T0")
    assert r["training_worsened"] and r["val_psnr_gain_mean"] == pytest.approx(-0.5)
    assert not _cfg(c, "w", "DEQ")["training_worsened"]
    md = (tmp_path / "ablation.md").read_text()
    assert "**Training made it worse**" in md and "w rJFB K1 T0 (-0.500 dB from 26.50 dB)" in md


def test_a_weak_denoiser_is_stated_first(tmp_path) -> None:
    t = _study()
    write_report(t, None, tmp_path / "weak", CFG, denoiser={"allow_weak": True})
    write_report(t, None, tmp_path / "ok", CFG, denoiser={"allow_weak": False})
    weak = (tmp_path / "weak" / "ablation.md").read_text()
    assert weak.index("**The PnP denoiser is weak**") < weak.index("## Baselines")
    assert "denoiser is weak" not in (tmp_path / "ok" / "ablation.md").read_text()


def test_theta_trajectories_start_from_the_initial_theta() -> None:
    from pipeline.report.plots import initial_value, theta_trajectory

    r = pd.Series(_row("wl", "rjfb", 1))
    g = pd.DataFrame({"epoch": [1.0, 2.0], "theta.lambda": [0.02, 0.03], "theta.weights.1": [1, 2]})
    x, y = theta_trajectory(r, g, "theta.lambda")
    assert list(x) == [0.0, 1.0, 2.0] and list(y) == pytest.approx([LAM0, 0.02, 0.03])
    assert initial_value(r, "theta.weights.1") == W0[1]
    assert math.isnan(initial_value(r, "theta.sigma.0"))  # not recorded: no epoch-0 point
    x, _ = theta_trajectory(pd.Series({"inits_json": "{}"}), g, "theta.lambda")
    assert list(x) == [1.0, 2.0]
    # the report draws them (one history row per trial and epoch)
    t = _study()
    hist = pd.DataFrame(
        [
            {"trial_id": tid, "epoch": e, "elapsed_seconds": e, "val_psnr": 26.0,
             "theta.lambda": 0.02 * e}
            for tid in t["trial_id"]
            for e in (1.0, 2.0)
        ]
    )  # fmt: skip
    nt = normalise_trials(t)
    h, keys = history_for(nt, normalise_history(hist))
    fig = theta_figure(nt, h, keys)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [
        f"{p}: lambda" for p in ("wl", "wl_long", "wl_noise")
    ]
    lines = [ln for ax in panels for ln in ax.get_lines()]
    assert len(lines) == len(t)  # one line per trial, each from its initial λ at epoch 0
    for ln in lines:
        assert list(ln.get_xdata()) == [0.0, 1.0, 2.0]
        assert list(ln.get_ydata()) == pytest.approx([LAM0, 0.02, 0.04])


def test_a_one_entry_worst_group_is_said_to_be_a_sign(tmp_path) -> None:
    groups = _groups(
        **{"lambda": {"cos": -1.0, "rel_err": 1.5, "sign_agree": 0.0}},
        weights={"cos": 0.8, "rel_err": 0.3, "sign_agree": 1.0},
    )
    rows = [_row("w", "deq", s) for s in SEEDS]
    rows += [_row("w", "rjfb", s, grad_groups_json=groups) for s in SEEDS]
    write_report(pd.DataFrame(rows), None, tmp_path, CFG)
    r = _cfg(pd.read_parquet(tmp_path / "configs.parquet"), "w", "rJFB K1 T0")
    assert (r["worst_group"], r["worst_group_cos"], r["worst_group_entries"]) == ("lambda", -1, 1)
    md = (tmp_path / "ablation.md").read_text()
    assert "lambda (-1.000, 1.50e+00) one entry: the cosine is a sign" in md
    assert "is lambda at rJFB K1 T0, mean cosine -1.000: a one-entry group" in md


def test_a_deq_only_prior_that_trains_otherwise_is_not_a_floor() -> None:
    from pipeline.report.theta import split_floor_trials

    t = normalise_trials(_study())
    other_lr = t[t["prior"] == "wl_noise"].assign(prior="wl_lr", seed_train_noise=1.0)
    main, floor = split_floor_trials(pd.concat([t, other_lr], ignore_index=True))
    assert set(floor["prior"]) == {"wl_noise", "wl_long"}
    assert "wl_lr" in set(main["prior"])


def test_a_parameter_nobody_learns_leaves_the_distance_defined() -> None:
    # PnP with its relaxation fixed at 1 (logit: NaN): σ alone decides, as if it were absent
    init = {"sigma": [0.05, 0.05], "tau": 1.8, "relaxation": 1.0}
    deq = {"sigma": [0.1, 0.05], "tau": 1.8, "relaxation": 1.0}
    trial = {"sigma": [0.05, 0.05], "tau": 1.8, "relaxation": 1.0}
    d = theta_distance(trial, deq, init)
    assert d["sigma"] == pytest.approx(1.0) and d["all"] == pytest.approx(1.0)
    assert math.isnan(d["relaxation"]) and math.isnan(d["tau"])  # DEQ did not move them


def test_the_horizon_of_a_per_layer_block_is_per_step() -> None:
    # a 10-block contracting by 0.6 (one step of layer 0 above 1): per step 0.6 ** 0.1
    import pandas as pd

    from pipeline.report.configs import step_rate

    r = pd.Series({"depth": 10, "gamma_hat": 1.04, "gamma_hat_k": 0.6})
    assert step_rate(r) == pytest.approx(0.6**0.1)
    assert horizon(step_rate(r)) == pytest.approx(1 / (1 - 0.6**0.1))
    assert step_rate(pd.Series({"depth": 1, "gamma_hat": 0.98, "gamma_hat_k": 0.98})) == 0.98


def test_tau_is_drawn_apart_only_where_the_fixed_point_ignores_it(report) -> None:
    _, _, c = report
    t = normalise_trials(_study().query("prior == 'wl'"))
    c = c.assign(theta_dist_tau_mean=0.5, theta_dist_tau_ci_low=0.4, theta_dist_tau_ci_high=0.6)
    apart = "τ (not identifiable at equilibrium)"

    def labels(trials: pd.DataFrame) -> list[str]:
        fig = theta_depth_figure(c, trials, 0.1)
        return [ln.get_label() for ln in fig.axes[0].get_lines()] + [
            ct.get_label() for ct in fig.axes[0].containers
        ]

    assert apart in labels(t.assign(prior_type="wavelet"))  # FB: τ does not move x*
    assert apart not in labels(t.assign(prior_type="pnp"))  # PnP: τ is one of the groups
