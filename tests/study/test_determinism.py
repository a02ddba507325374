"""Two runs of the same trial on CPU with the same seed give identical results.

``run_trial`` runs twice in this process on one tiny prepared set (as a sweep runs it: one
thread); every metric, every history row, θ and the per-image PSNRs must be equal to the last
bit, timing fields aside. The trials chosen use every source of randomness a trial has: the
batch order (a seeded generator), warm starts (the per-sample bank), random initial weights
(a DRUNet built from the seeded global RNG) and the probes (power iteration with a fixed seed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pipeline.study.phases import PHASE_COLUMNS

TIMING = {"elapsed_seconds", "seconds_per_step", "train_seconds", *PHASE_COLUMNS}

STUDY: dict[str, Any] = {
    "data": {
        "source": "bundled",
        "seed": 0,
        "patch_size": 16,
        "patches_per_image": 3,
        "train_images": 2,
        "val_images": 1,
        "test_images": 1,
        "degradation": {"kind": "inpainting", "mask_rate": 0.7, "noise_sigma": 0.05},
    },
    "priors": {
        "wl1": {"type": "wavelet", "norm": "weighted_l1", "levels": 2, "step_size": 0.5},
        "pnp": {"type": "pnp", "denoiser": "drunet", "nc": 4, "nb": 1, "sigma_init": 0.05},
    },
    "train": {
        "epochs": 2,
        "batch_size": 2,
        "probe_batch_size": 2,
        "lr": 0.05,
        "eval_max_iter": 30,
    },
    "sweep": {
        "priors": ["wl1"],
        "estimators": ["rjfb"],
        "depths": [2],
        "restarts": [1],
        "deq": {"max_iter": 30, "backward_max_iter": 30},
    },
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.study.config import parse_params
    from pipeline.study.data import prepare

    root = tmp_path_factory.mktemp("determinism")
    cfg = parse_params(STUDY).with_root(root)
    return cfg, prepare(cfg, root / "prepared", progress=False)


def strip_timing(row: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in row.items() if k not in TIMING}


def run(cfg, prepared: Path, spec) -> Any:
    """One trial as a sweep runs it (one thread), leaving this process's thread count alone."""
    import torch

    from pipeline.study.trial import run_trial

    threads = torch.get_num_threads()
    try:
        return run_trial(cfg, spec, prepared, threads=1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "trial",
    [
        {"prior": "wl1", "estimator": "rjfb", "depth": 2, "restarts": 1, "start": "warm"},
        {"prior": "pnp", "estimator": "deq", "seed": 3},
    ],
    ids=["wavelet-rjfb-warm", "drunet-deq"],
)
def test_same_seed_same_metrics(prepared, trial: dict[str, Any]) -> None:
    from pipeline.study.config import TrialSpec

    cfg, folder = prepared
    spec = TrialSpec.model_validate(trial)
    first, second = run(cfg, folder, spec), run(cfg, folder, spec)
    assert first.status == second.status == "finished", (first.reason, second.reason)
    assert len(first.history) == STUDY["train"]["epochs"]
    a, b = strip_timing(first.metrics), strip_timing(second.metrics)
    assert a.keys() == b.keys() and {"test_psnr", "val_psnr", "gamma_hat"} <= a.keys()
    assert all(math.isfinite(v) for v in a.values()), a
    assert a == b  # exact: no tolerance
    assert [strip_timing(r) for r in first.history] == [strip_timing(r) for r in second.history]
    assert first.theta == second.theta
    assert first.per_image_psnr == second.per_image_psnr
    # and the seed matters: another seed gives another run (batch order / initial weights)
    other = run(cfg, folder, spec.model_copy(update={"seed": spec.seed + 1}))
    assert strip_timing(other.metrics) != a
