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
    parts = ("grads", "bench", "quality")  # compile: its own (slow) test below
    gpucheck.run(out, torch.device("cpu"), parts, tiny=True, log=lambda _: None)
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


@pytest.mark.slow  # Inductor compiles C++ kernels: tens of seconds on a loaded 2-core machine
def test_compile_part_times_eager_compiled_and_the_floor(tmp_path: Path) -> None:
    """Part ``compile`` at tiny size (DRUNet nc 2, rJFB K=2 T=3): every column is there, and the
    gradient of the compiled untracked block agrees with eager within the stated tolerance."""
    gpucheck.run(tmp_path, torch.device("cpu"), ("compile",), tiny=True, log=lambda _: None)
    result = json.loads((tmp_path / "compile.json").read_text())
    assert [r["precision"] for r in result["rows"]] == ["float32", "bfloat16"]
    for row in result["rows"]:
        for key in ("eager_ms", "compiled_ms", "floor_ms", "compile_seconds"):
            assert row[key] > 0, (key, row)
        assert row["grad_norm"] > 0 and row["grad_ok"], row
        assert row["grad_tolerance"] == gpucheck.COMPILE_GRAD_TOL[row["precision"]]
    assert len(result["targets"]) == 3
    table = (tmp_path / "compile.md").read_text()
    assert "| float32 |" in table and "| bfloat16 |" in table and "floor" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_packing_refuses_without_a_gpu(tmp_path: Path) -> None:
    from helpers import REPO, assert_one_line_error, run_module

    for args in (
        ["pipeline.tools.gpucheck", "--parts", "packing", "--device", "cpu"],
        ["pipeline.tools.packing", "--device", "cpu"],
    ):
        result = run_module(*args, "--out", str(tmp_path / "out"), cwd=REPO)
        assert_one_line_error(result, r"packing: needs a CUDA GPU \(none visible\)")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_packing_table_from_measured_runs() -> None:
    """The packing summary's format, from made-up runs (the real ones need a GPU): trials per
    hour, gain over 1 GPU per trial, per-trial slowdown against its solo time, targets."""
    from pipeline.tools import packing

    def trials(seconds: list[float]) -> list[dict]:
        return [
            {"name": f"t{i}", "status": "finished", "train_seconds": s, "peak_mem_mib": 100.0 * i}
            for i, s in enumerate(seconds, 1)
        ]

    gpu = {"gpu_samples": 3, "gpu_util_mean": 50.0, "gpu_util_p95": 90.0, "gpu_mem_peak_mib": 9e3}
    runs = [
        {"fraction": 1.0, "wall_seconds": 400.0, "trials": trials([10, 20, 30, 40]), "gpu": gpu},
        {"fraction": 0.25, "wall_seconds": 160.0, "trials": trials([12, 22, 45, 44]), "gpu": gpu},
    ]
    result = packing.summarise(runs)
    one, quarter = result["rows"]
    assert one["trials_per_hour"] == pytest.approx(36.0) and one["gain_vs_1"] == 1.0
    assert quarter["gain_vs_1"] == pytest.approx(2.5)
    assert quarter["slowdown_vs_solo_max"] == pytest.approx(1.5)
    assert quarter["peak_mem_mib_max"] == 400.0
    assert [t["met"] for t in result["targets"]] == [True, True]
    text = packing.markdown({"card": "NVIDIA H200", **result})
    assert "NVIDIA H200" in text and "| 0.25 | 4/4 | 160 | 90.0 | 2.50x | 50 / 90 |" in text
    params = packing.fraction_params(
        {"priors": {"p": {"type": "pnp", "weights": "m.pt"}}, "ray": {}}, 0.25, Path("/w.pt")
    )
    assert params["ray"] == {"gpus_per_trial": 0.25, "max_concurrent_trials": 4}
    assert params["priors"]["p"]["weights"] == "/w.pt"
