"""One prepared device check: GPU against CPU gradients, the GPU benchmark, bf16 restarts.

``python -m pipeline.tools.gpucheck --out DIR [--parts grads,bench,quality]`` runs, in order:

``grads``    a small PnP-FB deblurring case (a seeded DRUNet, RGB 32², B = 2, learned log τ,
             log σ — shared and one per layer — and relaxation): the gradients of DEQ, rJFB
             and unrolling on the device against the same computation on the CPU, in float64
             (the arithmetic is the same, so they agree to rounding) and in float32 (TF32 off,
             then on); and bf16 restarts against float32 ones on the device.
``bench``    ``rjfb bench --suite gpu`` (:mod:`pipeline.tools.bench`), with its issue-4 targets: the
             rJFB step against the sum of its denoiser calls, its peak memory against K tracked
             steps, bf16 restarts against TF32 ones.
``compile``  ``train.compile`` on the paper's step (rJFB K = 10, T = 25, a full-size DRUNet
             nc 64 nb 4, per-layer σ, RGB 128², B = 8, deblurring), float32 and bf16 restarts:
             eager, compiled untracked block, and the floor of its denoiser calls (T·K untracked
             + K tracked forward calls and their backward), medians side by side
             (``compile.md``), and the θ-gradient compiled against eager within
             ``COMPILE_GRAD_TOL``.
``packing``  (asked for by name; needs a CUDA GPU, refuses otherwise) the real gpu-smoke sweep
             at ``ray.gpus_per_trial`` 1, 0.5, 0.25 (:mod:`pipeline.tools.packing`):
             ``packing.md``/``.json``, the last sweep's ``trials.parquet`` and ``ablation.md``.
``quality``  the test PSNR cost of bf16 restarts in training: the default study's data and
             pretrained denoiser (prepare and pretrain stages, run here on the device), then the
             ``pnp`` and ``drunet_fb`` priors trained with rJFB (K = 5, T = 3) with
             ``train.restart_autocast`` unset and ``bfloat16``, same seed.

Every part writes ``DIR/<part>.json`` as soon as it ends (and ``bench.md``), so a run cut short
keeps what it finished. ``--device cpu --tiny`` runs everything in seconds on a CPU (the tests
do); on a GPU machine the defaults are the sizes docs/benchmarks.md reports.
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from pipeline.tools.machine import machine

PARTS = ("grads", "bench", "quality", "compile", "packing")
# what runs without --parts: packing runs three real sweeps (minutes), asked for by name
DEFAULT_PARTS = ("grads", "bench", "quality", "compile")
# DEQ tolerances of the gradient check, forward and backward (relative residuals)
SOLVE_TOL = {torch.float64: 1e-10, torch.float32: 1e-6}
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------
# grads: the device against the CPU


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _pnp_case(
    device: torch.device, dtype: torch.dtype, per_layer: bool, size: int, width: int
) -> tuple[Any, Any, Tensor, Tensor, Tensor]:
    """(scheme, physics, y, x0, clean): identical on every device (built on the CPU, seeded)."""
    from pipeline.core.denoisers import build_denoiser
    from pipeline.core.physics import build_physics, gaussian_kernel
    from pipeline.core.schemes import PnPFB
    from pipeline.tools.bench_base import crops, noise

    clean, _ = crops("rgb", 2, size, 0, torch.device("cpu"))
    kernel = gaussian_kernel(5, 1.0)
    physics = build_physics(
        "blur", (3, size, size), noise_sigma=0.03, blur_kernel=kernel, device=device
    )
    torch.manual_seed(0)
    denoiser = build_denoiser("drunet", 3, nc=width, nb=1)
    layers = 3 if per_layer else 1
    scheme = PnPFB(
        denoiser,
        sigma_init=[0.04, 0.05, 0.06] if per_layer else 0.05,
        step_size=0.8,
        relaxation_init=0.7,
        layers=layers,
        per_layer_sigma=per_layer,
    )
    scheme = scheme.to(device=device, dtype=dtype)
    clean = clean.to(device=device, dtype=dtype)
    y = physics.A(clean) + 0.03 * noise(clean.shape, 1, device).to(dtype)
    return scheme, physics, y, physics.A_adjoint(y), clean


def _gradient(
    estimator: str,
    options: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    per_layer: bool,
    size: int,
    width: int,
    autocast: torch.dtype | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    from pipeline.core.estimators import make_estimator
    from pipeline.core.precision import autocast_no_grad

    scheme, physics, y, x0, clean = _pnp_case(device, dtype, per_layer, size, width)
    if estimator == "deq":  # solve to what the dtype resolves: float32 cannot reach 1e-10
        tol = SOLVE_TOL[dtype]
        options = {**options, "tol": tol, "backward_tol": tol}
    est = make_estimator(estimator, **options)
    step = autocast_no_grad(scheme.bind(y, physics), autocast)
    loss = ((est(step, x0) - clean) ** 2).mean()
    theta = [p for n, p in scheme.named_parameters() if not n.startswith("denoiser.")]
    grads = torch.autograd.grad(loss, theta)
    info = {k: v for k, v in vars(est.last).items() if isinstance(v, (int, float, bool))}
    return torch.cat([g.reshape(-1) for g in grads]), info


def check_gradients(device: torch.device, size: int = 32, width: int = 8) -> dict[str, Any]:
    """Relative differences of θ-gradients, device against CPU (and bf16 against float32)."""
    cases: dict[str, tuple[str, dict[str, Any], bool]] = {
        "deq": ("deq", {"max_iter": 500}, False),
        "rjfb K=3 T=2": ("rjfb", {"depth": 3, "restarts": 2}, False),
        "unrolled N=4": ("unrolled", {"iterations": 4}, False),
        "deq per-layer sigma (K=3 block)": (
            "deq",
            {"max_iter": 500, "depth": 3},
            True,
        ),
    }
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"size": size, "width": width, "batch": 2, "rows": []}
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        for label, (name, opts, per_layer) in cases.items():
            ref64, info = _gradient(name, opts, cpu, torch.float64, per_layer, size, width)
            dev64, _ = _gradient(name, opts, device, torch.float64, per_layer, size, width)
            torch.backends.cudnn.allow_tf32 = False
            dev32, _ = _gradient(name, opts, device, torch.float32, per_layer, size, width)
            torch.backends.cudnn.allow_tf32 = True
            dev32_tf32, _ = _gradient(name, opts, device, torch.float32, per_layer, size, width)
            torch.backends.cudnn.allow_tf32 = tf32
            row = {
                "case": label,
                "grad_norm": float(ref64.norm()),
                "cpu_info": info,
                "float64_device_vs_cpu": _rel(dev64, ref64),
                "float32_device_vs_cpu_float64": _rel(dev32, ref64),
                "float32_tf32_device_vs_cpu_float64": _rel(dev32_tf32, ref64),
            }
            if name == "rjfb":
                low, _ = _gradient(
                    name, opts, device, torch.float32, per_layer, size, width, torch.bfloat16
                )
                row["bf16_restarts_vs_float32_device"] = _rel(low, dev32_tf32)
            out["rows"].append(row)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return out


# ------------------------------------------------------------------------------------------
# quality: bf16 restarts in training


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


TINY_QUALITY = {
    "data": {"patch_size": 32, "patches_per_image": 2, "train_images": 2, "val_images": 1},
    "data_test_images": 1,
    "pretrain": {
        "nc": 4,
        "steps": 3,
        "batch_size": 4,
        "crop": 16,
        "eval_sigmas": [0.1],
        "allow_weak": True,
    },
    "train": {"epochs": 1, "batch_size": 2, "probe_batch_size": 2},
    "prior_train": {"epochs": 1, "eval_max_iter": 20},
}


def check_quality(
    device: torch.device,
    params: Path,
    workdir: Path,
    priors: Sequence[str] = ("pnp", "drunet_fb"),
    tiny: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train each prior with rJFB (K=5, T=3) with and without bf16 restarts; test PSNRs."""
    from pipeline.study.config import TrialSpec, load_params
    from pipeline.study.data import prepare
    from pipeline.study.pretrain import pretrain
    from pipeline.study.trial import run_trial

    raw = yaml.safe_load(params.read_text())
    device_name = "cuda" if device.type == "cuda" else "cpu"
    overrides: dict[str, Any] = {"train": {"device": device_name}}
    if device.type == "cuda":  # the schema asks trials on CUDA to request a GPU from Ray
        overrides["ray"] = {"gpus_per_trial": 1}
    if tiny:
        overrides = _merge(
            overrides,
            {
                "data": {**TINY_QUALITY["data"], "test_images": TINY_QUALITY["data_test_images"]},
                "pretrain": TINY_QUALITY["pretrain"],
                "train": TINY_QUALITY["train"],
            },
        )
        for name in priors:
            overrides.setdefault("priors", {})[name] = {"train": TINY_QUALITY["prior_train"]}
    raw = _merge(raw, overrides)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    study = load_params(workdir / "params.yaml")
    prepared = workdir / "data" / "prepared"
    started = time.perf_counter()
    prepare(study, prepared, progress=progress)
    prepare_s = time.perf_counter() - started
    weights = study.resolve("models/denoiser.pt")
    started = time.perf_counter()
    metrics = pretrain(study, prepared, weights, progress=progress, device=device)
    pretrain_s = time.perf_counter() - started
    out: dict[str, Any] = {
        "prepare_seconds": prepare_s,
        "pretrain_seconds": pretrain_s,
        "pretrain_val": metrics["val"],
        "rows": [],
    }
    for prior in priors:
        spec = TrialSpec(prior=prior, estimator="rjfb", depth=5, restarts=3, seed=0)
        results = {}
        for autocast in (None, "bfloat16"):
            layered = _merge(raw, {"train": {"restart_autocast": autocast}})
            (workdir / "params.yaml").write_text(yaml.safe_dump(layered, sort_keys=False))
            trial_study = load_params(workdir / "params.yaml")
            started = time.perf_counter()
            result = run_trial(trial_study, spec, prepared)
            wall = time.perf_counter() - started
            m = result.metrics
            results[autocast or "float32"] = {
                "status": result.status,
                "test_psnr": m.get("test_psnr", math.nan),
                "test_psnr_at_depth": m.get("test_psnr_at_depth", math.nan),
                "train_seconds": m.get("train_seconds", math.nan),
                "seconds_per_step": m.get("seconds_per_step", math.nan),
                "wall_seconds": wall,
            }
        full, low = results["float32"], results["bfloat16"]
        out["rows"].append(
            {
                "prior": prior,
                "trial": spec.name,
                "float32": full,
                "bfloat16": low,
                "delta_test_psnr": low["test_psnr"] - full["test_psnr"],
                "delta_test_psnr_at_depth": low["test_psnr_at_depth"] - full["test_psnr_at_depth"],
            }
        )
    return out


# ------------------------------------------------------------------------------------------
# compile: the compiled untracked block against eager and the denoiser-call floor

# relative difference of θ-gradients, compiled restarts against eager, that the check accepts:
# float32: fused kernels round differently (~1e-6 relative after the restarts; the tracked
# block is eager), bound 1e-4 as tests/core/test_compiled.py; bf16 restarts: their rounding
# (eps 2^-8) differs between the two, contracted by the float32 tracked block, bound 1e-2 as
# the bf16-against-float32 check of part `grads`
COMPILE_GRAD_TOL = {"float32": 1e-4, "bfloat16": 1e-2}
COMPILE_FULL = {"batch": 8, "size": 128, "nc": 64, "nb": 4, "depth": 10, "restarts": 25}
COMPILE_TINY = {"batch": 1, "size": 16, "nc": 2, "nb": 1, "depth": 2, "restarts": 3}


def _compile_case(device: torch.device, shape: dict[str, int]) -> tuple[Any, Any, Tensor, Tensor]:
    """(scheme, physics, y, clean): PnP-FB deblurring with a seeded DRUNet, per-layer σ (K)."""
    from pipeline.core.denoisers import build_denoiser
    from pipeline.core.physics import build_physics, gaussian_kernel
    from pipeline.core.schemes import PnPFB
    from pipeline.tools.bench_base import crops, noise

    size, k = shape["size"], shape["depth"]
    clean, _ = crops("rgb", shape["batch"], size, 0, torch.device("cpu"))
    physics = build_physics(
        "blur",
        (3, size, size),
        noise_sigma=0.03,
        blur_kernel=gaussian_kernel(9, 1.5),
        device=device,
    )
    torch.manual_seed(0)
    denoiser = build_denoiser("drunet", 3, nc=shape["nc"], nb=shape["nb"])
    scheme = PnPFB(
        denoiser,
        sigma_init=[0.03] * k,
        step_size=1.0,
        learn_relaxation=False,
        layers=k,
        per_layer_sigma=True,
    ).to(device)
    clean = clean.to(device)
    y = physics.A(clean) + 0.03 * noise(clean.shape, 1, device)
    return scheme, physics, y, clean


def check_compile(device: torch.device, tiny: bool = False, repeats: int = 5) -> dict[str, Any]:
    """The rJFB step (K, T of the paper: 10, 25; a full-size DRUNet) in float32 and with bf16
    restarts: eager, with ``train.compile`` (compiled untracked block), and the floor of its
    denoiser calls (T·K untracked forward calls in the step's precision + K tracked calls and
    their backward); medians side by side, and the θ-gradient compiled against eager."""
    import statistics

    from pipeline.core.compiled import compile_no_grad
    from pipeline.core.estimators import make_estimator
    from pipeline.core.precision import AUTOCAST_DTYPES, autocast_no_grad

    shape = COMPILE_TINY if tiny else COMPILE_FULL
    k, t = shape["depth"], shape["restarts"]
    scheme, physics, y, clean = _compile_case(device, shape)
    theta = [p for p in scheme.parameters() if p.requires_grad]
    est = make_estimator("rjfb", depth=k, restarts=t)

    def step_fn(compiled: bool, autocast: torch.dtype | None) -> Callable[[], Tensor]:
        def run() -> Tensor:
            step = scheme.bind(y, physics)
            if compiled:
                step = compile_no_grad(step)
            step = autocast_no_grad(step, autocast)
            loss = ((est(step, y) - clean) ** 2).mean()
            grads = torch.autograd.grad(loss, theta)
            return torch.cat([g.reshape(-1) for g in grads])

        return run

    def floor_fn(autocast: torch.dtype | None) -> Callable[[], None]:
        den = scheme.denoiser
        u = y.clone()
        sigma = torch.full((u.shape[0],), 0.03, device=device)

        def run() -> None:
            with torch.inference_mode():
                for _ in range(t * k):
                    if autocast is None:
                        den(u, sigma)
                    else:
                        with torch.autocast(device.type, dtype=autocast):
                            den(u, sigma)
            x = u.detach().requires_grad_()
            out = x
            for _ in range(k):
                out = den(out, sigma)
            torch.autograd.grad(out.square().mean(), [x, *den.parameters()])

        return run

    def _sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out: dict[str, Any] = {"shape": shape, "repeats": repeats, "rows": [], "targets": []}
    for precision in ("float32", "bfloat16"):
        autocast = AUTOCAST_DTYPES.get(precision)
        eager, compiled, floor = (
            step_fn(False, autocast),
            step_fn(True, autocast),
            floor_fn(autocast),
        )
        torch._dynamo.reset()
        _sync(device)
        start = time.perf_counter()
        compiled()  # the first call compiles (one graph per layer)
        _sync(device)
        compile_s = time.perf_counter() - start
        eager()  # warm-up (cuDNN autotuning, allocator)
        floor()
        samples: dict[str, list[float]] = {"eager": [], "compiled": [], "floor": []}
        grads: dict[str, Tensor] = {}
        for _ in range(repeats):  # interleaved, one of each per repetition
            for name, fn in (("eager", eager), ("compiled", compiled), ("floor", floor)):
                _sync(device)
                start = time.perf_counter()
                value = fn()
                _sync(device)
                samples[name].append((time.perf_counter() - start) * 1e3)
                if value is not None:
                    grads[name] = value
        ms = {name: statistics.median(v) for name, v in samples.items()}
        rel = _rel(grads["compiled"], grads["eager"])
        tol = COMPILE_GRAD_TOL[precision]
        out["rows"].append(
            {
                "precision": precision,
                "eager_ms": ms["eager"],
                "compiled_ms": ms["compiled"],
                "floor_ms": ms["floor"],
                "speedup": ms["eager"] / ms["compiled"],
                "compiled_over_floor": ms["compiled"] / ms["floor"],
                "eager_over_floor": ms["eager"] / ms["floor"],
                "compile_seconds": compile_s,
                "grad_norm": float(grads["eager"].norm()),
                "grad_rel_diff": rel,
                "grad_tolerance": tol,
                "grad_ok": rel < tol,
            }
        )
    bf16 = next(r for r in out["rows"] if r["precision"] == "bfloat16")
    out["targets"] = [
        {
            "target": "compiled untracked block >= 1.2x faster than eager (bf16 restarts)",
            "value": bf16["speedup"],
            "met": bf16["speedup"] >= 1.2,
        },
        {
            "target": "compiled step <= 1.05x its denoiser-call floor (bf16 restarts)",
            "value": bf16["compiled_over_floor"],
            "met": bf16["compiled_over_floor"] <= 1.05,
        },
        {
            "target": "gradients compiled vs eager within tolerance (both precisions)",
            "value": max(r["grad_rel_diff"] / r["grad_tolerance"] for r in out["rows"]),
            "met": all(r["grad_ok"] for r in out["rows"]),
        },
    ]
    return out


def compile_markdown(result: dict[str, Any]) -> str:
    """The compile table: medians side by side (ms per training step) and the targets."""
    s = result["shape"]
    lines = [
        f"rJFB K={s['depth']} T={s['restarts']}, DRUNet nc {s['nc']} nb {s['nb']}, RGB "
        f"{s['size']}², B={s['batch']}; median of {result['repeats']} (ms per step)",
        "",
        "| precision | eager | compiled | floor | eager/compiled | compiled/floor "
        "| compile s | grad rel diff (tol) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['precision']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | "
            f"{r['floor_ms']:.1f} | {r['speedup']:.2f}x | {r['compiled_over_floor']:.2f}x | "
            f"{r['compile_seconds']:.0f} | {r['grad_rel_diff']:.1e} ({r['grad_tolerance']:.0e}) |"
        )
    from pipeline.tools.packing import targets_table

    return "\n".join(lines + targets_table(result["targets"]))


# ------------------------------------------------------------------------------------------
# driver


def _write(out: Path, name: str, result: dict[str, Any]) -> None:
    from pipeline.util import jsonio

    jsonio.write(out / f"{name}.json", result)


def run(
    out: Path,
    device: torch.device,
    parts: Sequence[str] = DEFAULT_PARTS,
    tiny: bool = False,
    repeats: int = 7,
    params: Path = REPO / "params.yaml",
    log: Callable[[str], None] = print,
    tf32: bool = True,
) -> dict[str, Any]:
    """Run ``parts`` in order; ``tf32=False`` turns cuDNN's TF32 convolutions off for the
    benchmark (PyTorch's default is on), which then writes ``bench-fp32.json``/``.md``."""
    from pipeline.tools import bench

    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"environment": machine(device), "seconds": {}}
    _write(out, "environment", summary["environment"])
    for part in parts:
        started = time.perf_counter()
        log(f"[gpucheck] {part} ...")
        if part == "grads":
            result = check_gradients(device, size=16 if tiny else 32, width=2 if tiny else 8)
        elif part == "bench":
            settings = bench.Settings(
                suite="gpu",
                device=str(device),
                repeats=1 if tiny else repeats,
                warmup=0 if tiny else 1,
                batch=1 if tiny else None,
                size=32 if tiny else None,
                width=4 if tiny else None,
                quick=tiny,
            )
            previous = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = tf32
            try:
                result = bench.run_suite(settings)
            finally:
                torch.backends.cudnn.allow_tf32 = previous
            name = "bench" if tf32 else "bench-fp32"
            (out / f"{name}.md").write_text(bench.markdown(result) + "\n")
        elif part == "quality":
            work = Path(tempfile.mkdtemp(prefix="rjfb-quality-"))
            try:
                result = check_quality(device, params, work, tiny=tiny, progress=not tiny)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        elif part == "compile":
            result = check_compile(device, tiny=tiny, repeats=1 if tiny else repeats)
            (out / "compile.md").write_text(compile_markdown(result) + "\n")
        elif part == "packing":
            from pipeline.tools import packing

            result = packing.run(out, device, params=packing.SMOKE, log=log)
        else:
            raise ValueError(f"unknown part {part!r}; expected some of {PARTS}")
        result["seconds"] = time.perf_counter() - started
        summary["seconds"][part] = result["seconds"]
        summary[part] = result
        _write(out, "bench-fp32" if part == "bench" and not tf32 else part, result)
        log(f"[gpucheck] {part}: {result['seconds']:.1f} s")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """User errors (the packing part without a GPU) are one line, exit 2."""
    from pipeline.util.cli import run_cli

    return run_cli(_main, argv)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.gpucheck", description=__doc__)
    parser.add_argument("--out", required=True, help="folder for <part>.json and bench.md")
    parser.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    parser.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"some of {','.join(PARTS)} (default: %(default)s)",
    )
    parser.add_argument("--tiny", action="store_true", help="seconds-long sizes, for CPU tests")
    parser.add_argument("--repeats", type=int, default=7, help="bench repetitions (%(default)s)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="study params")
    parser.add_argument(
        "--no-tf32", action="store_true", help="bench with cuDNN TF32 convolutions off"
    )
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {unknown}; expected some of {list(PARTS)}")
    device = torch.device(args.device)
    if "packing" in parts:  # before any other part spends device time
        from pipeline.tools.packing import require_gpu

        require_gpu(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available (use --device cpu --tiny)")
    run(
        Path(args.out),
        device,
        parts,
        args.tiny,
        args.repeats,
        Path(args.params),
        tf32=not args.no_tf32,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
