"""``python -m pipeline.tools.gpucheck``: the prepared device check runs on CPU at a tiny size.

The GPU numbers in docs/benchmarks.md come from this module on an H100; here every part runs on
the CPU (device = CPU, so "device against CPU" must agree exactly in float64), which exercises
the device placement, the bf16 autocast of restarts and the GPU suite's extra targets.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.tools import bench, gpucheck


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpucheck")
    gpucheck.run(out, torch.device("cpu"), tiny=True, log=lambda _: None)
    return out


def test_every_part_writes_strict_json(tiny_run: Path) -> None:
    for name in ("environment", "grads", "bench", "quality"):
        json.loads((tiny_run / f"{name}.json").read_text())  # strict: no NaN
    assert (tiny_run / "bench.md").read_text().startswith("| impl |")


def test_gradients_agree_across_devices_and_precisions(tiny_run: Path) -> None:
    grads = json.loads((tiny_run / "grads.json").read_text())
    assert {r["case"] for r in grads["rows"]} == {
        "deq",
        "rjfb K=3 T=2",
        "unrolled N=4",
        "deq per-layer sigma (K=3 block)",
    }
    for row in grads["rows"]:
        assert row["grad_norm"] > 0
        # the same device and dtype: bit-identical
        assert row["float64_device_vs_cpu"] == 0.0
        # float32 against float64: rounding through a few contractive steps (measured ~1e-7)
        assert row["float32_device_vs_cpu_float64"] < 1e-4, row
    rjfb = next(r for r in grads["rows"] if r["case"].startswith("rjfb"))
    # bf16 restarts perturb the restarts' output (eps 2^-8), and the tracked float32 block
    # contracts that perturbation: close to, but not exactly, the float32 gradient
    assert 0 < rjfb["bf16_restarts_vs_float32_device"] < 1e-2


def test_bench_reports_the_denoiser_call_and_memory_targets(tiny_run: Path) -> None:
    result = json.loads((tiny_run / "bench.json").read_text())
    units = result["denoiser_units"]
    assert units["nograd_ms"] > 0 and units["tracked_ms"] > 0 and units["nograd_bfloat16_ms"] > 0
    labels = [t["target"] for t in result["targets"]]
    for cfg in bench.gpu_configs():
        if cfg.method == "rjfb":
            assert any(t.startswith(f"{cfg.label}: step / its denoiser calls") for t in labels)
    assert any("speed-up over full-precision restarts" in t for t in labels)
    by = {(r["impl"], r["config"]): r for r in result["rows"]}
    low = by[("rjfb-pipeline", "rjfb K=5 T=3 bf16 restarts")]
    full = by[("rjfb-pipeline", "rjfb K=5 T=3")]
    # what the rJFB row's denoiser calls cost: T·K no-grad (bf16) + K tracked
    want = 3 * 5 * units["nograd_bfloat16_ms"] + 5 * units["tracked_ms"]
    assert low["denoiser_calls_ms"] == pytest.approx(want)
    assert by[("rjfb-pipeline", "jfb fwd 20")]["denoiser_calls_ms"] is None  # NaN -> null
    # bf16 restarts change the gradient a little, never a lot
    assert low["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-2)


def test_quality_compares_bf16_restarts_with_float32(tiny_run: Path) -> None:
    quality = json.loads((tiny_run / "quality.json").read_text())
    assert [r["prior"] for r in quality["rows"]] == ["pnp", "drunet_fb"]
    for row in quality["rows"]:
        for kind in ("float32", "bfloat16"):
            assert row[kind]["status"] == "finished"
            assert math.isfinite(row[kind]["test_psnr"])
        assert row["delta_test_psnr"] == pytest.approx(
            row["bfloat16"]["test_psnr"] - row["float32"]["test_psnr"]
        )


def test_out_of_memory_rows_are_reported_not_fatal() -> None:
    """A row that does not fit (unrolling 20 full-size DRUNet steps on an 80 GiB card) is
    reported with its error and no timings; the suite goes on."""
    case = bench.Case(
        "rjfb-pipeline",
        bench.Config("unrolled", depth=20),
        [torch.zeros(1, requires_grad=True)],
        forward=lambda: None,
        backward=lambda _: None,
        to_ref=lambda g: torch.cat(g),
        counts=lambda: (0, 0),
    )

    def oom() -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB.")

    case.forward = oom
    ok = bench.Case(
        "torch-floor",
        bench.Config("unrolled", depth=1),
        [torch.ones(1, requires_grad=True)],
        forward=lambda: ok.params[0].sum(),
        backward=lambda loss: loss.backward(),
        to_ref=lambda g: torch.cat(g).double(),
        counts=lambda: (1, 0),
    )
    bench.measure([case, ok], torch.device("cpu"), repeats=2, warmup=0)
    assert case.error is not None and case.error.startswith("CUDA out of memory")
    assert case.times == [] and len(ok.times) == 2
    problem = bench.Problem.__new__(bench.Problem)
    problem.reference = torch.ones(1, dtype=torch.float64)
    row = bench._row(case, problem)
    assert math.isnan(row["ms_per_step"]) and row["error"] == case.error
