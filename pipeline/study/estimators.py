"""The estimator registry: everything the study, the sweep and the report know about a gradient
estimator, in one registration per estimator.

The math lives in ``pipeline.core`` (a class registered with
``pipeline.core.estimators.register_estimator``); this module says how a trial uses it: which
fields of a :class:`~pipeline.study.config.TrialSpec` apply, which grid points ``sweep`` expands
to, how a trial and a report row are named, how the core estimator is built from a spec, how many
scheme applications the trained network uses at inference, and the label, order and colour the
report shows. It is free of torch (the report stage loads it without ``core``): the core class is
named by its module, imported when a trial builds the estimator.

Adding an estimator is one module in ``pipeline/core/`` and one registration here (plus its
tests and docs)::

    # pipeline/core/phantom.py
    @register_estimator
    @dataclass
    class Phantom(Estimator):
        name: ClassVar[str] = "phantom"
        depth: int = 1
        ...

    # here
    register_kind(
        EstimatorKind(
            name="phantom",
            module="pipeline.core.phantom",
            label="phantom",
            order=4,
            options=lambda spec, deq: {"depth": spec.depth},
        )
    )

``sweep.estimators: [phantom]`` then runs it once per prior and seed (override ``grid`` for
more grid points), trials are named ``<prior>-phantom[-K<depth>]-s<seed>``, and the report labels
and orders it by ``label`` / ``order``.

Functions of a kind take a spec *or a report row*: anything with the spec's fields as
attributes (``spec.depth``; a trials-table row read with ``itertuples`` or as a Series, where a
missing value is NaN).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.util.errors import did_you_mean

# The TrialSpec fields that only some estimators use, in the order their misuse is reported.
# Every other field (prior, estimator, depth, start, seed) applies to all of them.
OPTIONAL_FIELDS = (
    "iterations",
    "restart_tol",
    "restarts",
    "jac_reg",
    "steps",
    "damping",
    "refine",
    "solver",
)
# Each optional field's "not set" value: a spec of an estimator that does not use the field
# must leave it there.
UNSET: dict[str, Any] = {
    "iterations": None,
    "restart_tol": None,
    "restarts": 0,
    "jac_reg": 0.0,
    "steps": None,
    "damping": None,
    "refine": 0,
    "solver": None,
}

Spec = Any  # a TrialSpec, or a trials-table row with its fields (see the module docstring)


def _once(sweep: Any) -> list[dict[str, Any]]:
    """Default grid: one trial per prior and seed, every optional field unset."""
    return [{}]


def _depth_part(spec: Spec) -> list[str]:
    """``K<depth>`` unless the depth is 1 (the default)."""
    return [] if spec.depth == 1 else [f"K{spec.depth}"]


def _fmt_int(v: Any) -> str:
    return "?" if _missing(v) else str(int(v))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _depth_label(r: Spec) -> list[str]:
    return [] if _missing(r.depth) or r.depth == 1 else [f"K{_fmt_int(r.depth)}"]


@dataclass(frozen=True)
class EstimatorKind:
    """One gradient estimator as the study, the sweep and the report see it.

    ``name``: the core estimator's name (``make_estimator(name)``) and the ``estimator:`` of a
    trial; ``module``: the ``pipeline.core`` module that registers that class. ``fields``: the
    optional TrialSpec fields (:data:`OPTIONAL_FIELDS`) it uses, ``required`` those a trial must
    set. ``grid(sweep)``: the optional fields of its grid points (one dict per point, before
    priors and seeds). ``name_parts(spec)``: the trial-name parts after ``<prior>-<name>``
    (before start and seed), which must tell its trials apart; ``label_parts(row)``: the same
    for the report's configuration label (after ``label``). ``options(spec, deq)``: the core
    estimator's options, ``deq`` being ``sweep.deq`` as a dict. ``iterations_at_depth(spec)``:
    scheme applications the trained network uses at inference, None for a solve to a tolerance;
    ``solves(spec)``: whether its untracked steps solve to a tolerance (they then finish in full
    precision under ``train.restart_autocast``). ``color``: its colour in the plots (None: one
    colour per configuration).
    """

    name: str
    label: str
    order: int
    options: Callable[[Spec, Mapping[str, Any]], dict[str, Any]]
    module: str = "pipeline.core.estimators"
    fields: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()
    grid: Callable[[Any], list[dict[str, Any]]] = _once
    name_parts: Callable[[Spec], list[str]] = _depth_part
    label_parts: Callable[[Spec], list[str]] = _depth_label
    iterations_at_depth: Callable[[Spec], int | float | None] = lambda spec: None
    solves: Callable[[Spec], bool] = lambda spec: False
    color: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        unknown = (self.fields | self.required) - set(OPTIONAL_FIELDS)
        if unknown:
            raise ValueError(f"estimator {self.name!r}: unknown optional fields {sorted(unknown)}")
        if not self.required <= self.fields:
            raise ValueError(f"estimator {self.name!r}: required fields must be among its fields")


# name -> its registration; filled by register_kind, in registration order
ESTIMATOR_KINDS: dict[str, EstimatorKind] = {}


def register_kind(kind: EstimatorKind, *, replace: bool = False) -> EstimatorKind:
    """Register ``kind`` (its name must be new unless ``replace``); returns it."""
    if kind.name in ESTIMATOR_KINDS and not replace and ESTIMATOR_KINDS[kind.name] != kind:
        raise ValueError(f"estimator {kind.name!r} is already registered")
    ESTIMATOR_KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Remove ``name`` from the registry (tests that register a throwaway estimator)."""
    ESTIMATOR_KINDS.pop(name, None)


def get_kind(name: str) -> EstimatorKind:
    """The registration of ``name``; an unknown name gets a "did you mean"."""
    try:
        return ESTIMATOR_KINDS[name]
    except KeyError:
        raise ValueError(did_you_mean("estimator", name, ESTIMATOR_KINDS)) from None


def estimator_names() -> list[str]:
    return list(ESTIMATOR_KINDS)


def names_text(join: str = "or") -> str:
    """``deq, rjfb, jfb or unrolled``: the registered names for messages."""
    names = estimator_names()
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {join} {names[-1]}"


def estimator_label(name: str) -> str:
    """The report's label of an estimator (its name when it is not registered)."""
    kind = ESTIMATOR_KINDS.get(name)
    return kind.label if kind is not None else name


def estimator_order(name: str) -> int:
    """Where an estimator comes in tables and legends (unregistered names last)."""
    kind = ESTIMATOR_KINDS.get(name)
    return kind.order if kind is not None else 9


def estimator_color(name: str) -> str | None:
    """An estimator's plot colour, or None (coloured per configuration)."""
    kind = ESTIMATOR_KINDS.get(name)
    return kind.color if kind is not None else None


def estimators_by_order() -> list[str]:
    return sorted(ESTIMATOR_KINDS, key=lambda n: ESTIMATOR_KINDS[n].order)


def iterations_at_depth(spec: Spec) -> int | float | None:
    """Scheme applications the trained network of ``spec`` uses at inference: (T+1)·K for rJFB,
    N unrolled, None (an equilibrium solve) for the others and unregistered estimators."""
    kind = ESTIMATOR_KINDS.get(spec.estimator)
    return None if kind is None else kind.iterations_at_depth(spec)


# --------------------------------------------------------------------------- the built-in four


def _solver(spec: Spec, deq: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's own solver (``solver:`` of a point) in place of ``sweep.deq.solver``; the
    backward follows the forward (DEQ's ``backward_solver`` defaults to ``solver``)."""
    own = getattr(spec, "solver", None)
    return {} if own is None or _missing(own) or own == "" else {"solver": own}


def _deq_options(spec: Spec, deq: Mapping[str, Any]) -> dict[str, Any]:
    return {"depth": spec.depth, **deq, **_solver(spec, deq)}


_FORWARD_SOLVE = (
    "tol",
    "max_iter",
    "solver",
    "anderson_memory",
    "anderson_damping",
    "broyden_memory",
)


def _jfb_options(spec: Spec, deq: Mapping[str, Any]) -> dict[str, Any]:
    return {"depth": spec.depth, **{k: deq[k] for k in _FORWARD_SOLVE}, **_solver(spec, deq)}


def _solver_part(spec: Spec) -> list[str]:
    own = getattr(spec, "solver", None)
    return [] if own is None or _missing(own) or own == "" else [str(own)]


def _deq_name(spec: Spec) -> list[str]:
    # shortest exact form of the weight (repr): no two weights share a name
    jac = [f"jr{spec.jac_reg!r}"] if spec.jac_reg else []
    return _depth_part(spec) + jac + _solver_part(spec)


def _deq_label(r: Spec) -> list[str]:
    jac = getattr(r, "jac_reg", 0.0)
    jac_part = [f"jac_reg={jac:g}"] if not _missing(jac) and jac > 0 else []
    return _depth_label(r) + jac_part + _solver_part(r)


def _rjfb_grid(sweep: Any) -> list[dict[str, Any]]:
    out = []
    for depth, restarts, start, tol in itertools.product(
        sweep.depths, sweep.restarts, sweep.starts, sweep.restart_tols
    ):
        if tol is not None and restarts == 0:
            continue  # adaptive restarts need a budget > 0
        out.append({"depth": depth, "restarts": restarts, "start": start, "restart_tol": tol})
    return out


def _rjfb_name(spec: Spec) -> list[str]:
    parts = [f"K{spec.depth}", f"T{spec.restarts}"]
    if spec.restart_tol is not None:
        parts.append(f"tol{spec.restart_tol!r}")  # shortest exact form: no collisions
    return parts


def _rjfb_label(r: Spec) -> list[str]:
    parts = [f"K{_fmt_int(r.depth)}", f"T{_fmt_int(r.restarts)}"]
    if not _missing(r.restart_tol):
        parts.append(f"tol{r.restart_tol:g}")
    return parts


def _unrolled_name(spec: Spec) -> list[str]:
    return [f"N{spec.iterations}", *_depth_part(spec)]


# the exact estimator every configuration is compared with
DEQ = "deq"

register_kind(
    EstimatorKind(
        name=DEQ,
        label="DEQ",
        order=0,
        color="black",
        fields=frozenset({"jac_reg", "solver"}),
        options=_deq_options,
        name_parts=_deq_name,
        label_parts=_deq_label,
        solves=lambda spec: True,
        description="forward solve, implicit backward",
    )
)
register_kind(
    EstimatorKind(
        name="rjfb",
        label="rJFB",
        order=1,
        fields=frozenset({"restarts", "restart_tol"}),
        options=lambda spec, deq: {
            "depth": spec.depth,
            "restarts": spec.restarts,
            "restart_tol": spec.restart_tol,
        },
        grid=_rjfb_grid,
        name_parts=_rjfb_name,
        label_parts=_rjfb_label,
        iterations_at_depth=lambda spec: (spec.restarts + 1) * spec.depth,
        solves=lambda spec: spec.restart_tol is not None,
        description="T no-grad K-blocks, then one tracked K-block",
    )
)
register_kind(
    EstimatorKind(
        name="jfb",
        label="JFB",
        order=2,
        color="0.45",
        fields=frozenset({"solver"}),
        options=_jfb_options,
        name_parts=lambda spec: _depth_part(spec) + _solver_part(spec),
        label_parts=lambda r: _depth_label(r) + _solver_part(r),
        solves=lambda spec: True,
        description="forward solve, then depth tracked steps",
    )
)
register_kind(
    EstimatorKind(
        name="unrolled",
        label="unrolled",
        order=3,
        color="tab:purple",
        fields=frozenset({"iterations"}),
        required=frozenset({"iterations"}),
        options=lambda spec, deq: {"iterations": spec.iterations, "depth": spec.depth},
        grid=lambda sweep: [{"iterations": n} for n in sweep.unrolled_iterations],
        name_parts=_unrolled_name,
        label_parts=lambda r: [f"N{_fmt_int(r.iterations)}"],
        iterations_at_depth=lambda spec: spec.iterations,
        description="autograd through N steps",
    )
)


# --------------------------------------------------------------------------- the zoo (issue 24)
# Phantom gradients (core.phantom) and SHINE (core.shine). Their forward solves to sweep.deq's
# tolerance like JFB and DEQ; SHINE's forward is always Broyden (its backward reuses Broyden's
# inverse estimate), with sweep.deq's tol, max_iter and broyden_memory.


def _phantom_options(spec: Spec, deq: Mapping[str, Any]) -> dict[str, Any]:
    out = {**_jfb_options(spec, deq), "steps": spec.steps}
    if not _missing(spec.damping):  # unset: the core class's default (0.5 unrolled, 1 Neumann)
        out["damping"] = spec.damping
    return out


def _phantom_name(spec: Spec) -> list[str]:
    # S = the phantom's steps (Geng et al.'s K); K stays the block depth, as for every estimator
    parts = [*_depth_part(spec), f"S{spec.steps}"]
    if spec.damping is not None:
        parts.append(f"d{spec.damping!r}")  # shortest exact form: no collisions
    return parts


def _phantom_label(r: Spec) -> list[str]:
    parts = [*_depth_label(r), f"S{_fmt_int(r.steps)}"]
    if not _missing(r.damping):
        parts.append(f"λ{r.damping:g}")
    return parts


def _phantom_grid(sweep: Any) -> list[dict[str, Any]]:
    return [{"steps": s} for s in sweep.phantom_steps]


def _shine_options(spec: Spec, deq: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "depth": spec.depth,
        "tol": deq["tol"],
        "max_iter": deq["max_iter"],
        "memory": deq["broyden_memory"],
        "refine": spec.refine,
    }


def _shine_name(spec: Spec) -> list[str]:
    return _depth_part(spec) + ([f"R{spec.refine}"] if spec.refine else [])


def _shine_label(r: Spec) -> list[str]:
    refine = getattr(r, "refine", 0)
    return _depth_label(r) + ([f"R{_fmt_int(refine)}"] if not _missing(refine) and refine else [])


def _phantom_kind(name: str, label: str, order: int, color: str, description: str) -> EstimatorKind:
    """A phantom gradient (``core.phantom``): the forward solve, then S tracked steps or
    Neumann terms (``steps``, ``damping``); the two kinds differ only in what they show."""
    return EstimatorKind(
        name=name,
        module="pipeline.core.phantom",
        label=label,
        order=order,
        color=color,
        fields=frozenset({"steps", "damping", "solver"}),
        required=frozenset({"steps"}),
        options=_phantom_options,
        grid=_phantom_grid,
        name_parts=_phantom_name,
        label_parts=_phantom_label,
        solves=lambda spec: True,
        description=description,
    )


register_kind(
    _phantom_kind(
        "phantom_unrolled",
        "phantom-unrolled",
        4,
        "tab:orange",
        "forward solve, then S damped tracked steps x ← (1−λ)x + λΦ(x)",
    )
)
register_kind(
    _phantom_kind(
        "phantom_neumann",
        "phantom-Neumann",
        5,
        "tab:green",
        "forward solve, then a backward of S (damped) Neumann terms",
    )
)
register_kind(
    EstimatorKind(
        name="shine",
        module="pipeline.core.shine",
        label="SHINE",
        order=6,
        color="tab:red",
        fields=frozenset({"refine"}),
        options=_shine_options,
        name_parts=_shine_name,
        label_parts=_shine_label,
        solves=lambda spec: True,
        description="Broyden forward; backward Hᵀg with Broyden's inverse (R refine steps)",
    )
)
