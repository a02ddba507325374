"""The typed schema of ``params.yaml``.

``load_params(path)`` reads the file and returns a frozen :class:`StudyConfig`; any mistake
(missing file, invalid YAML, a non-mapping, unknown keys, wrong types, out-of-range values,
unknown names, an empty grid) raises :class:`~pipeline.errors.ConfigError` with one line naming
the file, the key and what is expected, e.g.::

    params.yaml: data.sed: unknown key (did you mean 'seed'?)
    params.yaml: sweep.depths[1]: expected an integer >= 1, got 0

Nothing in the pipeline passes raw dicts around: stages load the config once and hand typed
sections to the library.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from pipeline.errors import ConfigError, did_you_mean

EstimatorName = Literal["deq", "rjfb", "jfb", "unrolled"]
Start = Literal["y", "warm"]

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# --------------------------------------------------------------------------- data


class Degradation(_Strict):
    """How observations are made from clean patches (deepinv physics + Gaussian noise)."""

    kind: Literal["denoising", "blur", "inpainting"] = "denoising"
    noise_sigma: float = Field(0.1, ge=0, le=1)
    blur_kernel: Literal["gaussian", "line"] = "gaussian"
    blur_size: int = Field(9, ge=1, le=63)
    blur_sigma: float = Field(1.5, gt=0)
    blur_angle: float = 45.0
    mask_rate: float = Field(0.5, gt=0, le=1, description="fraction of pixels kept")

    @model_validator(mode="after")
    def _odd_kernel(self) -> Degradation:
        if self.kind == "blur" and self.blur_size % 2 == 0:
            raise _Located(("blur_size",), f"must be odd, got {self.blur_size}")
        return self


class DataConfig(_Strict):
    source: str = Field("bundled", description="'bundled' (scikit-image photos) or a folder")
    seed: int = 0
    color: Literal["gray", "rgb"] = "gray"
    patch_size: int = Field(64, ge=8, le=1024)
    patches_per_image: PositiveInt = 8
    train_images: PositiveInt = 6
    val_images: PositiveInt = 2
    test_images: PositiveInt = 2
    degradation: Degradation = Degradation()

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


# --------------------------------------------------------------------------- priors


class WaveletPrior(_Strict):
    """Forward-backward with a (weighted) wavelet norm."""

    type: Literal["wavelet"]
    norm: Literal["l1", "weighted_l1", "l12"] = "l1"
    wavelet: str = "haar"
    levels: int = Field(3, ge=1, le=8)
    reg_init: PositiveFloat = 0.05
    weights_init: PositiveFloat = 1.0
    per_subband: bool = False
    step_size: PositiveFloat = 1.0
    learn_step_size: bool = False

    def min_side(self) -> int:
        return 2**self.levels


class PnPPrior(_Strict):
    """Plug-and-Play forward-backward with a denoiser network."""

    type: Literal["pnp"]
    denoiser: Literal["drunet", "dncnn"] = "drunet"
    weights: str | None = Field(None, description="local weights file (weights only)")
    sigma_init: PositiveFloat = 0.05
    per_layer_sigma: bool = False
    step_size: PositiveFloat = 1.0
    learn_step_size: bool = True
    relaxation_init: float = Field(1.0, gt=0, le=1)
    learn_relaxation: bool = True
    train_denoiser: bool = False

    def min_side(self) -> int:
        return 8 if self.denoiser == "drunet" else 1


Prior = Annotated[WaveletPrior | PnPPrior, Field(discriminator="type")]


# --------------------------------------------------------------------------- training


class TrainConfig(_Strict):
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: PositiveFloat = 0.05
    epochs: PositiveInt = 6
    batch_size: PositiveInt = 8
    steps_per_epoch: PositiveInt | None = None
    probe_batch_size: PositiveInt = 8
    eval_tol: PositiveFloat = 1e-5
    eval_max_iter: PositiveInt = 1000
    device: Literal["cpu", "cuda", "auto"] = "cpu"


class DEQOptions(_Strict):
    tol: PositiveFloat = 1e-4
    max_iter: PositiveInt = 300
    backward_tol: PositiveFloat = 1e-4
    backward_max_iter: PositiveInt = 300
    anderson: bool = True
    anderson_memory: PositiveInt = 5
    anderson_damping: float = Field(1.0, gt=0, le=1)


class TrialSpec(_Strict):
    """One grid point: what a single Ray trial trains."""

    prior: str
    estimator: EstimatorName
    depth: PositiveInt = 1
    restarts: int = Field(0, ge=0)
    restart_tol: PositiveFloat | None = None
    start: Start = "y"
    iterations: PositiveInt | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> TrialSpec:
        if self.estimator == "unrolled" and self.iterations is None:
            raise _Located(("iterations",), "an unrolled trial needs iterations >= 1")
        if self.estimator != "unrolled" and self.iterations is not None:
            raise _Located(
                ("iterations",), f"applies to unrolled trials only, not {self.estimator}"
            )
        if self.restart_tol is not None and self.estimator != "rjfb":
            raise _Located(("restart_tol",), "applies to rjfb trials only")
        return self

    @property
    def name(self) -> str:
        """Readable and unique within a sweep, e.g. ``wl1-rjfb-K5-T10-warm-s0``."""
        parts = [self.prior, self.estimator]
        if self.estimator == "rjfb":
            parts += [f"K{self.depth}", f"T{self.restarts}"]
            if self.restart_tol is not None:
                parts.append(f"tol{self.restart_tol:g}")
        elif self.estimator == "unrolled":
            parts.append(f"N{self.iterations}")
        elif self.depth != 1:
            parts.append(f"K{self.depth}")
        if self.start != "y":
            parts.append(self.start)
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def key(self, study: StudyConfig | None = None) -> str:
        """A stable hash of this trial and (if given) everything in the study that shapes it."""
        payload: dict[str, Any] = {"trial": self.model_dump(mode="json")}
        if study is not None:
            payload["study"] = study.trial_context(self.prior)
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class SweepConfig(_Strict):
    """The grid. ``deq``/``jfb`` run once per prior and seed; ``rjfb`` over depths × restarts ×
    starts × restart_tols; ``unrolled`` over ``unrolled_iterations``; ``extra_trials`` add
    explicit points (deduplicated)."""

    priors: list[str] = Field(min_length=1)
    estimators: list[EstimatorName] = Field(min_length=1)
    depths: list[PositiveInt] = [1, 5, 10]
    restarts: list[Annotated[int, Field(ge=0)]] = [0, 5]
    restart_tols: list[PositiveFloat | None] = [None]
    starts: list[Start] = ["y"]
    seeds: list[int] = [0]
    unrolled_iterations: list[PositiveInt] = [20]
    extra_trials: list[TrialSpec] = []
    deq: DEQOptions = DEQOptions()

    def trials(self) -> list[TrialSpec]:
        out: list[TrialSpec] = []
        for prior, est, seed in itertools.product(self.priors, self.estimators, self.seeds):
            if est in ("deq", "jfb"):
                out.append(TrialSpec(prior=prior, estimator=est, seed=seed))
            elif est == "unrolled":
                out += [
                    TrialSpec(prior=prior, estimator=est, iterations=n, seed=seed)
                    for n in self.unrolled_iterations
                ]
            else:
                for depth, restarts, start, tol in itertools.product(
                    self.depths, self.restarts, self.starts, self.restart_tols
                ):
                    if tol is not None and restarts == 0:
                        continue  # adaptive restarts need a budget > 0
                    out.append(
                        TrialSpec(
                            prior=prior,
                            estimator=est,
                            depth=depth,
                            restarts=restarts,
                            start=start,
                            restart_tol=tol,
                            seed=seed,
                        )
                    )
        out += self.extra_trials
        seen: set[str] = set()
        unique = []
        for t in out:
            if t.name not in seen:
                seen.add(t.name)
                unique.append(t)
        return unique


# --------------------------------------------------------------------------- services


class RayConfig(_Strict):
    address: str | None = Field(None, description="null: start a local Ray; else a cluster")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of a locally started Ray")
    cpus_per_trial: PositiveFloat = 1
    gpus_per_trial: float = Field(0, ge=0)
    max_concurrent_trials: PositiveInt = 2
    storage_path: str | None = None

    @model_validator(mode="after")
    def _gpu_fraction(self) -> RayConfig:
        g = self.gpus_per_trial
        if g > 1 and g != int(g):
            raise _Located(
                ("gpus_per_trial",), f"expected a fraction in (0, 1] or a whole number, got {g}"
            )
        return self


class MlflowConfig(_Strict):
    tracking_uri: str | None = Field(None, description="null: sqlite:///<repo>/mlflow.db")
    experiment: str = Field("rjfb-study", min_length=1)


class ReportConfig(_Strict):
    delta_psnr_tolerance: PositiveFloat = 0.1
    quality_margin_db: PositiveFloat = 0.05
    images: PositiveInt = 4


class StudyConfig(_Strict):
    data: DataConfig = DataConfig()
    priors: dict[str, Prior] = Field(min_length=1)
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()
    report: ReportConfig = ReportConfig()

    _root: Path = PrivateAttr(default_factory=Path.cwd)

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        for i, name in enumerate(self.sweep.priors):
            if name not in self.priors:
                raise _Located(("sweep", "priors", i), did_you_mean("prior", name, self.priors))
        for i, t in enumerate(self.sweep.extra_trials):
            if t.prior not in self.priors:
                raise _Located(
                    ("sweep", "extra_trials", i, "prior"),
                    did_you_mean("prior", t.prior, self.priors),
                )
        for name, prior in self.priors.items():
            side = prior.min_side()
            if self.data.patch_size % side:
                raise _Located(
                    ("data", "patch_size"),
                    f"must be divisible by {side} for prior {name!r}, got {self.data.patch_size}",
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
        """Absolute MLflow URI (relative URIs would break inside Ray trial directories)."""
        uri = self.mlflow.tracking_uri
        if uri is None:
            return f"sqlite:///{self._root / 'mlflow.db'}"
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            return f"sqlite:///{self.resolve(uri.removeprefix('sqlite:///'))}"
        if "://" not in uri:
            return self.resolve(uri).as_uri()
        return uri

    @property
    def storage_path(self) -> str:
        sp = self.ray.storage_path
        if sp is None:
            return str(self._root / "ray_results")
        return sp if "://" in sp else str(self.resolve(sp))

    def trials(self) -> list[TrialSpec]:
        return self.sweep.trials()

    def trial_context(self, prior: str) -> dict[str, Any]:
        """Everything outside a TrialSpec that changes what that trial computes."""
        return {
            "data": self.data.model_dump(mode="json"),
            "prior": self.priors[prior].model_dump(mode="json"),
            "train": self.train.model_dump(mode="json"),
            "deq": self.sweep.deq.model_dump(mode="json"),
        }

    def with_root(self, root: Path) -> StudyConfig:
        self._root = Path(root).resolve()
        return self


class _Located(ValueError):
    """A cross-field error that knows its own location in the file."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# --------------------------------------------------------------------------- loading


def load_params(path: str | Path = "params.yaml") -> StudyConfig:
    """Read and validate ``params.yaml``; raise ConfigError with one clear line otherwise."""
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise ConfigError(f"{label}: file not found (expected a YAML params file)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "could not be parsed"
        raise ConfigError(f"{label}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not a UTF-8 text file") from None
    if raw is None:
        raise ConfigError(f"{label}: the file is empty (expected a mapping of sections)")
    return parse_params(raw, label=label).with_root(path.resolve().parent)


def parse_params(raw: Any, label: str = "params.yaml") -> StudyConfig:
    """Validate an already-parsed mapping (the YAML file's content)."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{label}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{label}: {_describe(err, raw)}") from None
    except _Located as err:  # pragma: no cover - pydantic wraps these; kept for safety
        raise ConfigError(f"{label}: {_loc(err.loc)}: {err.message}") from None


def _describe(err: ValidationError, raw: Any) -> str:
    e = _first_error(err)
    loc = tuple(e.get("loc", ()))
    typ = e.get("type", "")
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _Located):
        return f"{_loc(loc + tuple(inner.loc))}: {inner.message}"
    if typ == "extra_forbidden":
        known = _known_keys(StudyConfig, loc[:-1], raw)
        return f"{_loc(loc)}: " + did_you_mean("key", str(loc[-1]), known).replace(
            f"unknown key {loc[-1]!r}", "unknown key", 1
        )
    got = e.get("input")
    message = e.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    if typ == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        return f"{_loc(loc)}.type: " + did_you_mean("prior type", str(ctx.get("tag")), tags)
    if typ == "union_tag_not_found":
        return f"{_loc(loc)}: missing key 'type' (expected 'wavelet' or 'pnp')"
    if typ == "missing":
        return f"{_loc(loc)}: missing required key"
    return f"{_loc(loc)}: {message[0].lower()}{message[1:]}, got {_short(got)}"


def _first_error(err: ValidationError) -> dict[str, Any]:
    errors = err.errors()
    # Prefer the most specific error (deepest location) so unions report their real cause.
    return max(errors, key=lambda e: len(e.get("loc", ())))


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...], raw: Any) -> list[str]:
    """Field names of the model found at ``loc`` (walks models, lists, dicts and the priors'
    discriminated union, whose tag pydantic inserts into the location)."""
    ann: Any = model
    node = raw
    for part in loc:
        if _is_union(ann) and isinstance(node, dict) and part == node.get("type"):
            ann = _resolve(ann, node)  # the discriminator tag: not a key of the file
            continue
        ann = _resolve(ann, node)
        origin = typing.get_origin(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if part not in ann.model_fields:
                return []
            ann = ann.model_fields[part].annotation
            node = node.get(part) if isinstance(node, dict) else None
        elif origin is list:
            ann = typing.get_args(ann)[0]
            node = node[part] if isinstance(node, list) and isinstance(part, int) else None
        elif origin is dict:
            ann = typing.get_args(ann)[1]
            node = node.get(part) if isinstance(node, dict) else None
        else:
            return []
    ann = _resolve(ann, node)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return list(ann.model_fields)
    return []


def _is_union(ann: Any) -> bool:
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _resolve(ann: Any, node: Any) -> Any:
    """Strip Annotated/Optional; pick the union member a ``type:`` tag names."""
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    if not _is_union(ann):
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


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("wavelet", "pnp") and out.startswith("priors."):
            continue  # pydantic's discriminator tag, not a key of the file
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
