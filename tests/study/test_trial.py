"""run_trial on PnP priors, in process (no Ray): frozen and trained denoisers, per-layer σ,
bfloat16 restarts, per-prior training options, checkpoints, devices."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch

from pipeline.core.denoisers import build_denoiser
from pipeline.study.build import resolve_device
from pipeline.study.config import StudyConfig, TrialSpec, parse_params
from pipeline.study.data import prepare
from pipeline.study.phases import PHASE_COLUMNS
from pipeline.study.trial import Trial, run_trial
from pipeline.util.errors import ConfigError

PNP = {
    "type": "pnp",
    "weights": "models/denoiser.pt",
    "sigma_init": 0.08,
    "step_size": 0.5,
    "relaxation_init": 0.8,
    "train": {"epochs": 2, "steps_per_epoch": 2, "eval_tol": 1e-3, "eval_max_iter": 40},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_study(root: Path, **priors: dict) -> StudyConfig:
    raw = {
        "data": {
            "patch_size": 32,
            "patches_per_image": 4,
            "train_images": 3,
            "val_images": 1,
            "test_images": 1,
        },
        "pretrain": {"nc": 4, "nb": 1},
        "priors": {
            "pnp": PNP,
            "pnp_layer": {**PNP, "per_layer_sigma": True},
            "drunet_fb": {**PNP, "train_denoiser": True, "denoiser_lr": 1e-3},
            **priors,
        },
        "train": {"lr": 0.05, "batch_size": 4, "probe_batch_size": 2, "epochs": 5},
        "sweep": {
            "priors": ["pnp"],
            "estimators": ["deq"],
            "deq": {"tol": 1e-3, "max_iter": 40, "backward_tol": 1e-3, "backward_max_iter": 40},
        },
    }
    return parse_params(raw).with_root(root)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    prepare(make_study(root), root / "prepared", progress=False)
    (root / "models").mkdir()
    torch.manual_seed(0)
    # a small denoiser, scaled down so the PnP step contracts and the solves converge
    model = build_denoiser("drunet", 1, nc=4, nb=1)
    with torch.no_grad():
        model.m_tail.weight.mul_(0.5)
    torch.save(model.state_dict(), root / "models" / "denoiser.pt")
    return root


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "denoiser.pt", weights_only=True)


def test_pnp_trial_learns_theta_with_a_frozen_denoiser(root: Path) -> None:
    study = make_study(root)
    spec = TrialSpec(prior="pnp", estimator="rjfb", depth=2, restarts=2)
    rows = []
    result = run_trial(study, spec, root / "prepared", report=lambda r, s: rows.append(r))
    assert result.status == "finished", result.reason
    assert len(result.history) == 2 == len(rows)  # the prior's epochs, not the study's 5
    m = result.metrics
    for key in ("test_psnr", "test_psnr_at_depth", "grad_cos_vs_deq", "gamma_hat", "peak_mem_mib"):
        assert math.isfinite(m[key]), key
    assert m["peak_mem_mib"] > 0
    assert set(result.theta) == {"sigma", "tau", "relaxation"}
    assert result.theta["sigma"] != pytest.approx(0.08, rel=1e-4)  # σ moved
    assert result.theta["tau"] != pytest.approx(0.5, rel=1e-4)
    assert len(result.per_image_psnr) == 4
    trial = Trial(study, spec, root / "prepared")
    state = trial.scheme.denoiser.state_dict()
    assert all(torch.equal(state[k], v) for k, v in _weights(root).items())
    assert not any(p.requires_grad for p in trial.scheme.denoiser.parameters())


def test_per_layer_sigma_trial_and_its_deq_baseline(root: Path) -> None:
    study = make_study(root)
    rj = run_trial(study, TrialSpec(prior="pnp_layer", estimator="rjfb", depth=3, restarts=1),
                   root / "prepared")  # fmt: skip
    assert rj.status == "finished", rj.reason
    assert len(rj.theta["sigma"]) == 3
    assert len({round(s, 6) for s in rj.theta["sigma"]}) == 3  # each layer learned its own
    assert {f"theta.sigma.{i}" for i in range(3)} <= set(rj.metrics)
    deq = run_trial(study, TrialSpec(prior="pnp_layer", estimator="deq", depth=3),
                    root / "prepared")  # fmt: skip
    assert deq.status == "finished", deq.reason
    assert len(deq.theta["sigma"]) == 3


def test_trained_denoiser_uses_its_own_learning_rate(root: Path) -> None:
    study = make_study(root)
    spec = TrialSpec(prior="drunet_fb", estimator="rjfb", depth=2, restarts=1)
    trial = Trial(study, spec, root / "prepared")
    groups = trial.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.05, 1e-3]
    theta_ids = {id(p) for p in groups[0]["params"]}
    assert theta_ids == {id(trial.scheme.log_sigma), id(trial.scheme.logit_tau),
                         id(trial.scheme.logit_relaxation)}  # fmt: skip
    assert len(groups[1]["params"]) == len(list(trial.scheme.denoiser.parameters()))
    result = run_trial(study, spec, root / "prepared")
    assert result.status == "finished", result.reason
    # run_trial trained a fresh copy: compare a second Trial's restored weights to the file
    start = _weights(root)
    trained = Trial(study, spec, root / "prepared")
    trained.train_epoch()
    after = trained.scheme.denoiser.state_dict()
    moved = max(float((after[k] - start[k]).abs().max()) for k in start)
    assert 0 < moved <= 2 * 1e-3 * 2  # Adam moves each weight by <= ~lr per step (2 steps)


def test_bf16_restarts_change_test_psnr_by_less_than_005_db(root: Path) -> None:
    study = make_study(
        root, pnp_bf16={**PNP, "train": {**PNP["train"], "restart_autocast": "bfloat16"}}
    )
    assert study.train_for("pnp_bf16").restart_autocast == "bfloat16"
    assert study.train_for("pnp").restart_autocast is None
    a = run_trial(study, TrialSpec(prior="pnp", estimator="rjfb", depth=2, restarts=3),
                  root / "prepared")  # fmt: skip
    b = run_trial(study, TrialSpec(prior="pnp_bf16", estimator="rjfb", depth=2, restarts=3),
                  root / "prepared")  # fmt: skip
    assert a.status == b.status == "finished"
    assert abs(a.metrics["test_psnr"] - b.metrics["test_psnr"]) < 0.05
    for key in ("sigma", "tau", "relaxation"):
        assert b.theta[key] == pytest.approx(a.theta[key], rel=1e-2), key
    assert b.metrics["grad_cos_vs_deq"] == pytest.approx(a.metrics["grad_cos_vs_deq"], abs=1e-2)


def test_checkpoint_resume_reproduces_an_uninterrupted_pnp_trial(root: Path) -> None:
    study = make_study(root)
    spec = TrialSpec(prior="drunet_fb", estimator="rjfb", depth=2, restarts=1)
    saved: list[bytes] = []

    def report(row: dict, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)  # as the sweep does: the state holds live tensors
        saved.append(buf.getvalue())

    whole = run_trial(study, spec, root / "prepared", report=report)
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)  # after epoch 1
    resumed = run_trial(study, spec, root / "prepared", resume=state)
    assert resumed.theta == pytest.approx(whole.theta, rel=1e-6)
    assert resumed.metrics["test_psnr"] == pytest.approx(whole.metrics["test_psnr"], abs=1e-5)


L1 = {"type": "wavelet", "norm": "l1", "levels": 2, "reg_init": 0.01, "step_size": 0.3}


def test_deq_records_its_backward_residual_per_epoch(root: Path, monkeypatch) -> None:
    """``train_backward_residual``: the largest residual of an epoch's implicit backward solves
    (training steps only, not the probes'); estimators without one leave the key out."""
    from pipeline.core import estimators as gradients

    study = make_study(root, l1=L1)
    solved: list[tuple[int, float]] = []  # (epoch being trained, residual)
    epoch = {"training": None}
    train_epoch, solve = Trial.train_epoch, gradients._ImplicitSolve.solve

    def spy_train_epoch(self: Trial) -> tuple[float, float]:
        epoch["training"] = self.epoch
        try:
            return train_epoch(self)
        finally:
            epoch["training"] = None

    def spy_solve(self, z, fz, grad):
        v = solve(self, z, fz, grad)
        if epoch["training"] is not None:
            solved.append((epoch["training"], self.diagnostics.backward_residual))
        return v

    monkeypatch.setattr(Trial, "train_epoch", spy_train_epoch)
    monkeypatch.setattr(gradients._ImplicitSolve, "solve", spy_solve)
    deq = run_trial(study, TrialSpec(prior="l1", estimator="deq"), root / "prepared")
    assert deq.status == "finished", deq.reason
    assert len(deq.history) == 5
    for e, row in enumerate(deq.history):
        mine = [r for i, r in solved if i == e]
        assert len(mine) == 3  # 12 training patches, batches of 4
        assert row["train_backward_residual"] == max(mine)
        assert 0 <= row["train_backward_residual"] < study.sweep.deq.backward_tol
    assert deq.metrics["train_backward_residual"] == deq.history[-1]["train_backward_residual"]

    rj = run_trial(study, TrialSpec(prior="l1", estimator="rjfb", depth=2, restarts=2),
                   root / "prepared")  # fmt: skip
    assert rj.status == "finished", rj.reason
    assert all("train_backward_residual" not in row for row in rj.history)
    assert all(math.isfinite(v) for row in rj.history for v in row.values())


def test_bad_weights_fail_the_trial_with_the_prior_named(root: Path) -> None:
    study = make_study(root, wrong={**PNP, "nc": 8})
    with pytest.raises(ConfigError, match=r"priors\.wrong: .*do not match.*holds a DRUNet"):
        Trial(study, TrialSpec(prior="wrong", estimator="deq"), root / "prepared")


def test_prior_train_overrides(root: Path) -> None:
    study = make_study(root, reset={**PNP, "train": {"steps_per_epoch": None, "lr": 0.01}})
    assert study.train_for("pnp").steps_per_epoch == 2
    assert study.train_for("pnp").epochs == 2 and study.train_for("pnp").lr == 0.05
    reset = study.train_for("reset")
    assert reset.steps_per_epoch is None and reset.lr == 0.01 and reset.epochs == 5
    # Ray hands trials the study as a dump: only written keys survive the round trip
    again = StudyConfig.model_validate(study.model_dump(mode="json"))
    assert again.priors["pnp"].train.model_dump() == PNP["train"]
    for name in study.priors:
        assert again.train_for(name) == study.train_for(name), name
    with pytest.raises(ConfigError, match=r"priors\.x\.train\.epohcs: unknown key .*'epochs'"):
        make_study(root, x={**PNP, "train": {"epohcs": 3}})
    with pytest.raises(ConfigError, match=r"priors\.x\.train\.device: unknown key"):
        make_study(root, x={**PNP, "train": {"device": "cuda"}})
    with pytest.raises(ConfigError, match=r"priors\.x\.train\.restart_autocast"):
        make_study(root, x={**PNP, "train": {"restart_autocast": "float8"}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_device_resolution_without_cuda() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"train\.device: 'cuda' requested"):
        resolve_device("cuda")


def test_every_prior_type_has_a_scheme_builder() -> None:
    # a prior type is one config class (registered by subclassing) plus one scheme builder
    from pipeline.study.build import SCHEME_BUILDERS
    from pipeline.study.config import PRIOR_TYPES

    assert set(PRIOR_TYPES.values()) == set(SCHEME_BUILDERS)


@pytest.mark.slow  # Inductor builds C++ kernels: tens of seconds on a loaded 2-core machine
def test_compiled_untracked_steps_train_like_eager_ones(root: Path) -> None:
    """``train.compile``: the restarts run compiled, the tracked block eager; the trial learns
    the same θ up to float32 rounding (tests/core/test_compiled.py bounds the gradient)."""
    study = make_study(root, pnp_c={**PNP, "train": {**PNP["train"], "compile": True}})
    assert study.train_for("pnp_c").compile and not study.train_for("pnp").compile
    torch._dynamo.reset()
    a = run_trial(study, TrialSpec(prior="pnp", estimator="rjfb", depth=2, restarts=3),
                  root / "prepared")  # fmt: skip
    b = run_trial(study, TrialSpec(prior="pnp_c", estimator="rjfb", depth=2, restarts=3),
                  root / "prepared")  # fmt: skip
    assert a.status == b.status == "finished"
    for key in ("sigma", "tau", "relaxation"):
        assert b.theta[key] == pytest.approx(a.theta[key], rel=1e-4), key
    assert b.metrics["test_psnr"] == pytest.approx(a.metrics["test_psnr"], abs=1e-3)


def test_a_compiler_failure_names_train_compile(root: Path, monkeypatch) -> None:
    """No silent fallback: a failing torch.compile stops the trial with one line naming the
    setting (a backend that raises stands in for a missing C++ compiler or Triton)."""
    from pipeline.core import compiled
    from pipeline.study import trial_loop as trial_module

    def broken(gm, inputs):
        raise RuntimeError("no working C++ compiler\n(details)")

    monkeypatch.setattr(
        trial_module, "compile_no_grad", lambda step: compiled.compile_no_grad(step, backend=broken)
    )
    torch._dynamo.reset()
    study = make_study(root, pnp_c={**PNP, "train": {**PNP["train"], "compile": True}})
    with pytest.raises(ConfigError) as info:
        run_trial(study, TrialSpec(prior="pnp_c", estimator="rjfb", depth=2, restarts=1),
                  root / "prepared")  # fmt: skip
    message = str(info.value)
    assert message.startswith("train.compile: torch.compile failed") and "\n" not in message
    assert "no working C++ compiler" in message


def test_jac_reg_is_a_deq_option_named_in_the_trial() -> None:
    spec = TrialSpec(prior="pnp", estimator="deq", depth=2, jac_reg=0.5)
    assert spec.name == "pnp-deq-K2-jr0.5-s0"
    assert TrialSpec(prior="pnp", estimator="deq").name == "pnp-deq-s0"  # 0: plain DEQ
    with pytest.raises(ValueError, match="jac_reg"):
        TrialSpec(prior="pnp", estimator="rjfb", jac_reg=1.0)


def test_jacobian_regularised_deq_trains_against_the_penalty(root: Path) -> None:
    # same seed, same data: the penalty is the only difference, and it changes what is learned;
    # a large weight trades reconstruction error for a smaller Jacobian at the fixed point
    study = make_study(root)
    plain = run_trial(study, TrialSpec(prior="pnp", estimator="deq"), root / "prepared")
    reg = run_trial(study, TrialSpec(prior="pnp", estimator="deq", jac_reg=50.0), root / "prepared")
    assert plain.status == reg.status == "finished"
    assert plain.theta["sigma"] != reg.theta["sigma"]
    assert reg.history[-1]["gamma_hat"] < plain.history[-1]["gamma_hat"]


def test_undefined_epoch_is_the_first_with_a_non_contracting_block() -> None:
    from pipeline.study.trial import undefined_epoch

    rows = [{"epoch": 1.0, "gamma_hat_k": 0.9}, {"epoch": 2.0, "gamma_hat_k": 1.02}]
    assert undefined_epoch(rows) == 2.0
    assert undefined_epoch([*rows, {"epoch": 3.0, "gamma_hat_k": 0.95}]) == 2.0
    assert math.isnan(undefined_epoch(rows[:1]))


def test_fixed_point_free_tau_is_undefined_and_epoch_0_is_recorded(root: Path) -> None:
    """Wavelet FB with a learned τ: FB's fixed point does not depend on τ, so DEQ's exact τ
    gradient is 0 and its cosine is undefined (null, with the reason), not ±1, and left out of
    the worst group's cosine. The trial also records val PSNR with the initial θ (epoch 0)
    and the observation's PSNR per test image."""
    import json

    study = make_study(
        root,
        l1tau={**L1, "step_size": 1.0, "step_size_units": "1/L", "learn_step_size": True},
    )
    spec = TrialSpec(prior="l1tau", estimator="rjfb", depth=1)
    before = Trial(study, spec, root / "prepared")
    initial = float(before.evaluate(before.val).mean())  # θ after the seed's jitter, untrained
    res = run_trial(study, spec, root / "prepared")
    assert res.status == "finished", res.reason
    assert res.metrics["initial_val_psnr"] == pytest.approx(initial, abs=1e-6)
    groups = json.loads(json.dumps(res.json_columns["grad_groups_json"], allow_nan=False))
    tau = groups["tau"]
    assert tau["cos"] is None and tau["sign_agree"] is None
    assert "does not depend on τ" in tau["undefined"]
    assert tau["norm"] > 0 and tau["ref_norm"] >= 0  # the ratio the report shows instead
    assert "undefined" not in groups["lambda"] and -1 <= groups["lambda"]["cos"] <= 1
    assert res.metrics["grad_cos_min_group_vs_deq"] == pytest.approx(
        min(v["cos"] for v in groups.values() if v["cos"] is not None)
    )
    obs = res.json_columns["test_psnr_input_per_image"]
    assert len(obs) == len(res.per_image_psnr)
    assert sum(obs) / len(obs) == pytest.approx(res.metrics["test_psnr_input"], abs=1e-5)


def test_probe_every_skips_middle_epochs_without_changing_any_result(root: Path) -> None:
    # the probes draw from their own generators: skipping some leaves training bit-identical,
    # and the last epoch is always probed, so every trials-table number is the same
    every = {**PNP, "train": {**PNP["train"], "epochs": 4, "probe_every": 1}}
    sparse = {**PNP, "train": {**PNP["train"], "epochs": 4, "probe_every": 3}}
    spec_a = TrialSpec(prior="a", estimator="rjfb", depth=2, restarts=1)
    spec_b = TrialSpec(prior="b", estimator="rjfb", depth=2, restarts=1)
    a = run_trial(make_study(root, a=every), spec_a, root / "prepared")
    b = run_trial(make_study(root, b=sparse), spec_b, root / "prepared")
    # wall times differ
    clock = {"elapsed_seconds", "train_seconds", "seconds_per_step", *PHASE_COLUMNS}

    def timeless(row: dict) -> dict:
        return {k: v for k, v in row.items() if k not in clock}

    assert timeless(a.metrics) == timeless(b.metrics) and a.theta == b.theta
    probed = ["grad_cos_vs_deq" in row for row in b.history]
    assert probed == [True, False, True, True]  # epochs 1, 3 (every 3rd) and 4 (the last)
    assert all("grad_cos_vs_deq" in row for row in a.history)
    for ra, rb in zip(a.history, b.history, strict=True):
        assert timeless({k: v for k, v in ra.items() if k in rb}) == timeless(rb)


def test_gamma_k_is_measured_where_it_is_read(root: Path) -> None:
    # γ̂_K (K steps per Lanczos iteration) at the last epoch, which the trials table reports,
    # and at every probed epoch of DEQ, whose history dates an undefined equilibrium
    every = {**PNP, "train": {**PNP["train"], "epochs": 3, "probe_every": 1}}
    study = make_study(root, a=every)
    rjfb = run_trial(study, TrialSpec(prior="a", estimator="rjfb", depth=2), root / "prepared")
    deq = run_trial(study, TrialSpec(prior="a", estimator="deq", depth=2), root / "prepared")
    assert ["gamma_hat_k" in row for row in rjfb.history] == [False, False, True]
    assert all("gamma_hat_k" in row for row in deq.history)
    for res in (rjfb, deq):
        assert all("gamma_hat" in row for row in res.history)
        assert 0 < res.metrics["gamma_hat_k"] == res.history[-1]["gamma_hat_k"]
    # one step: γ̂_K is γ̂, free, at every probed epoch
    one = run_trial(study, TrialSpec(prior="a", estimator="rjfb", depth=1), root / "prepared")
    assert all(row["gamma_hat_k"] == row["gamma_hat"] for row in one.history)
