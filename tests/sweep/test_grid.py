"""Trial identity (``pipeline.sweep.grid``): the keys a resumed sweep finds its runs by.

The pinned keys are what a sweep started earlier was stored under: when a change to the params
schema or to the hashing moves them, every earlier sweep restarts from scratch instead of
resuming. Update them only on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pipeline.core.denoisers import build_denoiser
from pipeline.study.config import StudyConfig, TrialSpec, parse_params
from pipeline.sweep.grid import GridPoint, build_grid, search_points, trial_context, trial_key

STUDY: dict[str, Any] = {
    "data": {"source": "imgs"},
    "priors": {
        "l1": {"type": "wavelet", "levels": 2, "step_size": 0.3, "train": {"epochs": 3}},
        "pnp": {"type": "pnp", "step_size": 0.5},
    },
    "sweep": {
        "priors": ["l1", "pnp"],
        "estimators": ["deq", "rjfb"],
        "depths": [2],
        "restarts": [0, 1],
    },
}


def _study(raw: dict[str, Any], root: Path = Path("/nonexistent")) -> StudyConfig:
    return parse_params(raw).with_root(root)


def test_keys_are_stable() -> None:
    # changed once more with the pretraining crops (data.pretrain_*), TrialSpec.jac_reg and
    # train.probe_every; and with the zoo's TrialSpec fields (steps, damping, refine, solver)
    # and sweep.deq.broyden_memory (issue 24)
    grid = build_grid(_study(STUDY))
    assert {p.name: p.key for p in grid.points} == {
        "l1-deq-s0": "44d7597e64e06689",
        "l1-rjfb-K2-T0-s0": "37b690a808edb510",
        "l1-rjfb-K2-T1-s0": "6d43eb03b84f0f9d",
        "pnp-deq-s0": "9d0ee70dd110af00",
        "pnp-rjfb-K2-T0-s0": "638eae6fa9409697",
        "pnp-rjfb-K2-T1-s0": "9e99c09b099d3a07",
    }
    assert grid.key == "ee090a3282c6"
    assert grid.name == "sweep-ee090a3282c6"


def test_grid_points_follow_the_trials_in_order() -> None:
    study = _study(STUDY)
    grid = build_grid(study)
    trials = study.trials()
    assert [p.name for p in grid.points] == [t.name for t in trials]
    assert [p.spec for p in grid.points] == trials
    assert [p.key for p in grid.points] == [trial_key(study, t) for t in trials]


SPEC_JSON = {
    "prior": "l1",
    "estimator": "rjfb",
    "depth": 2,
    "restarts": 0,
    "restart_tol": None,
    "start": "y",
    "iterations": None,
    "seed": 0,
    "jac_reg": 0.0,
    "steps": None,
    "damping": None,
    "refine": 0,
    "solver": None,
}


def test_tune_configs_carry_points_as_plain_values_in_their_earlier_layout() -> None:
    """Tune keeps its trials' configs in the experiment state a resumed sweep loads: a point
    travels as plain JSON values in the layout sweeps started earlier stored (so they resume),
    never as a project object, and comes back as the same point, its spec parsed. The search
    and tuned keys and names are pinned like the grid's (an earlier tuned sweep's)."""
    point = build_grid(_study(STUDY)).points[1]
    assert point.to_tune() == {
        "trial": SPEC_JSON,
        "name": "l1-rjfb-K2-T0-s0",
        "key": "37b690a808edb510",
    }
    search = point.with_lr(0.02, "search")
    tuned = point.with_lr(0.02, "tuned")
    assert search.to_tune() == {
        "trial": SPEC_JSON,
        "name": "l1-rjfb-K2-T0-s0-lr0.02",
        "key": "8e9265fd8e423077",
        "lr": 0.02,
        "role": "search",
    }
    assert (tuned.name, tuned.key, tuned.lr, tuned.role) == (
        point.name,
        "b35538151fa02d5e",
        0.02,
        "tuned",
    )
    study = _study({**STUDY, "sweep": {**STUDY["sweep"], "search": "tuned"}})
    first = search_points(study, build_grid(study))[1].to_tune()
    assert first == {
        "trial": SPEC_JSON,
        "name": "l1-rjfb-K2-T0-search",
        "key": "37b690a808edb510",
        "config": "l1-rjfb-K2-T0",
    }
    chained = GridPoint(point.spec, point.name, point.key, inits={"sigma_init": [0.1, 0.2]})
    for p in (point, search, tuned, chained):
        config = p.to_tune()
        assert json.loads(json.dumps(config)) == config  # plain values only
        back = GridPoint.from_tune(config)
        assert back == p and isinstance(back.spec, TrialSpec)


def test_a_prior_train_override_is_part_of_the_key() -> None:
    # a resumed sweep must not mix trials trained under different settings
    spec = TrialSpec(prior="l1", estimator="deq")
    other = {**STUDY, "priors": {**STUDY["priors"], "l1": {**STUDY["priors"]["l1"], "train": {}}}}
    assert trial_key(_study(STUDY), spec) != trial_key(_study(other), spec)
    assert build_grid(_study(STUDY)).key != build_grid(_study(other)).key


def _drunet_file(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    # the residual form has DRUNet's parameters: the same state dict loads either way
    torch.save(build_denoiser("drunet", 1, nc=4, nb=2).state_dict(), path)


def test_trial_key_follows_the_weights_file(tmp_path: Path) -> None:
    _drunet_file(tmp_path / "w.pt", seed=1)

    def pnp_study(**pretrain: Any) -> StudyConfig:
        raw = {
            "data": {"patch_size": 32},
            "pretrain": {"nc": 4, "nb": 2, **pretrain},
            "priors": {"pnp": {"type": "pnp", "weights": "w.pt"}},
            "sweep": {"priors": ["pnp"], "estimators": ["deq"]},
        }
        return _study(raw, tmp_path)

    study = pnp_study()
    spec = study.trials()[0]
    context = trial_context(study, "pnp")
    assert context["denoiser_arch"] == {"nc": 4, "nb": 2, "residual": True}
    assert len(context["weights_sha256"]) == 64
    key = trial_key(study, spec)
    _drunet_file(tmp_path / "w.pt", seed=5)  # retrained
    assert trial_key(study, spec) != key
    other = pnp_study(steps=7)
    assert trial_key(other, spec) == trial_key(study, spec)  # pretrain acts through the file only


def test_a_trial_error_the_driver_cannot_rebuild_is_shipped_as_text() -> None:
    """Tune pickles a trial's exception to the driver; pydantic's ValidationError cannot be
    rebuilt there (Ray then stops the whole sweep), so it travels as a RuntimeError with its
    type and message, while the project's own errors travel as they are."""
    import pickle

    from pydantic import BaseModel, ValidationError

    from pipeline.sweep.trainable import shippable_error
    from pipeline.util.errors import DataError

    class M(BaseModel):
        x: int

    try:
        M(x="no")
    except ValidationError as err:
        shipped = shippable_error(err)
    assert type(shipped) is RuntimeError and str(shipped).startswith("ValidationError: ")
    pickle.loads(pickle.dumps(shipped))
    builtin = ValueError("v")
    assert shippable_error(builtin) is builtin
    own = DataError("prepared/train.npz: truncated")
    assert shippable_error(own) is own
