"""Pretrain the PnP denoiser: Gaussian denoising of the prepared training patches.

``pretrain(cfg, prepared, out)`` trains a deepinv DRUNet (reduced widths) or DnCNN, built by
:func:`pipeline.schemes.build_denoiser`, on the clean patches of the ``train`` split: each step
draws a batch (random flips / quarter turns, optional random crops), one noise level per patch
σ ~ U[sigma_min, sigma_max] and Gaussian noise of that level, and minimises the squared error of
``D(x + σ n, σ)`` to ``x`` with Adam (cosine-decayed learning rate). Every random draw comes from
``pretrain.seed``: the same seed gives the same weights (on the same machine and thread count).

It writes the weights only — ``torch.save(model.state_dict())`` to a temporary file renamed over
``out``, loadable with ``torch.load(weights_only=True)`` — and ``<out>.json``: the validation PSNR
per noise level on the (held-out) ``val`` split's clean patches, noisy input against denoised,
with fixed seeded noise. The test split is never read.
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

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import PretrainConfig, StudyConfig

__all__ = ["evaluate_denoiser", "metrics_path", "pretrain", "save_weights"]


def metrics_path(out: Path) -> Path:
    """Where the validation metrics of weights ``out`` go: ``models/denoiser.pt`` ->
    ``models/denoiser.json``."""
    return Path(out).with_suffix(".json")


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flip and quarter turn of the whole batch (patches are square)."""
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    k = int(torch.randint(0, 4, (), generator=gen))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _crop(x: Tensor, side: int | None, gen: torch.Generator) -> Tensor:
    if side is None or side >= x.shape[-1]:
        return x
    h, w = x.shape[-2:]
    top = int(torch.randint(0, h - side + 1, (), generator=gen))
    left = int(torch.randint(0, w - side + 1, (), generator=gen))
    return x[..., top : top + side, left : left + side]


@torch.no_grad()
def evaluate_denoiser(
    model: nn.Module, clean: Tensor, sigmas: list[float], seed: int, batch_size: int = 16
) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB, peak 1) of noisy input and denoised output for each σ, fixed noise."""
    from pipeline.core.probes import psnr

    was_training = model.training
    model.eval()
    out: dict[str, dict[str, float]] = {}
    for j, sigma in enumerate(sigmas):
        gen = torch.Generator().manual_seed(seed * 1000 + j)
        noise = torch.randn(clean.shape, generator=gen).to(clean.device)
        noisy = clean + sigma * noise
        den = []
        for i in range(0, len(clean), batch_size):
            y = noisy[i : i + batch_size]
            den.append(model(y, torch.full((len(y),), sigma, device=y.device)))
        denoised = torch.cat(den)
        out[f"{sigma:g}"] = {
            "input_psnr": float(psnr(noisy.clamp(0, 1), clean).mean()),
            "denoised_psnr": float(psnr(denoised.clamp(0, 1), clean).mean()),
        }
    model.train(was_training)
    return out


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


def pretrain(
    study: StudyConfig,
    prepared: Path,
    out: Path,
    *,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train the denoiser of ``study.pretrain`` on ``prepared``'s train split; write ``out``
    (weights) and ``metrics_path(out)`` (validation PSNR per σ). Returns the metrics."""
    from tqdm import tqdm

    from pipeline.study.data import load_split

    cfg = study.pretrain
    device = torch.device(device)
    train = load_split(Path(prepared), "train", device=device).clean
    val = load_split(Path(prepared), "val", device=device).clean
    model = build(cfg, int(train.shape[1])).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr / 10)
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.batch_size, len(train))
    start = time.perf_counter()
    running = float("nan")
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step", disable=not progress, leave=False)
    for step in bar:
        index = torch.randperm(len(train), generator=gen)[:batch]
        x = _crop(_augment(train[index.to(device)], gen), cfg.crop, gen)
        sigma = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * torch.rand(batch, generator=gen)
        noise = torch.randn(x.shape, generator=gen)
        sigma, noise = sigma.to(device), noise.to(device)
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
    seconds = time.perf_counter() - start
    val_metrics = evaluate_denoiser(model, val, list(cfg.val_sigmas), seed=cfg.seed)
    out = save_weights(model, Path(out))
    metrics = {
        "denoiser": cfg.denoiser,
        "arch": cfg.arch(),
        "channels": int(train.shape[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": cfg.steps,
        "train_seconds": round(seconds, 3),
        "final_train_mse": running,
        "val": val_metrics,
    }
    _write_json(metrics_path(out), metrics)
    return metrics
