"""The typed schema of ``params.yaml``.

``load_params(path)`` reads the file and returns a frozen :class:`StudyConfig`; any mistake
(missing file, invalid YAML, a non-mapping, unknown keys, wrong types, out-of-range values,
unknown names, an empty grid) raises :class:`~pipeline.util.errors.ConfigError` with one line naming
the file, the key and what is expected, e.g.::

    params.yaml: data.sed: unknown key (did you mean 'seed'?)
    params.yaml: sweep.depths[1]: expected an integer >= 1, got 0

Nothing in the pipeline passes raw dicts around: stages load the config once and hand typed
sections to the library.

The schema lives in one module per concept; this module is the one place the rest of the
pipeline imports it from:

* ``study/schema.py`` — the base model, field types, :class:`Located`
* ``study/data_config.py`` — ``data``
* ``study/train_config.py`` — ``train``, ``pretrain``
* ``study/priors.py`` — ``priors``: prior types, their registry and families
* ``study/trialspec.py`` — ``sweep``: :class:`TrialSpec`, the grid, the tuned search
* ``study/services.py`` — ``ray``, ``mlflow``
* ``study/study_config.py`` — :class:`StudyConfig`, ``report``
* ``study/params_errors.py`` — one-line validation messages
* ``study/params_loader.py`` — :func:`load_params`, :func:`parse_params`
"""

from __future__ import annotations

from pipeline.study.data_config import DataConfig, Degradation
from pipeline.study.params_errors import describe_error, loc_text, one_line
from pipeline.study.params_loader import (
    MAX_PARAMS_BYTES,
    MAX_PARAMS_VALUES,
    count_values,
    load_params,
    parse_params,
    parse_yaml,
)
from pipeline.study.priors import (
    PRIOR_TYPES,
    PnPPrior,
    Prior,
    PriorConfig,
    TrainOverrides,
    WaveletPrior,
    parse_prior,
    prior_family,
    prior_types_text,
)
from pipeline.study.schema import (
    PRIOR_NAME,
    Autocast,
    DenoiserName,
    EstimatorName,
    Located,
    NoiseLevel,
    PositiveFloat,
    PositiveInt,
    Seed,
    SolverName,
    Start,
    StepUnits,
    Strict,
    admits,
    admits_number,
    annotation_leaves,
    is_int_field,
    is_union,
    short_repr,
)
from pipeline.study.services import TRACKING_SCHEMES, MlflowConfig, RayConfig, sqlite_uri
from pipeline.study.study_config import ReportConfig, StudyConfig
from pipeline.study.train_config import PretrainConfig, TrainConfig
from pipeline.study.trialspec import (
    DEQOptions,
    SweepConfig,
    TrialPoint,
    TrialSpec,
    TuneDist,
    TuneOptions,
    TuneSpace,
)
from pipeline.util.errors import ConfigError, did_you_mean

__all__ = [
    "MAX_PARAMS_BYTES",
    "MAX_PARAMS_VALUES",
    "PRIOR_NAME",
    "PRIOR_TYPES",
    "TRACKING_SCHEMES",
    "Autocast",
    "ConfigError",
    "DEQOptions",
    "DataConfig",
    "Degradation",
    "DenoiserName",
    "EstimatorName",
    "Located",
    "MlflowConfig",
    "NoiseLevel",
    "PnPPrior",
    "PositiveFloat",
    "PositiveInt",
    "PretrainConfig",
    "Prior",
    "PriorConfig",
    "RayConfig",
    "ReportConfig",
    "Seed",
    "SolverName",
    "Start",
    "StepUnits",
    "Strict",
    "StudyConfig",
    "SweepConfig",
    "TrainConfig",
    "TrainOverrides",
    "TrialPoint",
    "TrialSpec",
    "TuneDist",
    "TuneOptions",
    "TuneSpace",
    "WaveletPrior",
    "admits",
    "admits_number",
    "annotation_leaves",
    "count_values",
    "describe_error",
    "did_you_mean",
    "is_int_field",
    "is_union",
    "load_params",
    "loc_text",
    "one_line",
    "parse_params",
    "parse_prior",
    "parse_yaml",
    "prior_family",
    "prior_types_text",
    "short_repr",
    "sqlite_uri",
]
