"""``sweep.search: tuned``: a search per configuration, then its best lr on every seed.

One in-process sweep on a local Ray (2 CPUs) and an sqlite MLflow store: a tiny wavelet prior,
one configuration (``l1-rjfb-K2-T0``) over seeds 0 and 1. Its search phase samples 2 learning
rates (Optuna TPE, seeded) for 2 epochs under ASHA (grace period 1); the final phase trains the
best one on both seeds. Every trial of both phases is a child run of the one parent; a pruned
search trial ends KILLED with ``rjfb.status = pruned``; running the sweep again is a no-op.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import sweep_and_rerun, tiny_rjfb_sweep

_BASE = tiny_rjfb_sweep("tuned", epochs=2, concurrent=1)
STUDY: dict[str, Any] = {
    **_BASE,
    "sweep": {
        **_BASE["sweep"],
        "search": "tuned",
        "tune": {
            "samples": 2,
            "algorithm": "optuna",
            "seed": 2,  # samples 0.12 then 0.0116: the second trails at epoch 1, ASHA prunes it
            "grace_period": 1,
            "space": {"lr": {"dist": "loguniform", "low": 1e-2, "high": 3.0}},
        },
    },
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare

    root = tmp_path_factory.mktemp("tuned")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    prepare(load_params(root / "params.yaml"), root / "data" / "prepared", progress=False)
    return root


@pytest.fixture(scope="module")
def swept(root: Path, ray_session) -> dict[str, Any]:
    from pipeline.sweep.driver import run_sweep

    def lose_the_final_phase(cfg: Any) -> dict[str, Any]:
        # the final phase's experiment lost (a driver killed before Tune saved it, so its
        # parent run is not FINISHED: a finished sweep is never restored): the search is
        # restored, picks the same lr, and the final trials find their finished runs
        from pipeline.sweep import tracking

        c = tracking.client(cfg.tracking_uri)
        exp = c.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
        for run in c.search_runs([exp], max_results=1000):
            if tracking.PARENT not in run.data.tags:
                c.set_terminated(run.info.run_id, "KILLED")
        for d in Path(cfg.storage_path).glob("sweep-*-tuned-*"):
            shutil.rmtree(d)
        lost, _ = run_sweep(cfg, root / "data" / "prepared")
        return {"lost": lost}

    return sweep_and_rerun(root, lose_the_final_phase)


def _children(runs: list[Any]) -> tuple[Any, list[Any], list[Any]]:
    from pipeline.sweep import tracking

    parents = [r for r in runs if tracking.PARENT not in r.data.tags]
    assert len(parents) == 1
    children = [r for r in runs if tracking.PARENT in r.data.tags]
    search = [r for r in children if "search_lr" in r.data.params]
    final = [r for r in children if "tuned_lr" in r.data.params]
    assert len(search) + len(final) == len(children)
    return parents[0], search, final


def test_the_search_phase_trials_are_child_runs(swept: dict[str, Any]) -> None:
    from pipeline.sweep import tracking

    parent, search, final = _children(swept["runs"])
    assert parent.info.status == "FINISHED"
    assert len(search) == 2 and len(final) == 2
    assert {r.data.tags[tracking.PARENT] for r in search + final} == {parent.info.run_id}
    lrs = {float(r.data.params["search_lr"]) for r in search}
    assert len(lrs) == 2 and all(1e-2 <= lr <= 3.0 for lr in lrs)
    for r in search:
        assert r.info.run_name.startswith("l1-rjfb-K2-T0-search-lr"), r.info.run_name
        assert float(r.data.params["train.lr"]) == float(r.data.params["search_lr"])
        # each search trial either finished or was pruned by ASHA: never left running
        status = r.data.tags[tracking.STATUS]
        if status == "pruned":
            assert r.info.status == "KILLED"
            assert "ASHA" in r.data.tags[tracking.REASON]
        else:
            assert (status, r.info.status) == ("finished", "FINISHED")
    # seed 2 samples 0.12 then 0.0116, which trails at epoch 1 (ASHA's rung): pruned there
    fates = {round(float(r.data.params["search_lr"]), 4): r for r in search}
    assert {lr: r.data.tags[tracking.STATUS] for lr, r in fates.items()} == {
        0.1202: "finished",
        0.0116: "pruned",
    }
    assert sorted(fates[0.0116].data.metrics) and "final_val_psnr" not in fates[0.0116].data.metrics


def test_the_final_trials_use_the_best_sampled_lr(swept: dict[str, Any]) -> None:
    _, search, final = _children(swept["runs"])
    done = [r for r in search if r.data.tags["rjfb.status"] == "finished"]
    best = max(
        done, key=lambda r: (r.data.metrics["final_val_psnr"], -float(r.data.params["search_lr"]))
    )
    lr = float(best.data.params["search_lr"])
    trials = swept["trials"]
    assert list(trials["name"]) == ["l1-rjfb-K2-T0-s0", "l1-rjfb-K2-T0-s1"]
    assert (trials["status"] == "finished").all(), trials["status_reason"].tolist()
    assert trials["tuned_lr"].tolist() == pytest.approx([lr, lr])
    for r in final:
        assert float(r.data.params["tuned_lr"]) == pytest.approx(lr)
        assert float(r.data.params["train.lr"]) == pytest.approx(lr)
        assert r.info.status == "FINISHED"
    assert set(trials["mlflow_run_id"]) == {r.info.run_id for r in final}
    assert list(dict.fromkeys(swept["history"]["name"])) == list(trials["name"])


def test_each_phase_is_its_own_tune_experiment(swept: dict[str, Any]) -> None:
    from pipeline.sweep.grid import build_grid

    cfg = swept["cfg"]
    grid = build_grid(cfg)
    storage = Path(cfg.storage_path)
    assert (storage / f"{grid.name}-search-0").is_dir()
    assert len(list(storage.glob(f"{grid.name}-tuned-*"))) == 1


def test_a_rerun_after_completion_is_a_no_op(swept: dict[str, Any]) -> None:
    import pandas as pd

    before = {r.info.run_id: (r.info.status, r.info.end_time) for r in swept["runs"]}
    after = {r.info.run_id: (r.info.status, r.info.end_time) for r in swept["runs_after"]}
    assert set(after) == set(before)  # no new runs
    for run_id, (status, end) in after.items():
        if (
            "mlflow.parentRunId"
            in next(r for r in swept["runs_after"] if r.info.run_id == run_id).data.tags
        ):
            assert (status, end) == before[run_id]  # no trial ran again
    cols = ["name", "status", "tuned_lr", "theta_json", "mlflow_run_id"]
    pd.testing.assert_frame_equal(swept["again"][cols], swept["trials"][cols])
    pd.testing.assert_frame_equal(swept["lost"][cols], swept["trials"][cols])
    pd.testing.assert_frame_equal(swept["again_history"], swept["history"])
    print(f"tuned sweep {swept['seconds'][0]:.1f} s, rerun {swept['seconds'][1]:.1f} s")


def test_the_grid_mode_keeps_its_trial_keys() -> None:
    from pipeline.study.config import parse_params
    from pipeline.sweep.grid import build_grid, search_points

    raw = {
        **STUDY,
        "sweep": {k: v for k, v in STUDY["sweep"].items() if k not in ("search", "tune")},
    }
    grid = build_grid(parse_params(raw))
    explicit = build_grid(parse_params({**raw, "sweep": {**raw["sweep"], "search": "grid"}}))
    tuned_cfg = parse_params(STUDY)
    tuned = build_grid(tuned_cfg)
    assert grid == explicit
    assert [p.key for p in tuned.points] == [p.key for p in grid.points]
    assert tuned.key != grid.key  # a tuned sweep is another sweep (its own experiments)
    assert [p.name for p in search_points(tuned_cfg, tuned)] == ["l1-rjfb-K2-T0-search"]


def test_a_tuned_lr_reaches_only_its_priors_trials() -> None:
    """A tuned trial's study (``StudyConfig.with_lr``): its prior's train overrides gain the lr
    and keep what was written (an explicit ``steps_per_epoch: null`` still resets it), the
    other priors and the root stay, and the dump validates back to the same study (Ray hands
    trials the study as a dump; MLflow logs it)."""
    from pydantic import ValidationError

    from pipeline.study.config import StudyConfig, parse_params

    raw = {
        **STUDY,
        "train": {**STUDY.get("train", {}), "steps_per_epoch": 3, "lr": 0.05},
        "priors": {
            "l1": {"type": "wavelet", "train": {"epochs": 4, "steps_per_epoch": None}},
            "l2": {"type": "wavelet"},
        },
        "sweep": {**STUDY["sweep"], "priors": ["l1", "l2"]},
    }
    cfg = parse_params(raw).with_root(Path("/somewhere"))
    for prior, other in (("l1", "l2"), ("l2", "l1")):
        tuned = cfg.with_lr(prior, 0.0123)
        assert tuned.train_for(prior) == cfg.train_for(prior).model_copy(update={"lr": 0.0123})
        assert tuned.train_for(other) == cfg.train_for(other)
        assert tuned.root == Path("/somewhere")
        again = StudyConfig.model_validate(tuned.model_dump(mode="json"))
        assert again.model_dump(mode="json") == tuned.model_dump(mode="json")
    assert cfg.with_lr("l1", 0.0123).train_for("l1").steps_per_epoch is None
    assert cfg.with_lr("l2", 0.0123).train_for("l2").steps_per_epoch == 3
    assert cfg.train_for("l1").lr == 0.05  # the study itself unchanged
    with pytest.raises(ValidationError, match="greater than 0"):  # validated like a written lr
        cfg.with_lr("l1", -1.0)


def test_tuned_refuses_chained_priors_and_bad_bounds() -> None:
    from pipeline.study.config import parse_params
    from pipeline.sweep.driver import check_search
    from pipeline.util.errors import ConfigError

    bad = {**STUDY["sweep"], "tune": {"space": {"lr": {"low": 0.1, "high": 0.01}}}}
    with pytest.raises(ConfigError, match="high"):
        parse_params({**STUDY, "sweep": bad})
    pnp = {"type": "pnp", "weights": "models/denoiser.pt"}
    chained = {
        **STUDY,
        "priors": {"pnp": pnp, "fb": {**pnp, "sigma_init_from": "pnp"}},
        "sweep": {**STUDY["sweep"], "priors": ["pnp", "fb"], "estimators": ["deq"]},
    }
    with pytest.raises(ConfigError, match="sigma_init_from"):
        check_search(parse_params(chained))


@pytest.mark.parametrize("algorithm", ["optuna", "random"])
def test_the_search_tuner_uses_the_algorithm_under_asha(algorithm: str, tmp_path: Path) -> None:
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    from pipeline.study.config import parse_params
    from pipeline.sweep.driver import search_tuner
    from pipeline.sweep.grid import build_grid, search_points

    sweep = {**STUDY["sweep"], "tune": {**STUDY["sweep"]["tune"], "algorithm": algorithm}}
    cfg = parse_params(
        {**STUDY, "sweep": sweep, "ray": {**STUDY["ray"], "storage_path": str(tmp_path)}}
    )
    point = search_points(cfg, build_grid(cfg))[0]
    tuner = search_tuner(cfg, point, "s", str(tmp_path / "s"), lambda config: None, False)
    tc = tuner._local_tuner._tune_config
    assert isinstance(tc.scheduler, ASHAScheduler) and tc.num_samples == 2
    kind = OptunaSearch if algorithm == "optuna" else BasicVariantGenerator
    assert isinstance(tc.search_alg, kind)
    assert (tc.metric, tc.mode) == ("val_psnr", "max")
