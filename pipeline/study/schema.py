"""The base of every ``params.yaml`` section (:class:`Strict`), its field types, and
:class:`Located`, the error a validator raises with its place in the file."""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from pipeline.study.estimators import ESTIMATOR_KINDS, get_kind
from pipeline.util.names import AUTOCAST_NAMES, DENOISER_ARCH, SOLVER_NAMES


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


class Located(ValueError):
    """A cross-field error that knows its own location in the file."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


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


def is_union(ann: Any) -> bool:
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
