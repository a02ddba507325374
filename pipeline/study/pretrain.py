"""Pretrain the PnP denoiser on crops of the training images, and measure it against what it
replaces.

``pretrain(cfg, prepared, out)`` trains a deepinv DRUNet (reduced widths; by default predicting
the noise, ``residual``) or DnCNN, built by :func:`pipeline.core.denoisers.build_denoiser`, on
the prepared folder's ``pretrain.npz``: random crops of the *train* images only. Each step draws
a batch of random ``crop``-sized sub-crops (each flipped / turned at random), one noise level per
crop — a share ``sigma_log_fraction`` log-uniform, the rest uniform in [sigma_min, sigma_max] —
and minimises the squared error of ``D(x + σ n, σ)`` to ``x`` with Adam (cosine-decayed learning
rate). Every random draw comes from ``pretrain.seed``: the same seed gives the same weights (on
the same machine and thread count). The val and test patches are loaded (and checked) before
training, so bad data fails before the minutes of it, but only the scoring after it uses them:
the training loop (:func:`train_denoiser`) is handed the pretraining crops alone.

Scores (``<out>.json``), per split (val, test) and σ of ``eval_sigmas``, all on the same seeded
noise: the noisy input's PSNR, the denoiser's, and the classical denoisers'
(:mod:`pipeline.study.classical`: TV with its weight chosen on val, wavelet BayesShrink, and BM3D
with ``pretrain.bm3d``). A denoiser worse than its noisy input at any evaluated σ is refused
(:class:`WeakDenoiser`, exit 2 from the stage, nothing written) unless ``allow_weak``; then the
file says ``"allow_weak": true`` and lists the σ where it lost, and the report repeats it.

It writes the weights only — ``torch.save(model.state_dict())`` to a temporary file renamed over
``out``, loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pipeline.util.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import PretrainConfig, StudyConfig

__all__ = [
    "WeakDenoiser",
    "evaluate_denoiser",
    "metrics_path",
    "pretrain",
    "save_weights",
    "train_denoiser",
]


def metrics_path(out: Path) -> Path:
    """Where the validation metrics of weights ``out`` go: ``models/denoiser.pt`` ->
    ``models/denoiser.json``."""
    return Path(out).with_suffix(".json")


def _training_batch(pool: Tensor, batch: int, side: int | None, gen: torch.Generator) -> Tensor:
    """``batch`` random crops of side ``side`` of random pool crops, each flipped and turned
    at random (the pool's crops are square)."""
    index = torch.randint(0, len(pool), (batch,), generator=gen)
    full = pool.shape[-1]
    side = full if side is None else min(side, full)
    offsets = torch.randint(0, full - side + 1, (batch, 2), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5
    turns = torch.randint(0, 4, (batch,), generator=gen)
    out = []
    for i in range(batch):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        x = pool[int(index[i]), :, top : top + side, left : left + side]
        if flips[i]:
            x = x.flip(-1)
        out.append(torch.rot90(x, int(turns[i]), dims=(-2, -1)))
    return torch.stack(out)


def _noise_levels(cfg: PretrainConfig, batch: int, gen: torch.Generator) -> Tensor:
    """σ per crop: log-uniform with probability ``sigma_log_fraction``, else uniform."""
    lo, hi = cfg.sigma_min, cfg.sigma_max
    uniform = lo + (hi - lo) * torch.rand(batch, generator=gen)
    logu = torch.exp(
        math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(batch, generator=gen)
    )
    pick = torch.rand(batch, generator=gen) < cfg.sigma_log_fraction
    return torch.where(pick, logu, uniform)


@torch.no_grad()
def evaluate_denoiser(
    model: nn.Module,
    clean: Tensor,
    sigmas: list[float],
    seed: int,
    batch_size: int = 16,
    noisy: list[Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB, peak 1) of noisy input and denoised output for each σ, on fixed noise
    (``noisy``, one tensor per σ; default :func:`~pipeline.study.classical.noisy_copies` of
    ``seed``)."""
    from pipeline.core.probes import psnr
    from pipeline.study.classical import noisy_copies

    was_training = model.training
    model.eval()
    noisy = noisy_copies(clean, sigmas, seed) if noisy is None else noisy
    out: dict[str, dict[str, float]] = {}
    for sigma, y_all in zip(sigmas, noisy, strict=True):
        den = []
        for i in range(0, len(clean), batch_size):
            y = y_all[i : i + batch_size]
            den.append(model(y, torch.full((len(y),), sigma, device=y.device)))
        denoised = torch.cat(den)
        out[f"{sigma:g}"] = {
            "input_psnr": float(psnr(y_all.clamp(0, 1), clean).mean()),
            "denoised_psnr": float(psnr(denoised.clamp(0, 1), clean).mean()),
        }
    model.train(was_training)
    return out


class WeakDenoiser(UserError):
    """The trained denoiser is worse than its noisy input at some evaluated σ (exit 2)."""


def save_weights(model: nn.Module, out: Path) -> Path:
    """``torch.save`` the state dict (CPU tensors) to a temporary file, then rename it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def build(cfg: PretrainConfig, channels: int) -> nn.Module:
    """The untrained denoiser of the ``pretrain`` section (seeded by ``cfg.seed``)."""
    from pipeline.core.denoisers import build_denoiser

    torch.manual_seed(cfg.seed)
    return build_denoiser(cfg.denoiser, channels, **cfg.arch())


def _non_finite(value: float, step: int, cfg: PretrainConfig) -> Exception:
    """The one-line error for a non-finite loss, blaming what can cause it at that step (the
    prepared data was checked finite and in [0, 1] when loaded)."""
    from pipeline.util.errors import ConfigError

    if step == 0:  # no update yet: not the learning rate
        return ConfigError(
            f"pretrain: the loss is {value} before any update (pretrain.denoiser {cfg.denoiser} "
            f"with {cfg.arch()} overflows on these patches); try a smaller architecture"
        )
    return ConfigError(
        f"pretrain.lr: the loss became {value} at step {step + 1} of {cfg.steps}; "
        f"did you mean a smaller pretrain.lr (now {cfg.lr:g})?"
    )


def train_denoiser(
    cfg: PretrainConfig,
    pool: Tensor,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict[str, Any]]:
    """Train the denoiser of ``cfg`` on ``pool`` (clean crops, (N, C, S, S)): the only data it
    sees. Returns the model (eval mode) and its training record."""
    from tqdm import tqdm

    device = torch.device(device)
    model = build(cfg, int(pool.shape[1])).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr / 10)
    gen = torch.Generator().manual_seed(cfg.seed)
    pool = pool.cpu()  # crops are cut on the CPU (the generator's device), then moved
    start = time.perf_counter()
    running = float("nan")
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", disable=not progress, leave=False)
    for step in bar:
        x = _training_batch(pool, cfg.batch_size, cfg.crop, gen)
        sigma = _noise_levels(cfg, cfg.batch_size, gen)
        noise = torch.randn(x.shape, generator=gen)
        x, sigma, noise = x.to(device), sigma.to(device), noise.to(device)
        y = x + sigma.view(-1, 1, 1, 1) * noise
        loss = ((model(y, sigma) - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _non_finite(value, step, cfg)
        opt.step()
        sched.step()
        running = value if math.isnan(running) else 0.9 * running + 0.1 * value
        bar.set_postfix(mse=f"{running:.2e}")
    bar.close()
    model.eval()
    record = {
        "steps": cfg.steps,
        "train_seconds": round(time.perf_counter() - start, 3),
        "final_train_mse": running,
        "pool_crops": int(pool.shape[0]),
    }
    return model, record


def score(
    model: nn.Module,
    val: Tensor,
    test: Tensor,
    sigmas: list[float],
    seed: int,
    bm3d: bool = False,
) -> dict[str, dict[str, dict[str, float]]]:
    """Per split and σ: input, denoised and classical PSNRs on the same seeded noise (val and
    test noise from different seeds)."""
    from pipeline.study.classical import classical_scores, noisy_copies

    val_noisy = noisy_copies(val, sigmas, seed)
    test_noisy = noisy_copies(test, sigmas, seed + 1)
    classical = classical_scores(val, val_noisy, test, test_noisy, sigmas, bm3d=bm3d)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for split, clean, noisy in (("val", val, val_noisy), ("test", test, test_noisy)):
        learned = evaluate_denoiser(model, clean, sigmas, seed, noisy=noisy)
        out[split] = {k: {**learned[k], **classical[split][k]} for k in learned}
    return out


def weak_levels(scores: dict[str, dict[str, dict[str, float]]]) -> list[dict[str, Any]]:
    """Every (split, σ) where the denoised PSNR is below the noisy input's."""
    return [
        {
            "split": split,
            "sigma": float(key),
            "input_psnr": v["input_psnr"],
            "denoised_psnr": v["denoised_psnr"],
        }
        for split, rows in scores.items()
        for key, v in rows.items()
        if v["denoised_psnr"] < v["input_psnr"]
    ]


def pretrain(
    study: StudyConfig,
    prepared: Path,
    out: Path,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train the denoiser of ``study.pretrain`` on ``prepared``'s pretraining crops, score it
    on the val and test patches, refuse it when weak (:class:`WeakDenoiser`, nothing written)
    unless ``allow_weak``; write ``out`` (weights) and ``metrics_path(out)``. Returns the
    metrics."""
    from pipeline.study.data import load_pretrain_pool, load_split

    cfg = study.pretrain
    prepared = Path(prepared)
    # everything is read and checked before the minutes of training
    pool = load_pretrain_pool(prepared)
    val = load_split(prepared, "val").clean
    test = load_split(prepared, "test").clean
    if cfg.bm3d:  # missing: fail before the minutes of training, not after
        from pipeline.study.classical import require_bm3d

        require_bm3d()
    model, record = train_denoiser(cfg, pool, progress=progress, device=device)
    start = time.perf_counter()
    scores = score(model.cpu(), val, test, list(cfg.eval_sigmas), seed=cfg.seed, bm3d=cfg.bm3d)
    weak = weak_levels(scores)
    if weak and not cfg.allow_weak:
        w = weak[0]
        raise WeakDenoiser(
            f"pretrain: the denoiser is worse than its noisy input at σ={w['sigma']:g} on the "
            f"{w['split']} patches ({w['denoised_psnr']:.2f} dB against {w['input_psnr']:.2f} dB"
            f"{f'; {len(weak) - 1} more' if len(weak) > 1 else ''}); train it longer or set "
            "pretrain.allow_weak: true to keep it (the report will say so)"
        )
    out = save_weights(model, Path(out))
    metrics = {
        "denoiser": cfg.denoiser,
        "arch": cfg.arch(),
        "channels": int(pool.shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        **record,
        "score_seconds": round(time.perf_counter() - start, 3),
        "sigma_range": [cfg.sigma_min, cfg.sigma_max],
        "allow_weak": cfg.allow_weak,
        "weak": weak,
        "val": scores["val"],
        "test": scores["test"],
    }
    _write_json(metrics_path(out), metrics)
    return metrics
