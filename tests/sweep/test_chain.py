"""A sweep whose PnP prior chains σ from another's results runs in two phases.

One in-process sweep on a local Ray (2 CPUs) and an sqlite MLflow store, with a frozen tiny
DRUNet prior ``pnp`` and ``fb``, the same DRUNet trained inside FB with ``sigma_init_from: pnp``,
over seeds 0 and 1 (DEQ trials); plus ``gone`` (its weights file does not exist, so its trial
fails) and ``gone_fb`` chained from it (seed 0 only). Phase 1 runs ``pnp`` and ``gone``; phase 2
runs ``fb`` with σ read from the trials table and ``gone_fb``, which fails alone with a reason
naming its failed source. Both phases' trials are children of one parent run, the tables are in
grid order, and running the sweep again changes nothing (no new runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import sweep_and_rerun, tiny_data
from test_sweep_checks import save_denoiser

PNP = {
    "type": "pnp",
    "weights": "models/denoiser.pt",
    "step_size": 0.5,
    "learn_relaxation": False,
}
STUDY: dict[str, Any] = {
    "data": tiny_data(patches_per_image=2),
    "pretrain": {"nc": 4, "nb": 1},
    "priors": {
        # seeds jitter its initial θ, so seeds 0 and 1 learn different σ
        "pnp": {**PNP, "train": {"init_jitter": 0.2}},
        "fb": {
            **PNP,
            "train_denoiser": True,
            "denoiser_lr": None,
            "sigma_init_from": "pnp",
            "train": {"lr": 5e-4},
        },
        "gone": {**PNP, "weights": "models/none.pt"},
        "gone_fb": {**PNP, "sigma_init_from": "gone"},
    },
    "train": {
        "epochs": 1,
        "batch_size": 2,
        "steps_per_epoch": 1,
        "probe_batch_size": 2,
        "eval_max_iter": 30,
    },
    "sweep": {
        "priors": ["pnp", "fb"],
        "estimators": ["deq"],
        "seeds": [0, 1],
        "extra_trials": [
            {"prior": "gone", "estimator": "deq"},
            {"prior": "gone_fb", "estimator": "deq"},
        ],
        "deq": {"tol": 1e-3, "max_iter": 30, "backward_tol": 1e-3, "backward_max_iter": 30},
    },
    # one trial at a time: one worker per phase imports torch (most of a trial's time here)
    "ray": {"num_cpus": 2, "max_concurrent_trials": 1},
    "mlflow": {"experiment": "chain"},
    "report": {"images": 1},
}
ORDER = ["pnp-deq-s0", "pnp-deq-s1", "fb-deq-s0", "fb-deq-s1", "gone-deq-s0", "gone_fb-deq-s0"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare

    root = tmp_path_factory.mktemp("chain")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    save_denoiser(root / "models" / "denoiser.pt")
    prepare(load_params(root / "params.yaml"), root / "data" / "prepared", progress=False)
    return root


@pytest.fixture(scope="module")
def swept(root: Path, ray_session) -> dict[str, Any]:
    return sweep_and_rerun(root)


def test_the_chained_trials_start_from_the_sigma_their_source_learned(
    swept: dict[str, Any],
) -> None:
    t = swept["trials"].set_index("name")
    learned = {s: json.loads(t.loc[f"pnp-deq-s{s}", "theta_json"])["sigma"] for s in (0, 1)}
    assert learned[0] != learned[1]  # seeds train differently: "the same seed" matters
    for seed in (0, 1):
        row = t.loc[f"fb-deq-s{seed}"]
        assert row["status"] == "finished", row["status_reason"]
        inits = json.loads(row["inits_json"])
        sigma = learned[seed] if isinstance(learned[seed], list) else [learned[seed]]
        assert inits["overrides"] == {"sigma_init": sigma, "sigma_init_from": f"pnp-deq-s{seed}"}
        assert inits["theta"]["sigma"] == pytest.approx(learned[seed], rel=1e-5)
        assert sigma != [STUDY["priors"]["fb"].get("sigma_init", 0.05)]  # not the typed value


def test_a_chained_trial_whose_source_failed_fails_alone(swept: dict[str, Any]) -> None:
    t = swept["trials"].set_index("name")
    assert t.loc["gone-deq-s0", "status"] == "failed"
    assert "none.pt" in t.loc["gone-deq-s0", "status_reason"]
    reason = t.loc["gone_fb-deq-s0", "status_reason"]
    assert t.loc["gone_fb-deq-s0", "status"] == "failed"
    assert reason.startswith("sigma_init_from 'gone': no source trial of seed 0"), reason
    assert "gone-deq-s0: failed" in reason and "none.pt" in reason, reason
    assert (t["status"] == "finished").sum() == 4


def test_both_phases_are_children_of_one_parent_in_grid_order(swept: dict[str, Any]) -> None:
    from pipeline.sweep import tracking
    from pipeline.sweep.grid import build_grid

    cfg, trials = swept["cfg"], swept["trials"]
    assert list(trials["name"]) == ORDER
    history = swept["history"]
    assert list(dict.fromkeys(history["name"])) == ORDER[:4]  # grid order; failed: no epochs
    runs = swept["runs"]
    parents = [r for r in runs if tracking.PARENT not in r.data.tags]
    children = [r for r in runs if tracking.PARENT in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags[tracking.PARENT] for r in children} == {parents[0].info.run_id}
    by_name = {r.data.tags[tracking.RUN_NAME]: r for r in children}
    assert sorted(by_name) == sorted(ORDER)
    ids = set(trials["mlflow_run_id"]) - {""}  # a trial that raised (gone) reports none
    assert ids == {r.info.run_id for r in children} - {by_name["gone-deq-s0"].info.run_id}
    # trial keys do not depend on the inits; the inits are logged as parameters
    keys = {p.name: p.key for p in build_grid(cfg).points}
    assert {n: r.data.tags[tracking.TRIAL_KEY] for n, r in by_name.items()} == keys
    fb = by_name["fb-deq-s0"].data.params
    assert fb["inits.sigma_init_from"] == "pnp-deq-s0"
    assert (
        json.loads(fb["inits.sigma_init"])
        == json.loads(trials.set_index("name").loc["fb-deq-s0", "inits_json"])["overrides"][
            "sigma_init"
        ]
    )
    assert by_name["gone_fb-deq-s0"].info.status == "FAILED"
    assert by_name["gone_fb-deq-s0"].data.tags[tracking.STATUS] == "failed"
    # each phase is its own Tune experiment under the storage path
    grid = build_grid(cfg)
    storage = Path(cfg.storage_path)
    assert (storage / grid.name).is_dir()
    assert len(list(storage.glob(f"{grid.name}-p2-*"))) == 1


def test_a_rerun_after_completion_is_a_no_op(swept: dict[str, Any]) -> None:
    import pandas as pd

    before = {r.info.run_id: (r.info.status, r.info.end_time) for r in swept["runs"]}
    after = {r.info.run_id: r.info.status for r in swept["runs_after"]}
    assert set(after) == set(before)  # no new runs
    assert after == {k: v[0] for k, v in before.items()}
    for r in swept["runs_after"]:
        # Tune retries a trial that raised (gone-deq-s0, which fails again): its source result
        # is unchanged, so the second phase is restored as it was and nothing else runs again
        if "mlflow.parentRunId" in r.data.tags and r.info.run_name != "gone-deq-s0":
            assert r.info.end_time == before[r.info.run_id][1], r.info.run_name
    cols = ["name", "status", "status_reason", "theta_json", "inits_json", "mlflow_run_id"]
    pd.testing.assert_frame_equal(swept["again"][cols], swept["trials"][cols])
    pd.testing.assert_frame_equal(swept["again_history"], swept["history"])
    print(f"sweep {swept['seconds'][0]:.1f} s, rerun {swept['seconds'][1]:.1f} s")


def test_check_lists_the_phases(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    assert main(["check", "--params", str(root / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "6 trials in 2 phases" in out
    phase1, phase2 = out.split("phase 2", 1)
    assert all(f"    {n}\n" in phase1 for n in ("pnp-deq-s0", "pnp-deq-s1", "gone-deq-s0"))
    assert "    fb-deq-s1  (sigma_init_from pnp)" in phase2
    assert "    gone_fb-deq-s0  (sigma_init_from gone)" in phase2


def test_chain_failures_name_the_failed_sources_and_spare_absent_ones() -> None:
    from pipeline.study.chain import chain_failures
    from pipeline.study.config import parse_params

    raw = {**STUDY, "sweep": {**STUDY["sweep"], "extra_trials": []}}
    study = parse_params(raw)
    rows = [
        {"name": "pnp-deq-s0", "prior": "pnp", "estimator": "deq", "depth": 1, "restarts": 0,
         "seed": 0, "status": "finished", "theta_json": json.dumps({"sigma": 0.04})},
        {"name": "pnp-deq-s1", "prior": "pnp", "estimator": "deq", "depth": 1, "restarts": 0,
         "seed": 1, "status": "diverged", "status_reason": "epoch 1: loss is nan",
         "theta_json": "{}"},
    ]  # fmt: skip
    assert chain_failures(study, rows) == {
        "fb-deq-s1": "sigma_init_from 'pnp': no source trial of seed 1 finished with a learned "
        "sigma to start from (pnp-deq-s1: diverged (epoch 1: loss is nan))"
    }
    # no trial of the source to read from at all: the configured sigma_init, no failure
    assert chain_failures(study, rows[:1]) == {}
