"""The ``train`` and ``pretrain`` sections of ``params.yaml``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    model_validator,
)

from pipeline.study.schema import (
    Autocast,
    DenoiserName,
    Located,
    PositiveFloat,
    PositiveInt,
    Seed,
    Strict,
)
from pipeline.util.names import DENOISER_ARCH

# --------------------------------------------------------------------------- training


class TrainConfig(Strict):
    optimizer: Literal["adam", "sgd"] = Field("adam", description="adam or sgd, over θ")
    lr: PositiveFloat = Field(0.05, description="learning rate of θ, > 0")
    epochs: PositiveInt = Field(6, description="training epochs, >= 1")
    batch_size: PositiveInt = Field(
        8, description="patches per training step (and per evaluation batch), >= 1"
    )
    steps_per_epoch: PositiveInt | None = Field(
        None, description="at most this many steps per epoch (null: every batch of the split)"
    )
    probe_batch_size: PositiveInt = Field(
        8, description="validation patches the per-epoch gradient and contraction probes use, >= 1"
    )
    probe_every: PositiveInt = Field(
        1,
        description="run those probes every N epochs (the first and the last always; the "
        "history has no probe values in between), >= 1",
    )
    eval_tol: PositiveFloat = Field(
        1e-5, description="relative residual the equilibrium solves of evaluation stop at, > 0"
    )
    eval_max_iter: PositiveInt = Field(1000, description="iteration cap of those solves, >= 1")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="cpu, cuda, or auto (cuda when visible)"
    )
    restart_autocast: Autocast | None = Field(
        None,
        description="run the no-grad applications of a training step (rJFB restarts, DEQ/JFB "
        "forward solves) under autocast; the tracked block stays float32; solves to a "
        "tolerance finish in float32",
    )
    init_jitter: float = Field(
        0.0,
        ge=0,
        le=1,
        description="std s of a log-normal jitter of the learned scalars' initial values, drawn "
        "from the trial's seed: each positive θ (λ, λ_j, w, σ) is multiplied by exp(s·z), "
        "z ~ N(0, 1); τ's and α's logits move by s·z (0: no jitter, every seed starts alike)",
    )
    seed_train_noise: bool = Field(
        False,
        description="re-draw the TRAINING split's noise (and inpainting masks) from the "
        "trial's seed, with the same degradation (val and test stay as prepared)",
    )
    compile: bool = Field(
        False,
        description="run the no-grad applications of a training step (rJFB restarts, DEQ/JFB "
        "forward solves) through torch.compile (dynamic=False, one graph per shape and layer, "
        "built once per trial); the tracked block and the backward stay eager, so gradients "
        "change only by rounding; a compiler failure stops the trial with an error naming "
        "train.compile (no fallback). Needs a C++ compiler on CPU, Triton on CUDA",
    )


class PretrainConfig(Strict):
    """The ``pretrain`` stage: a denoiser trained on random crops of the training images
    (``pretrain.npz`` of the prepared folder) with Gaussian noise of level σ drawn in
    [sigma_min, sigma_max]; PnP priors load its weights. It is measured against its noisy input
    and classical denoisers on the val and test patches, and refused when it is worse than its
    input at any evaluated σ (unless ``allow_weak``)."""

    denoiser: DenoiserName = Field("drunet", description="the network trained: drunet or dncnn")
    nc: PositiveInt = Field(8, description="DRUNet widths (n, 2n, 4n, 8n)")
    nb: PositiveInt = Field(1, description="DRUNet residual blocks per scale")
    residual: bool = Field(
        True, description="DRUNet predicts the noise, D = y − N(y, σ) (false: deepinv's form)"
    )
    depth: PositiveInt = Field(7, description="DnCNN layers")
    nf: PositiveInt = Field(32, description="DnCNN features")
    sigma_min: float = Field(
        0.002, gt=0, le=1, description="lowest training noise level, in (0, 1] and <= sigma_max"
    )
    sigma_max: float = Field(0.2, gt=0, le=1, description="highest training noise level, in (0, 1]")
    sigma_log_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of training σ drawn log-uniformly (the rest uniformly) in "
        "[sigma_min, sigma_max]: PnP's learned σ live at the low end",
    )
    steps: PositiveInt = Field(2000, description="optimiser steps, >= 1")
    lr: PositiveFloat = Field(2e-3, description="Adam learning rate, > 0 (cosine-decayed)")
    batch_size: PositiveInt = Field(32, description="crops per step, >= 1")
    crop: PositiveInt | None = Field(
        None, description="side of the random training crops (null: the whole pretrain patches)"
    )
    seed: Seed = Field(
        0, description="seed of the initialisation, the batches and the noise; 0 to 2**32 - 1"
    )
    eval_sigmas: list[Annotated[float, Field(gt=0, le=1)]] = Field(
        [0.01, 0.03, 0.05, 0.1, 0.2],
        min_length=1,
        description="noise levels of the val / test evaluation (models/denoiser.json), in (0, 1]",
    )
    allow_weak: bool = Field(
        False,
        description="keep a denoiser worse than its noisy input at some evaluated σ (else the "
        "stage fails); the report then says so in its first lines",
    )
    bm3d: bool = Field(
        False,
        description="score BM3D too (the bm3d extra: pip install -e '.[bm3d]'; about 0.5 s a "
        "patch per σ on one core); TV and wavelet BayesShrink are always scored",
    )

    @model_validator(mode="after")
    def _ranges(self) -> PretrainConfig:
        if self.sigma_min > self.sigma_max:
            raise Located(
                ("sigma_min",), f"must be <= sigma_max {self.sigma_max}, got {self.sigma_min}"
            )
        if self.crop is not None and self.denoiser == "drunet" and self.crop % 8:
            raise Located(("crop",), f"must be divisible by 8 for DRUNet, got {self.crop}")
        return self

    def arch(self, kind: str | None = None) -> dict[str, int | bool]:
        """Architecture options of ``kind`` (default: this section's denoiser)."""
        return {key: getattr(self, key) for key in DENOISER_ARCH[kind or self.denoiser]}
