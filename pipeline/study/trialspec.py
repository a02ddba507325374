"""The ``sweep`` section of ``params.yaml``: one trial (:class:`TrialSpec`) and its name, the
grid and its expansion into trials, the tuned search's options and the DEQ solves."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    model_serializer,
    model_validator,
)

from pipeline.study.estimators import ESTIMATOR_KINDS, OPTIONAL_FIELDS, UNSET, get_kind
from pipeline.study.schema import (
    EstimatorName,
    Located,
    PositiveFloat,
    PositiveInt,
    Seed,
    SolverName,
    Start,
    Strict,
)


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
        description="fixed-point solver of the forward and backward solves: fixed_point, "
        "anderson or broyden (a trial's own solver: replaces it for that trial)",
    )
    anderson_memory: PositiveInt = Field(5, description="anderson only: past iterates mixed, >= 1")
    anderson_damping: float = Field(
        1.0, gt=0, le=1, description="anderson only: damping β in (0, 1] (1: undamped)"
    )
    broyden_memory: PositiveInt = Field(
        30,
        description="broyden (and SHINE's forward) only: rank-one pairs kept before the inverse "
        "estimate restarts from I, >= 1",
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

    steps: PositiveInt | None = Field(
        None,
        description="phantom_unrolled / phantom_neumann only (and required there): S, the "
        "damped tracked steps or the Neumann terms of the phantom gradient, >= 1",
    )
    damping: float | None = Field(
        None,
        gt=0,
        le=1,
        description="phantom_unrolled / phantom_neumann only: λ in (0, 1] of the damped map "
        "(1 − λ)x + λΦ(x) (unset: 0.5 unrolled, 1 Neumann)",
    )
    refine: int = Field(
        0, ge=0, description="shine only: fixed-point iterations of the backward after Hᵀg, >= 0"
    )
    solver: SolverName | None = Field(
        None,
        description="deq / jfb / phantoms only: this trial's fixed-point solver in place of "
        "sweep.deq.solver (a DEQ with its own solver is compared with, not used as, the DEQ "
        "baseline)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrialSpec:
        """The optional fields as the estimator's registration says: those it requires set,
        those it does not use left unset."""
        kind = get_kind(self.estimator)
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if name in kind.required and value == UNSET[name]:
                article = "an" if self.estimator[0] in "aeiou" else "a"
                raise Located((name,), f"{article} {self.estimator} trial needs {name} >= 1")
            if name not in kind.fields and value != UNSET[name]:
                users = [k.name for k in ESTIMATOR_KINDS.values() if name in k.fields]
                who = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} and {users[-1]}"
                raise Located((name,), f"applies to {who} trials only, not {self.estimator}")
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
    """The grid. ``deq``/``jfb``/``shine`` run once per prior and seed; ``rjfb`` over depths ×
    restarts × starts × restart_tols; ``unrolled`` over ``unrolled_iterations``; the phantoms
    over ``phantom_steps``; ``points`` add explicit
    configurations that run with every seed; ``extra_trials`` add explicit trials (deduplicated)."""

    priors: list[str] = Field(
        min_length=1, description="priors of the priors section the grid runs, non-empty"
    )
    estimators: list[EstimatorName] = Field(
        min_length=1,
        description="estimators the grid runs: deq, rjfb, jfb, unrolled, phantom_unrolled, "
        "phantom_neumann, shine",
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
    phantom_steps: list[PositiveInt] = Field(
        [5],
        min_length=1,
        description="phantom_unrolled / phantom_neumann: steps S (Neumann terms), each >= 1",
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
