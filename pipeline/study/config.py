"""The typed schema of ``params.yaml``.

``load_params(path)`` reads the file and returns a frozen :class:`StudyConfig`; any mistake
(missing file, invalid YAML, a non-mapping, unknown keys, wrong types, out-of-range values,
unknown names, an empty grid) raises :class:`~pipeline.util.errors.ConfigError` with one line naming
the file, the key and what is expected, e.g.::

    params.yaml: data.sed: unknown key (did you mean 'seed'?)
    params.yaml: sweep.depths[1]: expected an integer >= 1, got 0

Nothing in the pipeline passes raw dicts around: stages load the config once and hand typed
sections to the library.
"""

from __future__ import annotations

import itertools
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)

from pipeline.study.estimators import ESTIMATOR_KINDS, OPTIONAL_FIELDS, UNSET, get_kind
from pipeline.study.families import FAMILIES, PriorFamily
from pipeline.util.errors import ConfigError, did_you_mean
from pipeline.util.hashing import sha256_file
from pipeline.util.names import AUTOCAST_NAMES, DENOISER_ARCH, SOLVER_NAMES, WAVELET_NAMES


def _registered_estimator(value: Any) -> Any:
    """An estimator name of the registry (``pipeline.study.estimators``), else one line with a
    "did you mean" or the registered names."""
    if isinstance(value, str):
        try:
            get_kind(value)
        except ValueError as err:
            raise Located((), str(err)) from None
        return value
    listed = ", ".join(repr(n) for n in ESTIMATOR_KINDS)
    raise Located((), f"expected one of {listed}, got {short_repr(value)}")


# The names come from the estimator registry; checked when a config is validated, so an
# estimator registered at run time (a test's throwaway one) is accepted too.
EstimatorName = Annotated[str, BeforeValidator(_registered_estimator)]
Start = Literal["y", "warm"]
Autocast = Literal[AUTOCAST_NAMES]  # type: ignore[valid-type]
StepUnits = Literal["absolute", "1/L"]
DenoiserName = Literal[tuple(DENOISER_ARCH)]  # type: ignore[valid-type]
SolverName = Literal[SOLVER_NAMES]  # type: ignore[valid-type]

PositiveInt = Annotated[int, Field(ge=1)]
NoiseLevel = Annotated[float, Field(ge=0, le=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
# Seeds feed numpy's SeedSequence and torch generators and are stored in int64 table columns.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# Prior names name trials, Tune trial folders and MLflow runs: keep them path- and tag-safe.
PRIOR_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
# MLflow tracking-URI schemes (a plain path is a file store).
TRACKING_SCHEMES = (
    "http",
    "https",
    "sqlite",
    "file",
    "postgresql",
    "mysql",
    "mssql",
    "databricks",
    "azureml",
)


class Strict(BaseModel):
    # allow_inf_nan=False: "tol: .inf" or "lr: .nan" is a mistake, never a setting.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """pydantic's lax mode reads ``true`` as 1 for int/float fields; YAML users mean a flag
        (or made a typo), so a boolean is only accepted where the field is a boolean."""
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if field is None or admits(field.annotation, bool):
                continue
            items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
            for i, v in items:
                if isinstance(v, bool) and admits_number(field.annotation):
                    loc: tuple[str | int, ...] = (key,) if i is None else (key, i)
                    kind = "an integer" if is_int_field(field.annotation) else "a number"
                    raise Located(loc, f"expected {kind}, got {v!r} (a boolean)")
        return data


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


# --------------------------------------------------------------------------- priors


class TrainOverrides(Strict):
    """A prior's own changes to the ``train`` section: only the keys written in the file apply
    (``steps_per_epoch: null`` written explicitly resets it); ``device`` stays per study."""

    optimizer: Literal["adam", "sgd"] | None = Field(
        None, description="replaces train.optimizer for this prior's trials"
    )
    lr: PositiveFloat | None = Field(None, description="replaces train.lr")
    epochs: PositiveInt | None = Field(None, description="replaces train.epochs")
    batch_size: PositiveInt | None = Field(None, description="replaces train.batch_size")
    steps_per_epoch: PositiveInt | None = Field(
        None, description="replaces train.steps_per_epoch (null written explicitly: every batch)"
    )
    probe_batch_size: PositiveInt | None = Field(
        None, description="replaces train.probe_batch_size"
    )
    probe_every: PositiveInt | None = Field(None, description="replaces train.probe_every")
    eval_tol: PositiveFloat | None = Field(None, description="replaces train.eval_tol")
    eval_max_iter: PositiveInt | None = Field(None, description="replaces train.eval_max_iter")
    restart_autocast: Autocast | None = Field(None, description="replaces train.restart_autocast")
    init_jitter: float | None = Field(None, ge=0, le=1, description="replaces train.init_jitter")
    seed_train_noise: bool | None = Field(None, description="replaces train.seed_train_noise")
    compile: bool | None = Field(None, description="replaces train.compile")

    @model_serializer(mode="wrap")
    def _only_written(self, handler: Any) -> dict[str, Any]:
        # Dumps keep only the keys written, so a dump validates back to the same overrides
        # (Ray hands trials the study as a dump; trial keys hash it).
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}

    def updates(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in sorted(self.model_fields_set)}


# prior type (the ``type:`` tag in params.yaml) -> its config class; filled by PriorConfig
PRIOR_TYPES: dict[str, type[PriorConfig]] = {}


class PriorConfig(Strict):
    """Base of the prior types of ``params.yaml``.

    A new prior type is one subclass here, with a ``type: Literal["name"]`` field (subclassing
    registers it in :data:`PRIOR_TYPES`; the ``Prior`` union and every message listing the
    types come from there), plus one scheme builder registered in ``pipeline.study.build``
    (``@scheme_builder(NewPrior)``): the schema stays free of the math.
    """

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        (tag,) = typing.get_args(cls.model_fields["type"].annotation)
        PRIOR_TYPES[tag] = cls

    def min_side(self) -> int:
        """The patch side must be a multiple of this (the transform's or the network's)."""
        return 1

    def family(self) -> PriorFamily:
        """The family this prior belongs to, and its label (what is learned)."""
        raise NotImplementedError

    def trial_context(self, study: StudyConfig) -> dict[str, Any]:
        """What, besides this config, changes what its trials compute (for ``sweep.grid.trial_key``)."""
        return {}


def prior_types_text(join: str = "or") -> str:
    """The registered prior types for messages: ``'wavelet' or 'pnp'``."""
    names = [repr(t) for t in PRIOR_TYPES]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {join} {names[-1]}"


def parse_prior(raw: Mapping[str, Any]) -> PriorConfig:
    """A prior config from its mapping (a ``priors`` entry, or a config's ``model_dump()``)."""
    tag = raw.get("type")
    cls = PRIOR_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise ValueError(did_you_mean("prior type", str(tag), PRIOR_TYPES))
    return cls.model_validate(raw)


def prior_family(prior: Any) -> PriorFamily:
    """The family of a prior config (a registered prior class, or its mapping as in
    ``params.yaml`` or a ``model_dump()``); each prior type defines its own (``family()``)."""
    if isinstance(prior, Mapping):
        prior = parse_prior(prior)
    return prior.family()


class WaveletPrior(PriorConfig):
    """Forward-backward with a (weighted) wavelet norm."""

    type: Literal["wavelet"] = Field(description="the prior type tag: wavelet")
    norm: Literal["l1", "weighted_l1", "l12", "weighted_l12"] = Field(
        "l1",
        description="l1 (detail coefficients), weighted_l1 (one weight per scale or subband), "
        "l12 (group norm over orientations) or weighted_l12 (the reference code's model: "
        "per-scale λ_j and one weight per group kind w_{j,c,b}, groups along `group`)",
    )
    group: Literal["bands", "channels", "both"] = Field(
        "bands",
        description="weighted_l12 only: the ℓ2 norm of a group runs over the 3 orientations "
        "(weights per level and channel), the channels (per level and orientation) or both",
    )
    scales_init: PositiveFloat = Field(
        1.0, description="weighted_l12 only: initial per-scale weight λ_j, > 0"
    )
    wavelet: str = Field("haar", description="'haar' or a Daubechies name 'db1' ... 'db38'")
    levels: int = Field(
        3,
        ge=1,
        le=8,
        description="decomposition levels J, 1 to 8 (data.patch_size must be divisible by 2**J)",
    )
    reg_init: PositiveFloat = Field(
        0.05, description="initial regularisation weight λ, > 0 (learned in log form)"
    )
    weights_init: PositiveFloat = Field(
        1.0, description="weighted_l1 / weighted_l12 only: initial per-group weight, > 0"
    )
    per_subband: bool = Field(
        False,
        description="weighted_l1 only: one weight per subband (3J+1) instead of per scale (J+1)",
    )
    step_size: PositiveFloat = Field(1.0, description="FB step τ, > 0 (converges for τ < 2/‖AᵀA‖)")
    step_size_units: StepUnits = Field(
        "absolute",
        description="absolute: τ = step_size; 1/L: τ = step_size / L with L = ‖AᵀA‖ measured "
        "on the prior's physics (e.g. 1.95 for the reference code's τ ≈ 1.95/L)",
    )
    learn_step_size: bool = Field(
        False,
        description="learn τ as well, as τ = (2/L)·sigmoid(ρ), which stays below 2/L "
        "(the initial τ must be < 2/L)",
    )
    degradation: Degradation | None = Field(
        None, description="observe the prepared clean patches through this instead of data's"
    )
    train: TrainOverrides | None = Field(
        None, description="this prior's changes to the train section"
    )

    @model_validator(mode="after")
    def _consistent(self) -> WaveletPrior:
        if self.wavelet not in WAVELET_NAMES:
            raise Located(
                ("wavelet",),
                f"unknown wavelet {self.wavelet!r}; expected 'haar' or a Daubechies name "
                "'db1' ... 'db38' (e.g. 'db4')",
            )
        if self.norm != "weighted_l1" and self.per_subband:
            raise Located(("per_subband",), f"applies to norm weighted_l1 only, not {self.norm}")
        if self.norm not in ("weighted_l1", "weighted_l12") and self.weights_init != 1.0:
            raise Located(
                ("weights_init",),
                f"applies to norm weighted_l1 or weighted_l12 only, not {self.norm}",
            )
        if self.norm != "weighted_l12":
            for key, default in (("scales_init", 1.0), ("group", "bands")):
                if getattr(self, key) != default:
                    raise Located((key,), f"applies to norm weighted_l12 only, not {self.norm}")
        return self

    def min_side(self) -> int:
        return 2**self.levels

    def family(self) -> PriorFamily:
        """Wavelet FB learns λ (and weights, and τ when ``learn_step_size``)."""
        learned = ["lambda"]
        if self.norm == "weighted_l1":
            learned.append("per-subband weights" if self.per_subband else "per-scale weights")
        if self.norm == "weighted_l12":
            learned += ["per-scale lambda_j", f"group weights ({self.group})"]
        if self.learn_step_size:
            learned.append("tau")
        name = FAMILIES["wavelet"]
        return PriorFamily("wavelet", name, f"{name} ({self.norm}): learn {', '.join(learned)}")


class PnPPrior(PriorConfig):
    """Plug-and-Play forward-backward with a denoiser network.

    Architecture keys left out (``nc``, ``nb`` for DRUNet; ``depth``, ``nf`` for DnCNN) take the
    ``pretrain`` section's values, so a prior loading the pretrain stage's weights matches them;
    set them to load other weights (official DRUNet: ``nc: 64, nb: 4``).
    """

    type: Literal["pnp"] = Field(description="the prior type tag: pnp")
    denoiser: DenoiserName = Field("drunet", description="the network: drunet or dncnn (deepinv's)")
    weights: str | None = Field(None, description="local weights file (weights only)")
    sigma_init: PositiveFloat = Field(
        0.05, description="initial denoiser noise level σ, > 0 (learned in log form)"
    )
    per_layer_sigma: bool = Field(
        False, description="one σ per layer of the K-block instead of one shared"
    )
    step_size: PositiveFloat = Field(1.0, description="initial FB step τ, > 0")
    step_size_units: StepUnits = Field(
        "absolute",
        description="absolute: τ = step_size; 1/L: τ = step_size / L with L = ‖AᵀA‖ measured "
        "on the prior's physics (the reference code's regime: step_size 1.95, i.e. γ̂ ≈ 0.95)",
    )
    learn_step_size: bool = Field(
        True, description="learn τ, as τ = (2/L)·sigmoid(ρ) < 2/L (the initial τ must be < 2/L)"
    )
    relaxation_init: float = Field(
        1.0, gt=0, le=1, description="initial relaxation α in (0, 1]; 1: plain PnP"
    )
    learn_relaxation: bool = Field(True, description="learn α (as a logit)")
    train_denoiser: bool = Field(
        False, description="train every denoiser weight inside FB as well (else frozen)"
    )
    denoiser_lr: PositiveFloat | None = Field(
        5e-4,
        description="lr of the denoiser's weights (their own Adam group); null: ONE Adam group "
        "with τ, σ, α at the prior's train.lr (the reference code's DRUNet-in-FB: 5e-4)",
    )
    sigma_init_from: str | None = Field(
        None,
        description="another pnp prior whose learned σ initialises this one's (read from its "
        "finished trials: the DEQ trial of the same seed, else its rjfb K=10 T=25 trial); "
        "the sweep runs that prior's trials first; sigma_init is the fallback",
    )
    degradation: Degradation | None = Field(
        None, description="observe the prepared clean patches through this instead of data's"
    )
    nc: PositiveInt | None = Field(None, description="DRUNet widths (n, 2n, 4n, 8n)")
    nb: PositiveInt | None = Field(None, description="DRUNet residual blocks per scale")
    residual: bool | None = Field(
        None, description="DRUNet predicts the noise, D = y − N(y, σ) (official weights: false)"
    )
    depth: PositiveInt | None = Field(None, description="DnCNN layers")
    nf: PositiveInt | None = Field(None, description="DnCNN features")
    train: TrainOverrides | None = Field(
        None, description="this prior's changes to the train section"
    )

    @model_validator(mode="after")
    def _arch_keys(self) -> PnPPrior:
        own = DENOISER_ARCH[self.denoiser]
        for key in (k for keys in DENOISER_ARCH.values() for k in keys if k not in own):
            if getattr(self, key) is not None:
                raise Located((key,), f"is not an option of denoiser {self.denoiser!r}")
        return self

    def min_side(self) -> int:
        return 8 if self.denoiser == "drunet" else 1

    def arch(self, pretrain: PretrainConfig) -> dict[str, int | bool]:
        """The denoiser architecture: this prior's own keys, else the ``pretrain`` section's."""
        arch = pretrain.arch(self.denoiser)
        return {k: v if getattr(self, k) is None else getattr(self, k) for k, v in arch.items()}

    def family(self) -> PriorFamily:
        """A frozen denoiser learns τ, σ and the relaxation; ``train_denoiser: true`` trains
        every denoiser weight inside FB as well (family named after the network)."""
        learned = ["tau"] if self.learn_step_size else []
        learned.append("sigma (one per layer)" if self.per_layer_sigma else "sigma")
        if self.learn_relaxation:
            learned.append("relaxation")
        if self.train_denoiser:
            net = {"drunet": "DRUNet", "dncnn": "DnCNN"}.get(self.denoiser, "denoiser")
            lr = (
                "one Adam group with them, at train.lr"
                if self.denoiser_lr is None
                else f"lr {self.denoiser_lr:g}"
            )
            return PriorFamily(
                "pnp_trained",
                f"{net} inside FB, trained",
                f"{net} inside FB, trained: all denoiser weights ({lr}), {', '.join(learned)}",
            )
        name = FAMILIES["pnp_frozen"]
        return PriorFamily("pnp_frozen", name, f"{name}: learn {', '.join(learned)}")

    def trial_context(self, study: StudyConfig) -> dict[str, Any]:
        """The resolved architecture and the sha256 of the weights file (None if absent)."""
        context: dict[str, Any] = {"denoiser_arch": self.arch(study.pretrain)}
        if self.weights is not None:
            path = study.resolve(self.weights)  # a missing file is reported when trials load it
            context["weights_sha256"] = sha256_file(path, cached=True) if path.exists() else None
        return context


# one member per registered prior type, told apart by ``type:``
Prior = Annotated[Union[tuple(PRIOR_TYPES.values())], Field(discriminator="type")]  # noqa: UP007


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


class TuneDist(Strict):
    """A continuous hyperparameter's distribution for the tuned search."""

    dist: Literal["loguniform", "uniform"] = Field(
        "loguniform", description="how Tune samples it: loguniform or uniform on [low, high]"
    )
    low: PositiveFloat = Field(description="lower bound, > 0")
    high: PositiveFloat = Field(description="upper bound, > low")

    @model_validator(mode="after")
    def _ordered(self) -> TuneDist:
        if self.high <= self.low:
            raise Located(("high",), f"must be > low {self.low:g}, got {self.high:g}")
        return self


class TuneSpace(Strict):
    """The hyperparameters a tuned sweep searches per grid point."""

    lr: TuneDist = Field(
        default_factory=lambda: TuneDist(low=1e-3, high=0.3),
        description="learning rate of the trial (replaces train.lr and a prior's train.lr)",
    )


class TuneOptions(Strict):
    """``sweep.search: tuned``: per grid point, a search then the best configuration per seed."""

    samples: PositiveInt = Field(
        8, description="configurations sampled per grid point in the search phase, >= 1"
    )
    algorithm: Literal["optuna", "random"] = Field(
        "optuna", description="search algorithm: optuna (TPE, seeded) or random (seeded)"
    )
    seed: Annotated[int, Field(ge=0)] = Field(0, description="seed of the search algorithm")
    grace_period: PositiveInt = Field(
        1, description="ASHA: epochs every search trial runs before it can be pruned, >= 1"
    )
    search_seed: Seed = Field(
        0, description="the trial seed the search phase trains with (the final phase: sweep.seeds)"
    )
    space: TuneSpace = Field(
        default_factory=TuneSpace, description="what is searched (lr: {dist, low, high})"
    )


class DEQOptions(Strict):
    tol: PositiveFloat = Field(
        1e-4, description="relative residual the forward solves of DEQ and JFB stop at, > 0"
    )
    max_iter: PositiveInt = Field(300, description="iteration cap of the forward solves, >= 1")
    backward_tol: PositiveFloat = Field(
        1e-4, description="relative residual the implicit backward solve of DEQ stops at, > 0"
    )
    backward_max_iter: PositiveInt = Field(
        300, description="iteration cap of the backward solve, >= 1"
    )
    solver: SolverName = Field(
        "anderson",
        description="fixed-point solver of the forward and backward solves: fixed_point or anderson",
    )
    anderson_memory: PositiveInt = Field(5, description="anderson only: past iterates mixed, >= 1")
    anderson_damping: float = Field(
        1.0, gt=0, le=1, description="anderson only: damping β in (0, 1] (1: undamped)"
    )


class TrialSpec(Strict):
    """One grid point: what a single Ray trial trains."""

    prior: str = Field(description="name of a prior of the priors section")
    estimator: EstimatorName = Field(
        description="gradient estimator, one of pipeline.study.estimators (deq, rjfb, jfb, "
        "unrolled, ...)"
    )
    depth: PositiveInt = Field(
        1, description="K, the layers of the block the estimator backpropagates through, >= 1"
    )
    restarts: int = Field(
        0,
        ge=0,
        description="rjfb only: T, no-grad K-block applications before the tracked one, >= 0",
    )
    restart_tol: PositiveFloat | None = Field(
        None,
        description="rjfb only: stop restarting once the block's relative residual is below it",
    )
    start: Start = Field(
        "y", description="x0: y (the observation) or warm (each sample's last iterate)"
    )
    iterations: PositiveInt | None = Field(
        None, description="unrolled only (and required there): N, the steps autograd runs through"
    )
    seed: Seed = Field(
        0, description="seed of θ's training order and the trial's RNG; 0 to 2**32 - 1"
    )
    jac_reg: float = Field(
        0.0,
        ge=0,
        le=1e6,
        description="deq only: weight of the Jacobian penalty ‖J_Φ(x*)‖_F² / n at the fixed "
        "point (torchdeq's jac_reg, one Hutchinson probe) added to the loss; 0: plain DEQ",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrialSpec:
        """The optional fields as the estimator's registration says: those it requires set,
        those it does not use left unset."""
        kind = get_kind(self.estimator)
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if name in kind.required and value == UNSET[name]:
                raise Located((name,), f"an {self.estimator} trial needs {name} >= 1")
            if name not in kind.fields and value != UNSET[name]:
                users = [k.name for k in ESTIMATOR_KINDS.values() if name in k.fields]
                raise Located(
                    (name,), f"applies to {' and '.join(users)} trials only, not {self.estimator}"
                )
        return self

    @property
    def name(self) -> str:
        """Readable and unique within a sweep, e.g. ``wl1-rjfb-K5-T10-warm-s0``: prior,
        estimator, the parts its registration names, start (unless y) and seed."""
        return f"{self.config_name}-s{self.seed}"

    @property
    def config_name(self) -> str:
        """The name of its configuration (every seed together), e.g. ``wl1-rjfb-K5-T10-warm``."""
        parts = [self.prior, self.estimator, *get_kind(self.estimator).name_parts(self)]
        if self.start != "y":
            parts.append(self.start)
        return "-".join(parts)


class TrialPoint(TrialSpec):
    """A configuration without its seed: ``sweep.points`` run it with every seed. Its dumps
    leave the seed out, so a dump validates back to the same point (Ray hands trials the study
    as a dump)."""

    @model_serializer(mode="wrap")
    def _without_seed(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        out.pop("seed", None)
        return out

    def with_seed(self, seed: int) -> TrialSpec:
        return TrialSpec.model_validate({**self.model_dump(), "seed": seed})


class SweepConfig(Strict):
    """The grid. ``deq``/``jfb`` run once per prior and seed; ``rjfb`` over depths × restarts ×
    starts × restart_tols; ``unrolled`` over ``unrolled_iterations``; ``points`` add explicit
    configurations that run with every seed; ``extra_trials`` add explicit trials (deduplicated)."""

    priors: list[str] = Field(
        min_length=1, description="priors of the priors section the grid runs, non-empty"
    )
    estimators: list[EstimatorName] = Field(
        min_length=1, description="estimators the grid runs: deq, rjfb, jfb, unrolled"
    )
    depths: list[PositiveInt] = Field(
        [1, 5, 10], min_length=1, description="rjfb: depths K, each >= 1"
    )
    restarts: list[Annotated[int, Field(ge=0)]] = Field(
        [0, 5], min_length=1, description="rjfb: restart counts T, each >= 0"
    )
    restart_tols: list[PositiveFloat | None] = Field(
        [None],
        min_length=1,
        description="rjfb: adaptive-restart tolerances (null: always T restarts)",
    )
    starts: list[Start] = Field(["y"], min_length=1, description="rjfb: starts, y or warm")
    seeds: list[Seed] = Field([0], min_length=1, description="seeds every grid point runs with")
    unrolled_iterations: list[PositiveInt] = Field(
        [20], min_length=1, description="unrolled: step counts N, each >= 1"
    )
    points: list[TrialPoint] = Field(
        [],
        description="explicit configurations (a trial without its seed) that run with every "
        "seed of sweep.seeds, after the grid (a duplicate of a grid point is dropped)",
    )
    extra_trials: list[TrialSpec] = Field(
        [], description="explicit trials added to the grid (a duplicate of a grid point is dropped)"
    )
    deq: DEQOptions = Field(DEQOptions(), description="the solves of DEQ (and JFB's forward)")
    search: Literal["grid", "tuned"] = Field(
        "grid",
        description="grid: every trial at the configured lr; tuned: per grid point (seedless) a "
        "Ray Tune search of sweep.tune.space under ASHA on val_psnr, then the best configuration "
        "on every seed",
    )
    tune: TuneOptions = Field(
        default_factory=TuneOptions, description="the tuned search (sweep.search: tuned)"
    )

    @model_validator(mode="after")
    def _non_empty(self) -> SweepConfig:
        for i, t in enumerate(self.points):
            if "seed" in t.model_fields_set:
                raise Located(
                    ("points", i, "seed"),
                    "a point runs with every seed of sweep.seeds: drop its seed (or move it to "
                    "extra_trials)",
                )
        only_tols = all(t is not None for t in self.restart_tols)
        if "rjfb" in self.estimators and only_tols and all(r == 0 for r in self.restarts):
            raise Located(
                ("restart_tols",),
                "the rjfb grid is empty: adaptive restarts (a tolerance) need restarts > 0; "
                "add a restart count > 0 to sweep.restarts or null to sweep.restart_tols",
            )
        names: dict[str, TrialSpec] = {}
        for t in self._expand():
            other = names.setdefault(t.name, t)
            if other != t:
                raise Located(
                    ("extra_trials",),
                    f"two different trials would both be named {t.name!r}: "
                    f"{other.model_dump()} and {t.model_dump()}",
                )
        return self

    def trials(self) -> list[TrialSpec]:
        """The grid's trials in order, each once (an extra trial equal to a grid point is
        dropped)."""
        unique: dict[str, TrialSpec] = {}
        for t in self._expand():
            unique.setdefault(t.name, t)
        return list(unique.values())

    def _expand(self) -> list[TrialSpec]:
        out: list[TrialSpec] = []
        for prior, est, seed in itertools.product(self.priors, self.estimators, self.seeds):
            # the grid points of each estimator come from its registration
            for fields in get_kind(est).grid(self):
                out.append(TrialSpec(prior=prior, estimator=est, seed=seed, **fields))
        out += [t.with_seed(seed) for t in self.points for seed in self.seeds]
        return out + list(self.extra_trials)


# --------------------------------------------------------------------------- services


class RayConfig(Strict):
    address: str | None = Field(None, description="null: start a local Ray; else a cluster")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of a locally started Ray")
    cpus_per_trial: PositiveFloat = Field(1, description="CPUs Ray reserves per trial, > 0")
    gpus_per_trial: float = Field(
        0,
        ge=0,
        description="GPUs per trial: a fraction in (0, 1] shares one, or a whole number; 0: none",
    )
    max_concurrent_trials: PositiveInt = Field(2, description="trials running at once, >= 1")
    storage_path: str | None = Field(
        None,
        min_length=1,
        description="Ray Tune results folder or URI (null: ray_results next to params.yaml)",
    )
    ship_data: bool = Field(
        True,
        description="when the driver connects to an existing cluster (ray.address, RAY_ADDRESS, "
        "a Ray job; not with the local Ray it starts itself), ship the prepared data and the "
        "sweep's PnP weights files (a prior's weights, e.g. models/denoiser.pt) to the nodes "
        "through Ray's object store, one copy per node in $RJFB_DATA_CACHE (false: every node "
        "reads the driver's paths, which must then be shared)",
    )
    checkpoint_every_s: float = Field(
        30,
        ge=0,
        description="seconds between a trial's checkpoints and MLflow metric flushes (0: every "
        "epoch); an interrupted trial resumes from its last checkpoint",
    )

    @model_validator(mode="after")
    def _gpu_fraction(self) -> RayConfig:
        g = self.gpus_per_trial
        if g > 1 and g != int(g):
            raise Located(
                ("gpus_per_trial",), f"expected a fraction in (0, 1] or a whole number, got {g}"
            )
        if not self.address and self.num_cpus is not None and self.cpus_per_trial > self.num_cpus:
            raise Located(
                ("cpus_per_trial",),
                f"must be <= ray.num_cpus {self.num_cpus} (the local Ray could never start a "
                f"trial), got {self.cpus_per_trial:g}",
            )
        return self


class MlflowConfig(Strict):
    tracking_uri: str | None = Field(
        None, min_length=1, description="null: sqlite:///<repo>/mlflow.db"
    )
    experiment: str = Field(
        "rjfb-study", min_length=1, description="MLflow experiment name, non-empty"
    )
    system_metrics_interval_s: float = Field(
        10.0,
        ge=0,
        description="seconds between MLflow system metrics samples (CPU, memory, GPU) of each "
        "trial's run, also sampled once when the trial ends; 0: none",
    )

    @model_validator(mode="after")
    def _scheme(self) -> MlflowConfig:
        uri = self.tracking_uri
        if uri is not None and "://" in uri:
            scheme = uri.split("://", 1)[0].split("+", 1)[0].lower()
            if scheme not in TRACKING_SCHEMES:
                raise Located(
                    ("tracking_uri",),
                    f"unsupported scheme {scheme!r} in {uri!r}; expected one of "
                    f"{', '.join(TRACKING_SCHEMES)} (or a plain path)",
                )
        return self


class ReportConfig(Strict):
    delta_psnr_tolerance: PositiveFloat = Field(
        0.1, description="|ΔPSNR| (dB) to DEQ within which the report calls an estimator equal, > 0"
    )
    quality_margin_db: PositiveFloat = Field(
        0.05,
        description="dB below the best PSNR that still counts as reaching quality (time to quality), > 0",
    )
    images: PositiveInt = Field(
        4, description="test images in each trial's reconstruction grid, >= 1"
    )
    deq_unreliable_frac: float = Field(
        0.1,
        ge=0,
        le=1,
        description=(
            "a prior's DEQ baseline is marked unreliable when a DEQ trial's fraction of training "
            "steps whose implicit backward missed sweep.deq.backward_tol exceeds it, in [0, 1]"
        ),
    )


class StudyConfig(Strict):
    data: DataConfig = Field(
        DataConfig(), description="the prepare stage: source images, patches, splits, degradation"
    )
    pretrain: PretrainConfig = Field(
        PretrainConfig(), description="the pretrain stage: the PnP denoiser"
    )
    priors: dict[str, Prior] = Field(
        min_length=1,
        description="name -> prior config (type: wavelet | pnp); names are 1-64 letters, digits, _ . -",
    )
    train: TrainConfig = Field(
        TrainConfig(),
        description="training of every trial (a prior's train overrides apply on top)",
    )
    sweep: SweepConfig = Field(description="the grid of trials")
    ray: RayConfig = Field(RayConfig(), description="Ray Tune resources and the cluster")
    mlflow: MlflowConfig = Field(MlflowConfig(), description="MLflow tracking")
    report: ReportConfig = Field(ReportConfig(), description="the report stage")

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        for name in self.priors:
            if not re.fullmatch(PRIOR_NAME, name):
                raise Located(
                    ("priors", name),
                    "a prior name must be 1-64 letters, digits, '_', '.' or '-' starting with a "
                    "letter or digit (it names trials, folders and MLflow runs)",
                )
        for i, name in enumerate(self.sweep.priors):
            if name not in self.priors:
                raise Located(("sweep", "priors", i), did_you_mean("prior", name, self.priors))
        for key in ("points", "extra_trials"):
            for i, t in enumerate(getattr(self.sweep, key)):
                if t.prior not in self.priors:
                    raise Located(
                        ("sweep", key, i, "prior"), did_you_mean("prior", t.prior, self.priors)
                    )
        for name, prior in self.priors.items():
            side = prior.min_side()
            if self.data.patch_size % side:
                raise Located(
                    ("data", "patch_size"),
                    f"must be divisible by {side} for prior {name!r}, got {self.data.patch_size}",
                )
        crop = self.pretrain.crop
        if crop is not None and crop > self.data.pretrain_patch_size:
            raise Located(
                ("pretrain", "crop"),
                f"must be <= data.pretrain_patch_size {self.data.pretrain_patch_size}, got {crop}",
            )
        deg = self.data.degradation
        if deg.kind == "blur" and deg.blur_size > self.data.patch_size:
            raise Located(
                ("data", "degradation", "blur_size"),
                f"must be <= data.patch_size {self.data.patch_size}, got {deg.blur_size}",
            )
        for name, prior in self.priors.items():
            own = getattr(prior, "degradation", None)
            if own is not None and own.kind == "blur" and own.blur_size > self.data.patch_size:
                raise Located(
                    ("priors", name, "degradation", "blur_size"),
                    f"must be <= data.patch_size {self.data.patch_size}, got {own.blur_size}",
                )
        degradations = [(("data", "degradation"), deg)] + [
            (("priors", name, "degradation"), own)
            for name, prior in self.priors.items()
            if (own := getattr(prior, "degradation", None)) is not None
        ]
        for loc, d in degradations:
            for key, n in d.channel_lists().items():
                if n != self.data.channels:
                    raise Located(
                        (*loc, key),
                        f"one value per channel: data.color {self.data.color!r} has "
                        f"{self.data.channels}, got {n}",
                    )
        for name, prior in self.priors.items():
            source = getattr(prior, "sigma_init_from", None)
            if source is None:
                continue
            pnps = [n for n, p in self.priors.items() if p.type == "pnp" and n != name]
            if source not in pnps:
                raise Located(
                    ("priors", name, "sigma_init_from"), did_you_mean("pnp prior", source, pnps)
                )
            if getattr(self.priors[source], "sigma_init_from", None):
                raise Located(
                    ("priors", name, "sigma_init_from"),
                    f"{source!r} chains its own sigma: chains are one step deep",
                )
        if self.train.device == "cuda" and self.ray.gpus_per_trial == 0:
            raise Located(
                ("ray", "gpus_per_trial"),
                "must be > 0 when train.device is 'cuda' (Ray hides the GPUs from trials that "
                "request none); use a fraction such as 0.5 to share a GPU, or train.device: auto",
            )
        return self

    # ---- derived paths and values
    @property
    def root(self) -> Path:
        """Directory of the params file: relative paths in the config resolve against it."""
        return self._root

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self._root / p).resolve()

    @property
    def tracking_uri(self) -> str:
        """Absolute MLflow URI (relative URIs would break inside Ray trial directories).

        Paths the project builds (the default ``<repo>/mlflow.db``, a relative ``sqlite:///``
        path, a plain folder) are percent-encoded, so a checkout whose path holds ``?``, ``#``,
        ``%``, spaces or any unicode still points inside it (SQLAlchemy reads ``?`` as the start
        of a query and decodes ``%XX``). A URI given in full (``sqlite:////abs``, ``http://``)
        is used as written."""
        uri = self.mlflow.tracking_uri
        if uri is None:
            return sqlite_uri(self._root / "mlflow.db")
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return sqlite_uri(self.resolve(uri.removeprefix("sqlite:///")))
        if "://" not in uri:
            return self.resolve(uri).as_uri()
        return uri

    @property
    def artifact_location(self) -> str | None:
        """Where a new MLflow experiment keeps its runs' artifacts: ``mlartifacts/`` beside an
        SQLite store (under the repo by default), whatever the working directory; ``None`` for a
        server or a file store (they place artifacts themselves, independent of the cwd)."""
        uri = self.tracking_uri
        if not uri.startswith("sqlite:"):
            return None
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        if not database or database == ":memory:":
            return None
        return (Path(database).parent / "mlartifacts").as_uri()

    @property
    def storage_path(self) -> str:
        sp = self.ray.storage_path
        if sp is None:
            return str(self._root / "ray_results")
        return sp if "://" in sp else str(self.resolve(sp))

    def trials(self) -> list[TrialSpec]:
        return self.sweep.trials()

    def train_for(self, prior: str) -> TrainConfig:
        """The ``train`` section as the prior's trials see it (its ``train`` overrides applied)."""
        overrides = self.priors[prior].train
        if overrides is None:
            return self.train
        return self.train.model_copy(update=overrides.updates())

    def denoiser_arch(self, prior: str) -> dict[str, int]:
        """A PnP prior's denoiser architecture: its own keys, else the ``pretrain`` section's."""
        p = self.priors[prior]
        if not isinstance(p, PnPPrior):
            raise TypeError(f"prior {prior!r} is not a PnP prior")
        return p.arch(self.pretrain)

    def with_root(self, root: Path) -> StudyConfig:
        self._root = Path(root).resolve()
        return self


class Located(ValueError):
    """A cross-field error that knows its own location in the file."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# --------------------------------------------------------------------------- loading


MAX_PARAMS_BYTES = 1 << 20  # a params file is a page of YAML, not data
MAX_PARAMS_VALUES = 100_000  # after expanding YAML aliases ("billion laughs" guard)


def load_params(path: str | Path = "params.yaml") -> StudyConfig:
    """Read and validate ``params.yaml``; raise ConfigError with one clear line otherwise."""
    path = Path(path)
    label = str(path)
    if path.is_dir():
        raise ConfigError(f"{label}: is a folder (expected a YAML params file)")
    if not path.is_file():
        raise ConfigError(f"{label}: file not found (expected a YAML params file)")
    try:
        size = path.stat().st_size
        if size > MAX_PARAMS_BYTES:
            raise ConfigError(
                f"{label}: {size} bytes is too large for a params file "
                f"(limit {MAX_PARAMS_BYTES}; expected a YAML mapping of sections)"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not a UTF-8 text file") from None
    except OSError as err:
        raise ConfigError(f"{label}: cannot be read ({err.strerror or err})") from None
    raw = parse_yaml(text, label)
    if raw is None:
        raise ConfigError(f"{label}: the file is empty (expected a mapping of sections)")
    return parse_params(raw, label=label).with_root(path.resolve().parent)


def parse_params(raw: Any, label: str = "params.yaml") -> StudyConfig:
    """Validate an already-parsed mapping (the YAML file's content)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    if count_values(raw) > MAX_PARAMS_VALUES:
        raise ConfigError(
            f"{label}: more than {MAX_PARAMS_VALUES} values once YAML aliases are expanded "
            "(expected a small mapping of sections)"
        )
    from pipeline.study.limits import check_maxima

    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(one_line(f"{label}: {describe_error(err, raw)}")) from None
    except Located as err:  # pragma: no cover - pydantic wraps these; kept for safety
        raise ConfigError(one_line(f"{label}: {loc_text(err.loc)}: {err.message}")) from None
    check_maxima(cfg, label)  # sizes that allocate: one table of upper bounds
    return cfg


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (PyYAML silently keeps the last one, so a
    second ``sweep:`` section would quietly replace the first)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, label: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "could not be parsed"
        raise ConfigError(one_line(f"{label}: invalid YAML{where}: {problem}")) from None
    except RecursionError:
        raise ConfigError(f"{label}: invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. a 5000-digit integer
        raise ConfigError(one_line(f"{label}: invalid YAML: {err}")) from None


def count_values(tree: Any, limit: int = MAX_PARAMS_VALUES) -> int:
    """Values in a parsed YAML tree, aliases counted at every use; stops past ``limit``."""
    count, stack = 0, [tree]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return count


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


# pydantic error types -> what the message says is expected (numbers get their bound).
_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "string_too_short": "a non-empty string",
    "list_type": "a list (e.g. [1, 5])",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}
_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}


# how pydantic labels the member of a union (``float | list[float]``) that an error came from:
# a part of the error's location that is no key of the file
_UNION_MEMBER = re.compile(r"(constrained-)?(float|int|str|bool)|(list|dict|tuple)\[.*\]")


def _file_loc(loc: tuple[Any, ...], raw: Any) -> tuple[Any, ...]:
    """``loc`` without pydantic's union-member labels, where the file has no such key."""
    out: list[Any] = []
    node = raw
    for part in loc:
        has = isinstance(node, dict) and part in node
        if not has and isinstance(part, str) and _UNION_MEMBER.fullmatch(part):
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def describe_error(err: ValidationError, raw: Any) -> str:
    e = _first_error(err)
    loc = _file_loc(tuple(e.get("loc", ())), raw)
    typ = e.get("type", "")
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, Located):
        return f"{loc_text(loc + tuple(inner.loc))}: {inner.message}"
    if len(loc) >= 2 and loc[-1] == "[key]":  # a mapping key of the wrong type (priors: {1: ...})
        key = loc[-2]
        kinds = {bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
        kind = kinds.get(type(key), type(key).__name__)
        return (
            f"{loc_text(loc[:-2])}: key {short_repr(key)} is {kind}, not a name (quote it: '{key}')"
        )
    if typ == "extra_forbidden":
        known = _known_keys(StudyConfig, loc[:-1], raw)
        return f"{loc_text(loc)}: " + did_you_mean("key", str(loc[-1]), known, show_name=False)
    got = e.get("input")
    if typ == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        tag = _tag_value(raw, loc)
        if not isinstance(tag, str):
            return f"{loc_text(loc)}.type: expected {prior_types_text()}, got {short_repr(tag)}"
        return f"{loc_text(loc)}.type: " + did_you_mean("prior type", tag, tags)
    if typ == "union_tag_not_found":
        return f"{loc_text(loc)}: missing key 'type' (expected {prior_types_text()})"
    if typ == "missing":
        return f"{loc_text(loc)}: missing required key"
    if typ == "literal_error":
        options = _literal_options(_annotation_at(loc, raw))
        if isinstance(got, str) and options:
            return f"{loc_text(loc)}: " + did_you_mean(_what(loc), got, options)
        if options:
            listed = ", ".join(repr(o) for o in options)
            return f"{loc_text(loc)}: expected one of {listed}, got {short_repr(got)}"
    if typ in _BOUNDS:
        key, op = _BOUNDS[typ]
        kind = "an integer" if is_int_field(_annotation_at(loc, raw)) else "a number"
        bound = ctx.get(key)
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return f"{loc_text(loc)}: expected {kind} {op} {bound}, got {short_repr(got)}"
    if typ == "too_short":
        n = ctx.get("min_length", 1)
        what = "a non-empty list" if n == 1 else f"a list of at least {n} items"
        if isinstance(got, dict):
            what = "a non-empty mapping" if n == 1 else f"a mapping of at least {n} entries"
        return f"{loc_text(loc)}: expected {what}, got {short_repr(got)}"
    if typ in _EXPECTED:
        return f"{loc_text(loc)}: expected {_EXPECTED[typ]}, got {short_repr(got)}"
    message = str(e.get("msg") or "invalid value").removeprefix("Value error, ")
    return f"{loc_text(loc)}: {message[:1].lower()}{message[1:]}, got {short_repr(got)}"


def _tag_value(raw: Any, loc: tuple[Any, ...]) -> Any:
    """The ``type:`` value written at ``loc`` (pydantic's error context only has its str())."""
    node = raw
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node.get("type") if isinstance(node, dict) else None


def _first_error(err: ValidationError) -> dict[str, Any]:
    errors = err.errors()
    # Prefer the most specific error (deepest location) so unions report their real cause; at
    # equal depth an unknown key first: a typo also makes the intended key "missing".
    return max(errors, key=lambda e: (len(e.get("loc", ())), e.get("type") == "extra_forbidden"))


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Field names of the model found at ``loc``."""
    ann = _resolve(_walk(model, loc, raw), None)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _annotation_at(loc: tuple[Any, ...], raw: Any) -> Any:
    return _walk(StudyConfig, loc, raw)


def _walk(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> Any:
    """The annotation found at ``loc`` (None if the path leaves the schema): walks models,
    lists, dicts and the priors' discriminated union, whose tag pydantic inserts into the
    location."""
    ann: Any = model
    node = raw
    for part in loc:
        if is_union(ann) and isinstance(node, dict) and part == node.get("type"):
            ann = _resolve(ann, node)  # the discriminator tag: not a key of the file
            continue
        ann = _resolve(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if part not in ann.model_fields:
                return None
            ann = ann.model_fields[part].annotation
            node = node.get(part) if isinstance(node, dict) else None
        elif origin is list:
            ann = typing.get_args(ann)[0]
            ok = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            node = node[part] if ok else None
        elif origin is dict:
            ann = typing.get_args(ann)[1]
            node = node.get(part) if isinstance(node, dict) else None
        else:
            return None
    return _resolve(ann, node)


def annotation_leaves(ann: Any) -> set[Any]:
    """The plain types an annotation accepts (through Annotated, unions, lists, Literal)."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(annotation_leaves(a) for a in typing.get_args(ann)))
    if origin is list:
        return annotation_leaves(typing.get_args(ann)[0])
    if origin is Literal:
        return {type(a) for a in typing.get_args(ann)}
    return {origin} if origin is not None else {ann}


def admits(ann: Any, typ: type) -> bool:
    return typ in annotation_leaves(ann)


def admits_number(ann: Any) -> bool:
    return bool(annotation_leaves(ann) & {int, float})


def is_int_field(ann: Any) -> bool:
    leaves = annotation_leaves(ann) - {type(None)}
    return leaves == {int}


def _literal_options(ann: Any) -> list[Any]:
    ann = _resolve(ann, None)
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if typing.get_origin(ann) is Literal:
        return list(typing.get_args(ann))
    return []


def _what(loc: tuple[Any, ...]) -> str:
    """What a value at ``loc`` names: ``sweep.estimators[0]`` -> 'estimator'."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return "value"
    name = names[-1]
    if name == "kind":
        return "degradation kind"
    if isinstance(loc[-1], int) and name.endswith("s"):
        name = name[:-1]
    return name.replace("_", " ")


def is_union(ann: Any) -> bool:
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _resolve(ann: Any, node: Any) -> Any:
    """Strip Annotated/Optional; pick the union member a ``type:`` tag names."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if not is_union(ann):
        return ann
    members = [a for a in typing.get_args(ann) if a is not type(None)]
    models = [a for a in members if isinstance(a, type) and issubclass(a, BaseModel)]
    if isinstance(node, dict) and "type" in node:
        for m in models:
            tag = m.model_fields.get("type")
            if tag is not None and node["type"] in typing.get_args(tag.annotation):
                return m
    if len(members) == 1:
        return _resolve(members[0], node)
    return models[0] if len(models) == 1 else ann


def loc_text(loc: tuple[Any, ...]) -> str:
    if len(loc) > 2 and loc[0] == "priors" and loc[2] in PRIOR_TYPES:
        loc = loc[:2] + loc[3:]  # pydantic's discriminator tag, not a key of the file
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if not re.fullmatch(r"[\w.-]+", text):
            text = repr(text)  # a key with spaces, quotes or newlines: show it unambiguously
        out += f".{text}" if out else text
    return out or "(top level)"


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sqlite_uri(path: Path) -> str:
    """``sqlite:///<path>`` for an absolute path that SQLAlchemy (which MLflow uses) opens as
    exactly ``path``: it decodes ``%XX`` and ends the path at ``?``, so those two are escaped;
    everything else (``#``, spaces, unicode, ``@``, ``:``) it reads as written."""
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")
