"""Issue 12 in the study layer: the new prior/degradation options validate, a wavelet trial on a
reflect-padded per-channel RGB blur with weighted ℓ1,2 and bounded τ runs and records the new
columns, seeds change the training noise and the initialisation (and the same seed repeats),
and σ chains from another prior's results."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import TINY

from pipeline.study.chain import chained_inits, phases
from pipeline.study.config import TrialSpec, parse_params
from pipeline.study.data import prepare
from pipeline.study.tables import HISTORY_COLUMNS, TRIAL_COLUMNS
from pipeline.study.trial import Trial, run_trial
from pipeline.util.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

BLUR_RGB = {
    "kind": "blur",
    "blur_kernel": "line",
    "blur_size": 5,
    "blur_angle": [0.0, 60.0, 120.0],
    "blur_padding": "reflect",
    "noise_sigma": [0.02, 0.05, 0.1],
}
L12 = {
    "type": "wavelet",
    "norm": "weighted_l12",
    "group": "bands",
    "wavelet": "db4",
    "levels": 2,
    "reg_init": 0.01,
    "step_size": 1.9,
    "step_size_units": "1/L",
    "learn_step_size": True,
    "degradation": BLUR_RGB,
    "train": {"epochs": 2, "steps_per_epoch": 2, "eval_tol": 1e-4, "eval_max_iter": 200},
}


def raw_study(**priors: dict) -> dict:
    raw = copy.deepcopy(TINY)
    raw["data"]["color"] = "rgb"
    raw["priors"].update(priors)
    return raw


def test_new_options_validate_and_are_checked() -> None:
    study = parse_params(raw_study(l12=L12))
    deg = study.priors["l12"].degradation
    assert deg.blur_angle == [0.0, 60.0, 120.0] and deg.blur_padding == "reflect"
    bad = raw_study(l12={**L12, "degradation": {**BLUR_RGB, "noise_sigma": [0.1, 0.2]}})
    with pytest.raises(ConfigError, match=r"noise_sigma: one value per channel"):
        parse_params(bad)
    with pytest.raises(ConfigError, match=r"group: applies to norm weighted_l12"):
        parse_params(raw_study(l1b={"type": "wavelet", "group": "channels"}))
    with pytest.raises(ConfigError, match=r"step_size_units"):
        parse_params(raw_study(l12={**L12, "step_size_units": "L"}))
    pnp = {"type": "pnp", "step_size": 1.95, "step_size_units": "1/L", "learn_relaxation": False}
    chained = {**pnp, "train_denoiser": True, "denoiser_lr": None, "sigma_init_from": "pnp"}
    study = parse_params(raw_study(pnp=pnp, fb=chained))
    assert study.priors["fb"].denoiser_lr is None
    with pytest.raises(ConfigError, match=r"sigma_init_from.*did you mean 'pnp'"):
        parse_params(raw_study(pnp=pnp, fb={**chained, "sigma_init_from": "pn"}))
    raw = raw_study(l12=L12)
    raw["train"].update(init_jitter=0.1, seed_train_noise=True)
    assert parse_params(raw).train.init_jitter == 0.1


@pytest.fixture(scope="module")
def rgb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgb")
    prepare(parse_params(raw_study()).with_root(root), root / "prepared", progress=False)
    return root


def test_weighted_l12_blur_trial_records_the_new_columns(rgb_root: Path) -> None:
    study = parse_params(raw_study(l12=L12)).with_root(rgb_root)
    spec = TrialSpec(prior="l12", estimator="rjfb", depth=2, restarts=1)
    result = run_trial(study, spec, rgb_root / "prepared")
    assert result.status == "finished", result.reason
    m = result.metrics
    for key in ("test_psnr_1", "test_psnr_k", "test_psnr_at_depth", "test_psnr",
                "grad_cos_min_group_vs_deq", "grad_sign_agree_vs_deq", "gamma_hat_k",
                "probe_ref_residual", "probe_ref_backward_residual"):  # fmt: skip
        assert math.isfinite(m[key]), key
        assert key in TRIAL_COLUMNS
    for key in ("grad_cos_min_group_vs_deq", "grad_sign_agree_vs_deq", "gamma_hat_k"):
        assert key in HISTORY_COLUMNS and key in result.history[-1]
    assert "backward_unconverged_frac" not in m  # DEQ trials only
    cols = result.json_columns
    assert len(cols["test_psnr_1_per_image"]) == len(cols["test_psnr_k_per_image"]) == 4
    assert len(cols["test_psnr_at_depth_per_image"]) == 4
    at_depth = cols["test_psnr_at_depth_per_image"]
    assert sum(at_depth) / len(at_depth) == pytest.approx(m["test_psnr_at_depth"])
    assert set(cols["grad_groups_json"]) == {"lambda", "tau", "weights", "scales"}
    assert set(cols["grad_groups_json"]["weights"]) == {
        "cos",
        "rel_err",
        "sign_agree",
        "norm",
        "ref_norm",
    }
    assert "undefined" in cols["grad_groups_json"]["tau"]  # FB's fixed point ignores τ
    json.dumps(cols)  # JSON-safe
    # τ starts at 1.9/L, L measured on the reflect blur, and stays below 2/L
    trial = Trial(study, spec, rgb_root / "prepared")
    L = trial.lipschitz
    assert L > 1.0  # reflect padding: ‖AᵀA‖ above the kernel's mass
    assert trial.initial_theta["tau"] == pytest.approx(1.9 / L, rel=1e-5)
    assert result.theta["tau"] < 2 / L
    assert trial.train.kernel.shape == (1, 3, 5, 5)


def test_deq_trial_records_backward_unconverged_frac(rgb_root: Path) -> None:
    study = parse_params(raw_study(l12=L12)).with_root(rgb_root)
    result = run_trial(study, TrialSpec(prior="l12", estimator="deq"), rgb_root / "prepared")
    frac = result.metrics["backward_unconverged_frac"]
    assert 0.0 <= frac <= 1.0


def test_seed_changes_training_noise_and_init_and_repeats(rgb_root: Path) -> None:
    raw = raw_study(l12=L12)
    raw["train"].update(init_jitter=0.1, seed_train_noise=True)
    study = parse_params(raw).with_root(rgb_root)
    trials = {
        s: Trial(
            study, TrialSpec(prior="l12", estimator="rjfb", depth=2, seed=s), rgb_root / "prepared"
        )
        for s in (0, 1)
    }
    again = Trial(study, TrialSpec(prior="l12", estimator="rjfb", depth=2, seed=1),
                  rgb_root / "prepared")  # fmt: skip
    a, b = trials[0], trials[1]
    assert not torch.equal(a.train.observed, b.train.observed)  # per-seed training noise
    assert torch.equal(a.train.clean, b.train.clean)
    assert torch.equal(a.test.observed, b.test.observed)  # val/test fixed
    assert torch.equal(a.val.observed, b.val.observed)
    assert a.initial_theta["lambda"] != b.initial_theta["lambda"]  # jittered init
    assert again.initial_theta == b.initial_theta
    assert torch.equal(again.train.observed, b.train.observed)
    # the jitter is log-normal around the configured value: |log ratio| ~ 0.1
    assert abs(math.log(b.initial_theta["lambda"] / 0.01)) < 0.5


def test_chained_sigma_init_reads_the_source_results() -> None:
    pnp = {"type": "pnp", "step_size": 1.95, "step_size_units": "1/L", "learn_relaxation": False,
           "per_layer_sigma": True}  # fmt: skip
    fb = {**pnp, "train_denoiser": True, "denoiser_lr": None, "sigma_init_from": "pnp"}
    raw = raw_study(pnp=pnp, fb=fb)
    raw["sweep"] = {
        "priors": ["pnp", "fb"],
        "estimators": ["deq", "rjfb"],
        "depths": [3],
        "restarts": [0],
        "seeds": [0, 1],
    }
    study = parse_params(raw)
    first, second = phases(study)
    assert {t.prior for t in first} == {"pnp"} and {t.prior for t in second} == {"fb"}
    table = [
        {"name": "pnp-deq-K3-s0", "prior": "pnp", "estimator": "deq", "depth": 3, "restarts": 0,
         "seed": 0, "status": "finished", "theta_json": json.dumps({"sigma": [0.1, 0.2, 0.3]})},
        {"name": "pnp-rjfb-K10-T25-s1", "prior": "pnp", "estimator": "rjfb", "depth": 10,
         "restarts": 25, "seed": 1, "status": "finished",
         "theta_json": json.dumps({"sigma": 0.04})},
        {"name": "pnp-deq-s1", "prior": "pnp", "estimator": "deq", "depth": 1, "restarts": 0,
         "seed": 1, "status": "diverged", "theta_json": json.dumps({"sigma": 0.9})},
    ]  # fmt: skip
    inits = chained_inits(study, table)
    assert set(inits) == {t.name for t in second}
    for t in second:
        got = inits[t.name]
        if t.seed == 0:  # the DEQ trial of the same seed
            assert got == {"sigma_init": [0.1, 0.2, 0.3], "sigma_init_from": "pnp-deq-K3-s0"}
        else:  # its DEQ diverged: the K=10, T=25 rjfb trial
            assert got == {"sigma_init": [0.04], "sigma_init_from": "pnp-rjfb-K10-T25-s1"}
    assert chained_inits(study, []) == {}


def test_chained_init_reaches_the_scheme_and_the_single_adam_group(rgb_root: Path) -> None:
    from pipeline.core.denoisers import build_denoiser

    (rgb_root / "models").mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(build_denoiser("drunet", 3, nc=4, nb=1).state_dict(),
               rgb_root / "models" / "dn.pt")  # fmt: skip
    pnp = {"type": "pnp", "weights": "models/dn.pt", "step_size": 1.95, "step_size_units": "1/L",
           "learn_relaxation": False, "per_layer_sigma": True, "sigma_init": 0.05}  # fmt: skip
    fb = {**pnp, "train_denoiser": True, "denoiser_lr": None, "sigma_init_from": "pnp",
          "train": {"lr": 5e-4}}  # fmt: skip
    study = parse_params(raw_study(pnp=pnp, fb=fb)).with_root(rgb_root)
    spec = TrialSpec(prior="fb", estimator="rjfb", depth=3)
    trial = Trial(study, spec, rgb_root / "prepared", inits={"sigma_init": [0.1, 0.2, 0.3]})
    assert trial.initial_theta["sigma"] == pytest.approx([0.1, 0.2, 0.3], rel=1e-5)
    assert trial.initial_theta["tau"] == pytest.approx(1.95, rel=1e-5)  # denoising: L = 1
    assert len(trial.optimizer.param_groups) == 1
    assert trial.optimizer.param_groups[0]["lr"] == 5e-4
    other = Trial(study, spec, rgb_root / "prepared", inits={"sigma_init": [0.1, 0.4]})
    # another depth at the source: the geometric mean for every layer
    assert other.initial_theta["sigma"] == pytest.approx([0.2] * 3, rel=1e-5)
