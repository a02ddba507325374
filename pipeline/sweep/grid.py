"""Trial identity: which trials a sweep runs and the keys that find them again.

A trial's key hashes its grid point with everything in the study that shapes what it computes
(:func:`trial_context`); the sweep's key hashes its trials' keys. A resumed sweep finds its Tune
experiment (``<storage_path>/sweep-<key>``) and its MLflow runs (tags) by these keys, so what goes
into them must not change: the same study must give the same bytes.

    grid = build_grid(cfg)
    grid.key, grid.name                 # '3f2a…', 'sweep-3f2a…'
    grid.points[0]                      # GridPoint(spec=TrialSpec(…), name='l1-deq-s0', key='…')
    grid.points[0].to_tune()            # {'trial': {...}, 'name': 'l1-deq-s0', 'key': '…'}
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.study.config import StudyConfig, TrialSpec
from pipeline.sweep.shipping import WeightsBundle
from pipeline.util.hashing import sha256_hex

Role = Literal["search", "tuned"]

# the optional parts of a point, in the order Tune's config has always carried them
_OPTIONAL = ("config", "lr", "role", "inits", "inits_error")


@dataclass(frozen=True)
class GridPoint:
    """One Tune trial: its :class:`TrialSpec`, name and key; in a tuned sweep its learning rate
    and role (``search``: a sampled lr, ``tuned``: a final trial at its configuration's best lr)
    and, for a search point, the seedless configuration it searches (``config``); in a chained
    second phase the inits its source trial handed it, or why it got none (``inits_error``).

    Tune's config carries a point as :meth:`to_tune` writes it, plain JSON values with the spec
    as its canonical dump, never this object: Tune pickles trial configs into its experiment
    state, which a resumed sweep loads again (:mod:`pipeline.sweep.tunestate`), and a config of
    plain values restores whatever the project's classes have become since, as do the configs
    sweeps started before this class existed. The spec is parsed once where a config comes back
    from Tune (:meth:`from_tune`: the trainable's entry, the results' collection); everything
    after that uses the parsed spec.
    """

    spec: TrialSpec
    name: str
    key: str
    config: str | None = None
    lr: float | None = None
    role: Role | None = None
    inits: dict[str, Any] | None = None
    inits_error: str | None = None

    def to_tune(self) -> dict[str, Any]:
        """The point as Tune's config carries it (the optional parts only when set)."""
        out: dict[str, Any] = {
            "trial": self.spec.model_dump(mode="json"),
            "name": self.name,
            "key": self.key,
        }
        for part in _OPTIONAL:
            value = getattr(self, part)
            if value is not None:
                out[part] = value
        return out

    @classmethod
    def from_tune(cls, point: Mapping[str, Any]) -> GridPoint:
        """The point a Tune config carries (:meth:`to_tune`), its spec parsed."""
        lr = point.get("lr")
        return cls(
            spec=TrialSpec.model_validate(point["trial"]),
            name=str(point["name"]),
            key=str(point["key"]),
            config=point.get("config"),
            lr=None if lr is None else float(lr),
            role=point.get("role"),
            inits=point.get("inits"),
            inits_error=point.get("inits_error"),
        )

    def with_lr(self, lr: float, role: Role) -> GridPoint:
        """The point trained at learning rate ``lr``: a search sample (``role`` ``search``,
        named after its lr) or a final trial (``tuned``, same name); its key hashes the lr in."""
        key = sha256_hex(f"{self.key}:{role}:{lr!r}", 16)
        name = f"{self.name}-lr{lr:.3g}" if role == "search" else self.name
        return dataclasses.replace(self, key=key, name=name, lr=lr, role=role)


@dataclass(frozen=True)
class Grid:
    """A sweep's trials as grid points (:class:`GridPoint`) and the sweep's key."""

    points: list[GridPoint]
    key: str

    @property
    def name(self) -> str:
        """The Tune experiment's name (its folder under ``ray.storage_path``)."""
        return f"sweep-{self.key}"


def build_grid(cfg: StudyConfig) -> Grid:
    """The study's trials in grid order, each keyed once."""
    points = [GridPoint(t, t.name, trial_key(cfg, t)) for t in cfg.trials()]
    keys: list[Any] = sorted(p.key for p in points)
    if cfg.sweep.search == "tuned":  # another sweep than the grid's (same trials, searched lr)
        keys = [keys, cfg.sweep.tune.model_dump(mode="json")]
    return Grid(points, sha256_hex(json.dumps(keys), 12))


def search_points(cfg: StudyConfig, grid: Grid) -> list[GridPoint]:
    """``sweep.search: tuned``: one search point per seedless grid configuration, in grid
    order, trained with ``sweep.tune.search_seed``; ``config`` names that configuration."""
    out: dict[str, GridPoint] = {}
    for p in grid.points:
        config = p.spec.config_name
        if config not in out:
            s = p.spec.model_copy(update={"seed": cfg.sweep.tune.search_seed})
            out[config] = GridPoint(s, f"{config}-search", trial_key(cfg, s), config=config)
    return list(out.values())


def trial_key(cfg: StudyConfig, spec: TrialSpec) -> str:
    """A stable hash of one trial and everything in the study that shapes it."""
    payload = {"trial": spec.model_dump(mode="json"), "study": trial_context(cfg, spec.prior)}
    return sha256_hex(json.dumps(payload, sort_keys=True), 16)


def trial_context(cfg: StudyConfig, prior: str) -> dict[str, Any]:
    """Everything outside a TrialSpec that changes what a trial of ``prior`` computes (for a PnP
    prior also its resolved architecture and the sha256 of its weights file: retrained weights
    make new trials, other pretrain options do not)."""
    context: dict[str, Any] = {
        "data": cfg.data.model_dump(mode="json"),
        "prior": cfg.priors[prior].model_dump(mode="json"),
        "train": _train_context(cfg, prior),
        "deq": cfg.sweep.deq.model_dump(mode="json"),
    }
    context.update(cfg.priors[prior].trial_context(cfg))
    return context


def _train_context(cfg: StudyConfig, prior: str) -> dict[str, Any]:
    """The train section as a trial of ``prior`` sees it; ``compile`` only when on (it changes
    the rounding of the untracked steps, not the trial: eager trials keep their earlier keys)."""
    train = cfg.train_for(prior).model_dump(mode="json")
    if not train.get("compile"):
        train.pop("compile", None)
    return train


def trial_params(
    cfg: StudyConfig, point: GridPoint, bundle: WeightsBundle | None
) -> dict[str, Any]:
    """A trial's MLflow parameters: its spec and :func:`trial_context` with the configured
    weights path, and the sha256 of the shipped file where the node has no copy at that path."""
    prior = point.spec.prior
    params = {"trial": point.spec.model_dump(mode="json"), **trial_context(cfg, prior)}
    if point.role == "tuned":
        params["tuned_lr"] = point.lr
    elif point.role == "search":
        params["search_lr"] = point.lr
    if bundle is not None and prior in bundle.priors:
        params["weights_sha256"] = bundle.priors[prior]
    return params
