"""``scheme_key``: priors that train the same scheme share it whatever their train section."""

from __future__ import annotations

from pipeline.study.config import parse_params
from pipeline.sweep.results import scheme_key

L12 = {"type": "wavelet", "norm": "weighted_l12", "levels": 2, "reg_init": 0.01}


def test_priors_differing_only_in_training_share_the_scheme_key() -> None:
    study = parse_params(
        {
            "priors": {
                "a": L12,
                "noise": {**L12, "train": {"seed_train_noise": False}},
                "long": {**L12, "train": {"epochs": 12}},
                "tau": {**L12, "learn_step_size": True},
            },
            "sweep": {"priors": ["a"], "estimators": ["deq"]},
        }
    )
    keys = {name: scheme_key(p) for name, p in study.priors.items()}
    assert keys["a"] == keys["noise"] == keys["long"]
    assert keys["tau"] != keys["a"]
    assert len(keys["a"]) == 16
