"""The ``data`` section of ``params.yaml``: source images, patches, splits, degradation."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from pipeline.study.schema import (
    Located,
    NoiseLevel,
    PositiveFloat,
    PositiveInt,
    Seed,
    Strict,
)

# --------------------------------------------------------------------------- data


class Degradation(Strict):
    """How observations are made from clean patches (deepinv physics + Gaussian noise)."""

    kind: Literal["denoising", "blur", "inpainting"] = Field(
        "denoising",
        description="forward operator: denoising (A = I), blur (circular FFT blur) or inpainting (pixel mask)",
    )
    noise_sigma: NoiseLevel | list[NoiseLevel] = Field(
        0.1,
        description="std of the additive Gaussian noise, for images in [0, 1]; 0 to 1, or a "
        "list with one per channel (e.g. [0.1, 0.25, 0.5] for rgb)",
    )
    blur_kernel: Literal["gaussian", "line"] = Field(
        "gaussian", description="blur only: gaussian (isotropic) or line (motion blur)"
    )
    blur_size: int = Field(
        9,
        ge=1,
        le=63,
        description="blur only: kernel side in pixels, odd, 1 to 63 and at most data.patch_size",
    )
    blur_sigma: PositiveFloat | list[PositiveFloat] = Field(
        1.5,
        description="gaussian blur only: std of the kernel in pixels, > 0; a list: one kernel "
        "per channel",
    )
    blur_angle: float | list[float] = Field(
        45.0,
        description="line blur only: direction in degrees, counter-clockwise from horizontal; a "
        "list: one kernel per channel (the reference code's per-channel line kernels)",
    )
    blur_padding: Literal["circular", "reflect"] = Field(
        "circular",
        description="blur only: boundary of the convolution, circular (FFT) or reflect "
        "(spatial, as the reference code)",
    )
    mask_rate: float = Field(0.5, gt=0, le=1, description="fraction of pixels kept")

    @model_validator(mode="after")
    def _odd_kernel(self) -> Degradation:
        if self.kind == "blur" and self.blur_size % 2 == 0:
            raise Located(("blur_size",), f"must be odd, got {self.blur_size}")
        for key in ("noise_sigma", "blur_sigma", "blur_angle"):
            if isinstance(getattr(self, key), list) and not getattr(self, key):
                raise Located((key,), "a per-channel list needs at least one value")
        return self

    def channel_lists(self) -> dict[str, int]:
        """The per-channel options written as lists, and their lengths."""
        keys = ["noise_sigma"]
        if self.kind == "blur":
            keys.append("blur_sigma" if self.blur_kernel == "gaussian" else "blur_angle")
        return {k: len(v) for k in keys if isinstance(v := getattr(self, k), list)}


class DataConfig(Strict):
    source: str = Field(
        "bundled", min_length=1, description="'bundled' (scikit-image photos) or a folder"
    )
    seed: Seed = Field(
        0, description="seed of the patch cuts, the split and the noise; 0 to 2**32 - 1"
    )
    color: Literal["gray", "rgb"] = Field(
        "gray", description="gray (1 channel) or rgb (3 channels)"
    )
    patch_size: int = Field(
        64,
        ge=8,
        le=1024,
        description="side of the square patches in pixels, 8 to 1024 (divisible as the priors need)",
    )
    patches_per_image: PositiveInt = Field(
        8, description="patches cut from each source image, >= 1"
    )
    train_images: PositiveInt = Field(
        6, description="source images of the training split (split by image, not by patch), >= 1"
    )
    val_images: PositiveInt = Field(2, description="source images of the validation split, >= 1")
    test_images: PositiveInt = Field(2, description="source images of the test split, >= 1")
    pretrain_patches: PositiveInt = Field(
        2048,
        description="random crops of the train images kept for the pretrain stage "
        "(pretrain.npz; val and test images never enter it), >= 1",
    )
    pretrain_patch_size: int = Field(
        48, ge=8, le=1024, description="side of those crops, in [8, 1024]; >= pretrain.crop"
    )
    degradation: Degradation = Field(
        Degradation(), description="how observations are made from the clean patches"
    )

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3
