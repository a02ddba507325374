"""The ``ray`` and ``mlflow`` sections of ``params.yaml``: resources, the cluster, tracking."""

from __future__ import annotations

from pathlib import Path

from pydantic import (
    Field,
    model_validator,
)

from pipeline.study.schema import (
    Located,
    PositiveFloat,
    PositiveInt,
    Strict,
)

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


def sqlite_uri(path: Path) -> str:
    """``sqlite:///<path>`` for an absolute path that SQLAlchemy (which MLflow uses) opens as
    exactly ``path``: it decodes ``%XX`` and ends the path at ``?``, so those two are escaped;
    everything else (``#``, spaces, unicode, ``@``, ``:``) it reads as written."""
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")
