"""The study profiles (``profiles/*.yaml``) through the real CLI: ``rjfb check`` validates them and
``rjfb profile NAME`` applies one over params.yaml. CI has no GPU: this is what it can check of
the paper scale (the schema, the grid, the settings the README promises)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO, assert_one_line_error, run_module

from pipeline.study.config import load_params

PROFILES = REPO / "profiles"


@pytest.mark.parametrize(("name", "trials"), [("paper", 39), ("gpu-smoke", 9)])
def test_rjfb_check_validates_the_profile(name: str, trials: int) -> None:
    result = run_module("pipeline.cli", "check", "--params", f"profiles/{name}.yaml", cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"profiles/{name}.yaml: valid; {trials} trials" in result.stdout


def test_the_paper_profile_has_the_authors_settings() -> None:
    cfg = load_params(PROFILES / "paper.yaml")
    assert cfg.data.color == "rgb" and cfg.data.patch_size in (128, 256)
    assert cfg.data.degradation.kind == "blur" and cfg.data.degradation.blur_padding == "reflect"
    assert (cfg.pretrain.nc, cfg.pretrain.nb) == (64, 4)
    assert cfg.train.device == "auto" and cfg.train.restart_autocast == "bfloat16"
    assert cfg.train.seed_train_noise and cfg.train.init_jitter > 0
    assert len(cfg.sweep.seeds) >= 3
    assert 0 < cfg.ray.gpus_per_trial < 1
    wl = cfg.priors["wl12"]
    assert (wl.norm, wl.wavelet, wl.levels) == ("weighted_l12", "db4", 4)
    for name in ("pnp", "drunet_fb"):
        p = cfg.priors[name]
        assert (p.step_size, p.step_size_units) == (1.95, "1/L")
        assert p.per_layer_sigma and not p.learn_relaxation
        assert cfg.denoiser_arch(name) == {"nc": 64, "nb": 4, "residual": True}
    fb = cfg.priors["drunet_fb"]
    assert fb.train_denoiser and fb.denoiser_lr is None and fb.sigma_init_from == "pnp"
    assert not fb.learn_step_size and cfg.train_for("drunet_fb").lr == 5e-4
    names = {t.name for t in cfg.trials()}
    for prior in ("wl12", "pnp", "drunet_fb"):
        for seed in cfg.sweep.seeds:
            assert f"{prior}-rjfb-K10-T25-s{seed}" in names
            assert any(n.startswith(f"{prior}-deq") and n.endswith(f"-s{seed}") for n in names)


def test_the_smoke_profile_is_a_reduced_paper_profile() -> None:
    paper = yaml.safe_load((PROFILES / "paper.yaml").read_text())
    smoke = yaml.safe_load((PROFILES / "gpu-smoke.yaml").read_text())
    assert smoke["priors"].keys() == paper["priors"].keys()
    for name, prior in paper["priors"].items():  # the same models; only training is shorter
        keep = {k: v for k, v in prior.items() if k != "train"}
        assert {k: v for k, v in smoke["priors"][name].items() if k != "train"} == keep, name
    assert smoke["pretrain"]["nc"] == 64 and smoke["pretrain"]["nb"] == 4
    cfg = load_params(PROFILES / "gpu-smoke.yaml")
    assert len(cfg.trials()) < len(load_params(PROFILES / "paper.yaml").trials())
    assert cfg.train.epochs * (cfg.train.steps_per_epoch or 99) <= 4


def test_rjfb_profile_applies_a_profile_over_params_yaml(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = run_module("pipeline.cli", "profile", "paper", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "valid; 39 trials" in result.stdout
    assert (tmp_path / "params.yaml").read_bytes() == (PROFILES / "paper.yaml").read_bytes()
    assert (tmp_path / "params.yaml.bak").read_bytes() == (REPO / "params.yaml").read_bytes()
    listed = run_module("pipeline.cli", "profile", "--list", cwd=tmp_path)
    assert "paper:" in listed.stdout and "gpu-smoke:" in listed.stdout
    typo = run_module("pipeline.cli", "profile", "papr", cwd=tmp_path)
    assert_one_line_error(typo, r"unknown profile 'papr' \(did you mean 'paper'\?\)")
    assert (tmp_path / "params.yaml").read_bytes() == (PROFILES / "paper.yaml").read_bytes()
