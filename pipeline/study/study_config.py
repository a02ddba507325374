"""The whole of ``params.yaml``: :class:`StudyConfig` (its sections and the checks across
them, the paths and values derived from it) and the ``report`` section."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import (
    Field,
    PrivateAttr,
    model_validator,
)

from pipeline.study.data_config import DataConfig
from pipeline.study.priors import PnPPrior, Prior, TrainOverrides
from pipeline.study.schema import (
    PRIOR_NAME,
    Located,
    PositiveFloat,
    PositiveInt,
    Strict,
)
from pipeline.study.services import MlflowConfig, RayConfig, sqlite_uri
from pipeline.study.train_config import PretrainConfig, TrainConfig
from pipeline.study.trialspec import SweepConfig, TrialSpec
from pipeline.util.errors import did_you_mean


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

    def with_lr(self, prior: str, lr: float) -> StudyConfig:
        """The study with ``prior``'s trials at learning rate ``lr`` (a tuned sweep's trial):
        the prior's ``train`` overrides gain ``lr`` (validated), the rest as written, the root
        kept."""
        p = self.priors[prior]
        written = p.train.updates() if p.train is not None else {}
        train = TrainOverrides.model_validate({**written, "lr": lr})
        priors = {**self.priors, prior: p.model_copy(update={"train": train})}
        return self.model_copy(update={"priors": priors}).with_root(self._root)

    def with_root(self, root: Path) -> StudyConfig:
        self._root = Path(root).resolve()
        return self
