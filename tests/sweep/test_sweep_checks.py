"""The sweep stage refuses bad PnP weights before Ray or MLflow start.

A small study (tiny prepared data, a wavelet prior and a PnP prior loading
``models/denoiser.pt``) runs the real sweep stage (``python -m stages.sweep``) in a scratch
folder, as tests/e2e/test_bad_input.py does: with the weights file missing, of another architecture,
or for another channel count than the prepared data's, it must exit 2 with one line naming the
prior and the file, and write nothing (no ``mlflow.db``, no ``ray_results`` or lock file, no
``reports``). ``ray`` and ``mlflow`` are stand-ins that raise when imported, so the check provably
runs before either is touched; ``torch`` and ``deepinv`` (needed to load the weights) are real.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import assert_refused, run_stage, tiny_data, tree

STUDY: dict[str, Any] = {
    "data": tiny_data(patches_per_image=2),
    "pretrain": {"nc": 4, "nb": 1},  # the architecture the PnP prior's weights must have
    "priors": {
        "l1": {"type": "wavelet", "levels": 2, "step_size": 0.3},
        "pnp": {"type": "pnp", "weights": "models/denoiser.pt", "step_size": 0.5},
    },
    "train": {"epochs": 1, "batch_size": 2},
    "sweep": {
        "priors": ["l1"],
        "estimators": ["rjfb"],
        "depths": [2],
        "restarts": [0],
        "extra_trials": [{"prior": "pnp", "estimator": "rjfb", "depth": 1, "restarts": 0}],
    },
    "ray": {"num_cpus": 2},
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study's prepared data (gray: one channel), made once for the module."""
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare

    root = tmp_path_factory.mktemp("prepared")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    prepare(load_params(root / "params.yaml"), root / "data" / "prepared", progress=False)
    return root / "data" / "prepared"


def save_denoiser(path: Path, channels: int = 1, **arch: int) -> Path:
    import torch

    from pipeline.core.denoisers import build_denoiser

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_denoiser("drunet", channels, **{"nc": 4, "nb": 1, **arch}).state_dict(), path)
    return path


def study_folder(tmp_path: Path, prepared: Path) -> Path:
    cwd = tmp_path / "study"
    cwd.mkdir()
    (cwd / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    shutil.copytree(prepared, cwd / "data" / "prepared")
    return cwd


def missing(cwd: Path) -> None:
    (cwd / "models").mkdir()  # the pretrain stage never ran: no denoiser.pt


def other_architecture(cwd: Path) -> None:
    save_denoiser(cwd / "models" / "denoiser.pt", nc=6)


def other_channels(cwd: Path) -> None:
    save_denoiser(cwd / "models" / "denoiser.pt", channels=3)  # RGB weights, gray data


# name: (setup, regex the one-line message must match)
CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (missing, r"priors\.pnp: denoiser weights file '[^']*models/denoiser\.pt' does not"),
    "other-architecture": (
        other_architecture,
        r"priors\.pnp: denoiser weights '[^']*models/denoiser\.pt' do not match.*nc=6",
    ),
    "other-channels": (
        other_channels,
        r"priors\.pnp: denoiser weights '[^']*models/denoiser\.pt' do not match.*3 image channel",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_pnp_weights_stop_the_sweep_before_ray_and_mlflow(
    tmp_path: Path, prepared: Path, case: str
) -> None:
    setup, pattern = CASES[case]
    cwd = study_folder(tmp_path, prepared)
    setup(cwd)
    before = tree(cwd)
    result = run_stage("sweep", cwd, heavy_allowed=("torch", "deepinv"))
    assert_refused(result, pattern, before, cwd)


def test_good_weights_pass_the_check_for_the_prepared_channels(
    tmp_path: Path, prepared: Path
) -> None:
    from pipeline.study.config import load_params
    from pipeline.sweep.shipping import check_weights
    from pipeline.util.errors import ConfigError

    cwd = study_folder(tmp_path, prepared)
    save_denoiser(cwd / "models" / "denoiser.pt")
    cfg = load_params(cwd / "params.yaml")
    check_weights(cfg, cwd / "data" / "prepared")  # loads
    # a prior outside the sweep is not checked; a wavelet-only sweep imports nothing
    (cwd / "models" / "denoiser.pt").unlink()
    wavelet_only = {**STUDY, "sweep": {**STUDY["sweep"], "extra_trials": []}}
    (cwd / "params.yaml").write_text(yaml.safe_dump(wavelet_only, sort_keys=False))
    check_weights(load_params(cwd / "params.yaml"), cwd / "data" / "prepared")
    with pytest.raises(ConfigError, match=r"priors\.pnp: .*does not exist"):
        check_weights(cfg, cwd / "data" / "prepared")
