"""One trial's state and loop (:class:`Trial`): the scheme, estimator, optimiser and data of a
trial, its epochs, evaluations and probes, and the checks that end it as diverged."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.core.compiled import CompileError, compile_no_grad
from pipeline.core.estimators import Estimator, block
from pipeline.core.jacobian import jacobian_penalty
from pipeline.core.precision import AUTOCAST_DTYPES, autocast_no_grad, step_memory
from pipeline.core.probes import psnr
from pipeline.core.solvers import anderson
from pipeline.study.build import build_estimator, build_scheme, resolve_device
from pipeline.study.config import StudyConfig, TrialSpec
from pipeline.study.data import observe
from pipeline.study.estimators import DEQ, get_kind
from pipeline.study.tables import fixed_point_free_groups

# the Lanczos caps of the probes' contraction estimates: one step (γ̂) and the K-block (γ̂_K)
GAMMA_ITERS = 60
GAMMA_K_ITERS = 30


class Diverged(RuntimeError):
    """The loss, the iterate or the gradient stopped being finite."""


@dataclass
class Solved:
    """An equilibrium solve of one evaluation batch: its fixed point, at the θ of training
    step ``version``."""

    x: Tensor
    version: int


class Trial:
    """State of one training run; ``run_trial`` drives it.

    ``exhaustive``: every reported reconstruction is computed on its own, as if nothing had
    been computed before: each test depth its own run of steps from y, the probes' x* its own
    solve, a DEQ trial's probe reference its own gradient, the artifacts' reconstructions their
    own. Otherwise (the default) they are the
    tensors computed once and kept (the depths recorded on one trajectory, x* from the val
    evaluation at the same θ, the artifacts from the test evaluation): the same operations on
    the same inputs, so every number is the same (``tests/study/test_phases.py``).

    Equilibrium solves always start from y. Warm starts (the previous epoch's val fixed points,
    the test iterate at depth) were measured and dropped: at eval_tol 1e-4 a scheme with
    γ̂ ≈ 0.99 stops up to 0.6 dB from its fixed point, so where a solve starts moves the
    reported PSNR by more than the report's 0.1 dB tolerance (0.18 dB on wl12 K5 T5).
    """

    def __init__(
        self,
        study: StudyConfig,
        spec: TrialSpec,
        prepared: Path,
        inits: dict[str, Any] | None = None,
    ) -> None:
        from pipeline.study.config import Degradation
        from pipeline.study.data import load_split

        self.study, self.spec = study, spec
        self.cfg = study.train_for(spec.prior)
        self.device = resolve_device(study.train.device)
        torch.manual_seed(spec.seed)
        self.prior = study.priors[spec.prior]
        own = getattr(self.prior, "degradation", None)
        splits = []
        for name in ("train", "val", "test"):
            split = load_split(prepared, name, device=self.device)
            if name == "train" and self.cfg.seed_train_noise:
                # this seed's own noise realisation (and masks) on the training split
                deg = own or Degradation.model_validate(split.degradation)
                split = observe(split, deg, study.data.seed, trial_seed=spec.seed)
            elif own is not None:
                split = observe(split, own, study.data.seed)
            splits.append(split)
        self.train, self.val, self.test = splits
        channels = self.train.clean.shape[1]
        # L = ‖AᵀA‖ of the prior's physics, once: τ in units of 1/L and the bound of a learned τ
        self.lipschitz = physics_lipschitz(self.train)
        # chained initial values (sigma_init from another prior's results), recorded as used
        self.inits = dict(inits or {})
        try:
            scheme = build_scheme(
                study, spec.prior, spec, channels, lipschitz=self.lipschitz, overrides=self.inits
            )
        except ValueError as err:
            from pipeline.util.errors import ConfigError

            raise ConfigError(f"priors.{spec.prior}: {err}") from None
        jitter_init(scheme, self.cfg.init_jitter, spec.seed)
        self.initial_theta = scheme.theta()
        self.scheme = scheme.to(self.device)
        self.estimator = build_estimator(study, spec)
        self.autocast = AUTOCAST_DTYPES.get(self.cfg.restart_autocast or "")
        self.optimizer = self._optimizer()
        self.generator = torch.Generator().manual_seed(spec.seed)
        # the Jacobian penalty's probes: their own stream, so the training order stays the seed's
        self.jac_generator = torch.Generator().manual_seed(spec.seed + 7919)
        # Warm starts: each training sample's last iterate (the paper's implicit truncation).
        self.bank = self.train.observed.clone() if spec.start == "warm" else None
        probe = min(self.cfg.probe_batch_size, len(self.val))
        self.probe_index = torch.arange(probe)
        self.epoch = 0
        self.train_residual = float("nan")  # largest fixed-point residual of the last epoch
        # DEQ: largest residual of the last epoch's implicit backward solves (None: the
        # estimator has no implicit backward, or none of its solves ended at a finite residual)
        self.train_backward_residual: float | None = None
        # DEQ: training steps so far, and those whose implicit backward missed backward_tol
        self.backward_steps = 0
        self.backward_unconverged = 0
        self.solve_residual = 0.0  # of the last evaluate()'s equilibrium solves
        self.exhaustive = False
        # equilibrium solves kept per (split, batch) with the θ they were solved at (its
        # ``version``): the probes' x* is the val evaluation's first batch, not solved again
        self.solutions: dict[tuple[str, tuple[int, ...]], Solved] = {}
        self.version = 0  # training steps taken so far (θ's version)
        # evaluate_depths' iterates per (split, batch) and depth: the artifacts show them
        self.depth_iterates: dict[tuple[str, tuple[int, ...]], dict[int, Tensor]] = {}
        self.history: list[dict[str, float]] = []
        self.elapsed = 0.0
        # val PSNR at equilibrium with the initial θ (epoch 0): shows whether training helped;
        # measured in run_trial before the first epoch, kept in the checkpoint for a resume
        self.initial_val_psnr = float("nan")

    def _optimizer(self) -> torch.optim.Optimizer:
        """Adam / SGD over θ at ``train.lr``; a trained denoiser's weights form a second group
        at the prior's ``denoiser_lr``, or join θ's one group when it is null."""
        denoiser = getattr(self.scheme, "denoiser", None)
        inner = {id(p) for p in denoiser.parameters()} if denoiser is not None else set()
        theta = [p for p in self.scheme.parameters() if p.requires_grad and id(p) not in inner]
        weights = [p for p in self.scheme.parameters() if p.requires_grad and id(p) in inner]
        groups: list[dict[str, Any]] = []
        if getattr(self.prior, "denoiser_lr", 0) is None:
            theta, weights = theta + weights, []
        if theta:
            groups.append({"params": theta, "lr": self.cfg.lr})
        if weights:
            groups.append({"params": weights, "lr": self.prior.denoiser_lr})  # type: ignore[union-attr]
        if not groups:
            raise ValueError(f"prior {self.spec.prior!r} has nothing to learn")
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(groups)
        return torch.optim.SGD(groups)

    def train_step_fn(self, split, index: Tensor):
        """``step_fn`` for training: its no-grad calls under ``train.restart_autocast`` (solves
        to a tolerance finish in full precision: DEQ, JFB, adaptive restarts) and, with
        ``train.compile``, through torch.compile (the tracked calls stay eager)."""
        step, y = self.step_fn(split, index)
        if self.cfg.compile:
            step = _compiled(step)
        spec = self.spec
        refine = get_kind(spec.estimator).solves(spec)
        return autocast_no_grad(step, self.autocast, refine=refine), y

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "elapsed": self.elapsed,
            "scheme": self.scheme.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "jac_generator": self.jac_generator.get_state(),
            "rng": torch.get_rng_state(),
            "bank": self.bank,
            "history": json.dumps(self.history),
            "backward_counts": torch.tensor([self.backward_steps, self.backward_unconverged]),
            "initial_val_psnr": torch.tensor(self.initial_val_psnr, dtype=torch.float64),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.elapsed = float(state["elapsed"])
        self.scheme.load_state_dict(state["scheme"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "jac_generator" in state:
            self.jac_generator.set_state(state["jac_generator"])
        torch.set_rng_state(state["rng"])
        if state["bank"] is not None:
            self.bank = state["bank"].to(self.device)
        self.history = json.loads(state["history"])
        if "initial_val_psnr" in state:  # older checkpoints lack it: NaN, not re-measured
            self.initial_val_psnr = float(state["initial_val_psnr"])
        if "backward_counts" in state:
            self.backward_steps, self.backward_unconverged = (
                int(v) for v in state["backward_counts"].tolist()
            )

    # ------------------------------------------------------------------ pieces
    def step_fn(self, split, index: Tensor):
        y = split.observed[index]
        return self.scheme.bind(y, split.physics(index)), y

    def train_epoch(self) -> tuple[float, float]:
        cfg = self.cfg
        n = len(self.train)
        order = torch.randperm(n, generator=self.generator)
        batches = [order[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
        if cfg.steps_per_epoch is not None:
            batches = batches[: cfg.steps_per_epoch]
        losses, seconds, residuals, backward = [], [], [], []
        for index in batches:
            self.version += 1  # θ changes with this step: kept solutions are another θ's
            start = time.perf_counter()
            step, y = self.train_step_fn(self.train, index)
            x0 = self.bank[index] if self.bank is not None else y
            x = self.estimator(step, x0)
            loss = ((x - self.train.clean[index]) ** 2).mean()
            if self.spec.jac_reg:
                loss = loss + self.spec.jac_reg * self.jacobian_penalty(index, x)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _check_finite(loss, x, self.scheme)
            self.optimizer.step()
            if self.bank is not None:
                self.bank[index] = x.detach()
            seconds.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
            residuals.append(self.estimator.last.residual)
            backward.append(self.estimator.last.backward_residual)  # NaN: no implicit backward
            if self.estimator.last.backward_converged is not None:
                self.backward_steps += 1
                self.backward_unconverged += not self.estimator.last.backward_converged
        finite = [r for r in residuals if math.isfinite(r)]
        self.train_residual = max(finite) if finite else float("nan")
        finite = [r for r in backward if math.isfinite(r)]
        self.train_backward_residual = max(finite) if finite else None
        return sum(losses) / len(losses), sum(seconds) / len(seconds)

    def jacobian_penalty(self, index: Tensor, x: Tensor) -> Tensor:
        """‖J‖_F² / n of the K-block at the estimator's output (its fixed point for DEQ), in
        full precision and eager (the penalty differentiates the block twice)."""
        step, _ = self.step_fn(self.train, index)
        return jacobian_penalty(block(step, self.spec.depth), x, self.jac_generator)

    @torch.no_grad()
    def solve(self, split, index: Tensor, iterations: int | None = None) -> Tensor:
        """Reconstruct: ``iterations`` steps from y (step n uses layer n mod K of a per-layer
        scheme), or the fixed point of the K-block solved to eval_tol."""
        step, y = self.step_fn(split, index)
        layers = self.scheme_layers()
        phi = block(step, layers)
        if iterations is not None:
            x = y
            for n in range(max(1, iterations)):
                x = step(x, n % layers)
            return x
        cfg = self.cfg
        x, info = anderson(phi, y, max_iter=cfg.eval_max_iter, tol=cfg.eval_tol)
        self.solve_residual = max(self.solve_residual, info.residual)
        return x

    def scheme_layers(self) -> int:
        return int(getattr(self.scheme, "layers", 1))

    def evaluate(self, split, iterations: int | None = None) -> Tensor:
        """Per-image PSNR on a whole split (batched); ``self.solve_residual`` is then the
        largest relative residual its equilibrium solves ended at."""
        self.solve_residual = 0.0
        out = []
        name = self.split_name(split)
        for index in self.batches(split):
            x = self.solve(split, index, iterations)
            if iterations is None:
                self.solutions[(name, tuple(index.tolist()))] = Solved(x, self.version)
            out.append(psnr(x.clamp(0, 1), split.clean[index]))
        return torch.cat(out)

    def split_name(self, split) -> str:
        return {id(self.train): "train", id(self.val): "val", id(self.test): "test"}[id(split)]

    def fixed_point(self, split, index: Tensor) -> Solved | None:
        """The kept equilibrium solve of this batch at the current θ, if any (never when
        ``exhaustive``)."""
        if self.exhaustive:
            return None
        kept = self.solutions.get((self.split_name(split), tuple(index.tolist())))
        return kept if kept is not None and kept.version == self.version else None

    def batches(self, split) -> list[Tensor]:
        """The evaluation batches of a split: ``train.batch_size`` consecutive images (an
        equilibrium solve stops on its batch's residual, so the batches are part of the
        result)."""
        bs = self.cfg.batch_size
        return [torch.arange(i, min(i + bs, len(split))) for i in range(0, len(split), bs)]

    @torch.no_grad()
    def evaluate_depths(self, split, depths: list[int]) -> dict[int, Tensor]:
        """Per-image PSNR after each of ``depths`` steps from y, from one trajectory per batch
        (the iterates ``solve(split, index, n)`` makes for each n, recorded on the way to the
        largest: the same tensors, computed once)."""
        if self.exhaustive:  # each depth its own run of steps from y
            return {int(n): self.evaluate(split, int(n)) for n in depths}
        wanted = sorted({max(1, int(n)) for n in depths})
        layers = self.scheme_layers()
        out: dict[int, list[Tensor]] = {n: [] for n in wanted}
        name = self.split_name(split)
        for index in self.batches(split):
            step, x = self.step_fn(split, index)
            clean = split.clean[index]
            kept: dict[int, Tensor] = {}
            for n in range(wanted[-1]):
                x = step(x, n % layers)
                if n + 1 in out:
                    out[n + 1].append(psnr(x.clamp(0, 1), clean))
                    kept[n + 1] = x
            self.depth_iterates[(name, tuple(index.tolist()))] = kept
        per_n = {n: torch.cat(v) for n, v in out.items()}
        return {int(n): per_n[max(1, int(n))] for n in depths}

    def probes(self) -> dict[str, float]:
        """Gradient fidelity vs DEQ and the contraction estimate on a fixed probe batch."""
        from pipeline.core import probes

        index = self.probe_index
        params = [p for p in self.scheme.parameters() if p.requires_grad]
        clean = self.val.clean[index]

        def grad_of(est: Estimator, training: bool) -> list[Tensor]:
            # the trial's estimator as it trains (autocast option); DEQ in full precision. The
            # reference solves from y too: from the val fixed point it would save its forward
            # solve but move its gradient by the forward tolerance (0.8% on a test study)
            step, y = (self.train_step_fn if training else self.step_fn)(self.val, index)
            return probes.gradient(lambda x: ((x - clean) ** 2).mean(), est, step, y, params)

        # the baseline's DEQ: on sweep.deq.solver, whatever solver this trial's own DEQ uses
        reference = build_estimator(
            self.study, self.spec.model_copy(update={"estimator": DEQ, "solver": None})
        )
        g = grad_of(self.estimator, True)
        if self.is_own_reference(reference):
            # the same estimator on the same step and batch: the same gradient, computed once
            g_ref, ref_diag = g, self.estimator.last
        else:
            g_ref = grad_of(reference, False)
            ref_diag = reference.last  # the reference's own convergence (forward and backward)
        cosine, rel_err = probes.compare(g, g_ref)
        per_group = probes.compare_groups(g, g_ref, probes.parameter_groups(self.scheme, params))
        # a group the fixed point does not depend on (wavelet FB's τ) has an exact DEQ gradient
        # of 0: what the probe measures there is the solver tolerance's residue, and a cosine
        # against it is undefined, not ±1 (one entry's cosine is a sign by construction)
        free = fixed_point_free_groups(self.prior.type)
        for name in free:
            if name in per_group:
                per_group[name] = {**per_group[name], "cos": math.nan, "sign_agree": math.nan}
        cos_min, _ = probes.group_summary(per_group)
        step, _ = self.step_fn(self.val, index)
        # the val evaluation of this epoch solved this batch at this θ already
        kept = self.fixed_point(self.val, index)
        x_star = kept.x if kept is not None else self.solve(self.val, index)
        # Lanczos to tol 1e-4 (σ² within 1e-4 of an eigenvalue of JᵀJ), capped: both are lower
        # bounds, short where the top of the spectrum is dense. Measured on trained wl12
        # schemes against 150 iterations: the one-step norm (the horizon 1/(1 − γ̂)) at 60
        # iterations is within ~5% in horizon for DEQ (γ̂ ≈ 0.991), PnP's converges in ~19; the
        # K-block's (which only says whether the trained block contracts) costs K steps per
        # iteration, and 30 put the 10-block within 2e-4 (0.99195 against 0.99214). Always from
        # the seeded random vector, so a probe's γ̂ does not depend on the previous one's
        gamma = probes.contraction(block(step, 1), x_star, iters=GAMMA_ITERS, seed=0, tol=1e-4)
        depth = self.spec.depth  # the K-block the estimator differentiates
        gamma_k: dict[str, float] = {}
        if depth == 1:
            gamma_k["gamma_hat_k"] = gamma
        elif self.measures_gamma_k():
            phi = block(step, depth)
            gamma_k["gamma_hat_k"] = probes.contraction(phi, x_star, iters=GAMMA_K_ITERS, tol=1e-4)
        # per group: cos / sign_agree (null where undefined), rel_err, ‖g‖ and ‖g_DEQ‖ (their
        # ratio is what the report shows for an undefined group), and why it is undefined
        self.grad_groups = {
            k: {
                **{m: _json_float(v[m]) for m in ("cos", "rel_err", "sign_agree", "norm")},
                "ref_norm": _json_float(v["ref_norm"]),
                **({"undefined": free[k]} if k in free else {}),
            }
            for k, v in per_group.items()
        }
        return {
            "grad_cos_vs_deq": cosine,
            "grad_rel_err_vs_deq": rel_err,
            # the worst parameter group (nan-free: 1.0 when no group has a direction)
            "grad_cos_min_group_vs_deq": cos_min if math.isfinite(cos_min) else 1.0,
            "grad_sign_agree_vs_deq": _finite(probes.sign_agreement(g, g_ref), 1.0),
            "gamma_hat": gamma,
            **gamma_k,
            "probe_ref_residual": _finite(ref_diag.residual, 0.0),
            "probe_ref_backward_residual": _finite(ref_diag.backward_residual, 0.0),
        }

    def measures_gamma_k(self) -> bool:
        """Whether this epoch's probes estimate γ̂_K (the K-block's norm: K steps per Lanczos
        iteration, 60% of a wl12 K10 trial's probe time): at the last epoch, whose value the
        trials table reports, and at every probed epoch of a DEQ trial, whose history dates
        the first epoch without a contracting block (``trial.undefined_epoch``). Nothing else
        reads an earlier epoch's γ̂_K."""
        return self.epoch >= self.cfg.epochs or self.spec.estimator == DEQ

    def is_own_reference(self, reference: Estimator) -> bool:
        """Whether the probes' DEQ reference computes what the trial's own estimator does on
        the probe batch: a DEQ trial with the same options whose training step is the plain
        step (no restart autocast, no torch.compile). Never when ``exhaustive``."""
        return (
            not self.exhaustive
            and type(reference) is type(self.estimator)
            and reference.options() == self.estimator.options()
            and self.autocast is None
            and not self.cfg.compile
        )

    def theta_metrics(self) -> dict[str, float]:
        return flatten_theta(self.scheme.theta())

    def saved_mib(self) -> float:
        """MiB one training step needs (``core.precision.step_memory``): what autograd saves on
        CPU, the peak allocated memory of forward and backward on CUDA."""
        index = torch.arange(min(self.cfg.batch_size, len(self.train)))

        def forward() -> Tensor:
            step, y = self.train_step_fn(self.train, index)
            return ((self.estimator(step, y) - self.train.clean[index]) ** 2).mean()

        def backward(loss: Tensor) -> None:
            loss.backward()
            self.optimizer.zero_grad(set_to_none=True)

        return step_memory(forward, backward, self.device).peak_bytes / 2**20


def _compiled(step: Any) -> Any:
    """``compile_no_grad(step)``; a compiler failure is one line naming ``train.compile``."""
    fast = compile_no_grad(step)

    def step_compiled(x: Tensor, layer: int = 0) -> Tensor:
        try:
            return fast(x, layer)
        except CompileError as err:
            from pipeline.util.errors import ConfigError

            raise ConfigError(
                f"train.compile: torch.compile failed ({err}); set train.compile: false to "
                "train eagerly"
            ) from None

    return step_compiled


def _json_float(value: float) -> float | None:
    """A float for a JSON column: None where it is not finite (strict JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


def _finite(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def physics_lipschitz(split: Any) -> float:
    """L = ‖AᵀA‖ of a split's physics: 1 for denoising and inpainting (a 0/1 mask with a kept
    pixel), measured by power iteration (float64, seeded) for a blur."""
    from pipeline.core.physics import lipschitz

    if split.degradation["kind"] != "blur":
        return 1.0
    physics = split.physics()
    return lipschitz(physics, split.img_shape, iters=500, tol=1e-7, dtype=torch.float64)


def jitter_init(scheme: torch.nn.Module, jitter: float, seed: int) -> None:
    """Multiply every learned positive scalar's initial value by exp(jitter·z), z ~ N(0, 1)
    drawn from ``seed`` (its log-form parameter moves by jitter·z; τ's and α's logits too);
    denoiser weights are left alone. ``jitter`` 0: nothing changes."""
    if jitter <= 0:
        return
    gen = torch.Generator().manual_seed(int(seed) + 0x1717)
    with torch.no_grad():
        for name, p in scheme.named_parameters():
            if name.startswith("denoiser.") or not p.requires_grad:
                continue
            z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.add_((jitter * z).to(p.dtype))


def flatten_theta(theta: dict[str, Any]) -> dict[str, float]:
    """``{"lambda": 0.1, "weights": [1, 2]}`` -> ``{"theta.lambda": 0.1, "theta.weights.0": 1, ...}``."""
    out: dict[str, float] = {}
    for key, value in theta.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                out[f"theta.{key}.{i}"] = float(v)
        else:
            out[f"theta.{key}"] = float(value)
    return out


def _check_finite(loss: Tensor, x: Tensor, scheme: torch.nn.Module) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise Diverged(f"loss is {value}")
    if not torch.isfinite(x).all():
        raise Diverged("the iterate has non-finite values")
    for name, p in scheme.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise Diverged(f"the gradient of {name} is not finite")
