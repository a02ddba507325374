"""Trial identity: which trials a sweep runs and the keys that find them again.

A trial's key hashes its grid point with everything in the study that shapes what it computes
(:func:`trial_context`); the sweep's key hashes its trials' keys. A resumed sweep finds its Tune
experiment (``<storage_path>/sweep-<key>``) and its MLflow runs (tags) by these keys, so what goes
into them must not change: the same study must give the same bytes.

    grid = build_grid(cfg)
    grid.key, grid.name                 # '3f2a…', 'sweep-3f2a…'
    grid.points[0]                      # {'trial': {...}, 'name': 'l1-deq-s0', 'key': '…'}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.study.config import StudyConfig, TrialSpec
from pipeline.sweep.shipping import WeightsBundle
from pipeline.util.hashing import sha256_hex


@dataclass(frozen=True)
class Grid:
    """A sweep's trials as Tune grid points (``trial``, ``name``, ``key``) and the sweep's key."""

    points: list[dict[str, Any]]
    key: str

    @property
    def name(self) -> str:
        """The Tune experiment's name (its folder under ``ray.storage_path``)."""
        return f"sweep-{self.key}"


def build_grid(cfg: StudyConfig) -> Grid:
    """The study's trials in grid order, each keyed once."""
    points = [
        {"trial": t.model_dump(mode="json"), "name": t.name, "key": trial_key(cfg, t)}
        for t in cfg.trials()
    ]
    keys: list[Any] = sorted(p["key"] for p in points)
    if cfg.sweep.search == "tuned":  # another sweep than the grid's (same trials, searched lr)
        keys = [keys, cfg.sweep.tune.model_dump(mode="json")]
    return Grid(points, sha256_hex(json.dumps(keys), 12))


def search_points(cfg: StudyConfig, grid: Grid) -> list[dict[str, Any]]:
    """``sweep.search: tuned``: one search point per seedless grid configuration, in grid
    order, trained with ``sweep.tune.search_seed``; ``config`` names that configuration."""
    out: dict[str, dict[str, Any]] = {}
    for p in grid.points:
        spec = TrialSpec.model_validate(p["trial"])
        config = spec.config_name
        if config not in out:
            s = spec.model_copy(update={"seed": cfg.sweep.tune.search_seed})
            out[config] = {
                "trial": s.model_dump(mode="json"),
                "name": f"{config}-search",
                "key": trial_key(cfg, s),
                "config": config,
            }
    return list(out.values())


def with_lr(point: dict[str, Any], lr: float, role: str) -> dict[str, Any]:
    """``point`` trained at learning rate ``lr``: a search sample (``role`` ``search``, named
    after its lr) or a final trial (``tuned``, same name); its key hashes the lr in."""
    key = sha256_hex(f"{point['key']}:{role}:{lr!r}", 16)
    name = f"{point['name']}-lr{lr:.3g}" if role == "search" else point["name"]
    return {**point, "key": key, "name": name, "lr": lr, "role": role}


def config_of(point: dict[str, Any]) -> str:
    """The seedless configuration a grid point belongs to."""
    return TrialSpec.model_validate(point["trial"]).config_name


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
    cfg: StudyConfig, point: dict[str, Any], prior: str, bundle: WeightsBundle | None
) -> dict[str, Any]:
    """A trial's MLflow parameters: its grid point and :func:`trial_context` with the configured
    weights path, and the sha256 of the shipped file where the node has no copy at that path."""
    params = {"trial": point["trial"], **trial_context(cfg, prior)}
    if point.get("role") == "tuned":
        params["tuned_lr"] = point["lr"]
    elif point.get("role") == "search":
        params["search_lr"] = point["lr"]
    if bundle is not None and prior in bundle.priors:
        params["weights_sha256"] = bundle.priors[prior]
    return params
