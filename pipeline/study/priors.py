"""The ``priors`` section of ``params.yaml``: the prior types, their registry
(:data:`PRIOR_TYPES`) and families, and a prior's own ``train`` overrides."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    Field,
    model_serializer,
    model_validator,
)

from pipeline.study.data_config import Degradation
from pipeline.study.families import FAMILIES, PriorFamily
from pipeline.study.schema import (
    Autocast,
    DenoiserName,
    Located,
    PositiveFloat,
    PositiveInt,
    StepUnits,
    Strict,
)
from pipeline.study.train_config import PretrainConfig
from pipeline.util.errors import did_you_mean
from pipeline.util.hashing import sha256_file
from pipeline.util.names import DENOISER_ARCH, WAVELET_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.study_config import StudyConfig


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
