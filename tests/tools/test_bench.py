"""``rjfb bench``: the quick CPU suite runs and writes every row; gradient values, never times.

One quick CPU run (module fixture, in-process through the CLI) serves every check: the JSON has
each (impl, configuration) row with the documented columns and finite numbers; the project's DEQ
gradients meet the float32 target against the float64 reference, which itself matches the closed
form of ℓ1-Haar denoising; and the bare-PyTorch floor computes the same gradient as the project
for every configuration (same arithmetic, so agreement to float32 rounding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.tools import bench

CPU_LABELS = [c.label for c in bench.cpu_configs()]


def _expected_rows(configs: list[bench.Config]) -> set[tuple[str, str]]:
    rows = set()
    for cfg in configs:
        rows.add(("rjfb-pipeline", cfg.label))
        rows.add(("torch-floor", cfg.label))
        if bench.deepinv_supports(cfg):
            rows.add(("deepinv", cfg.label))
    return rows


@pytest.fixture(scope="module")
def quick_cpu(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    assert main(["bench", "--suite", "cpu", "--quick", "--json", str(path)]) == 0
    assert torch.get_num_threads() == threads  # the suite restores the thread count
    return json.loads(path.read_text())  # strict JSON: no NaN


def _check_rows(result: dict, configs: list[bench.Config]) -> None:
    rows = result["rows"]
    assert {(r["impl"], r["config"]) for r in rows} == _expected_rows(configs)
    assert len(rows) == len(_expected_rows(configs))  # no duplicates
    for r in rows:
        for col in bench.COLUMNS:
            assert col in r, (col, r)
        assert r["impl"] in bench.IMPLS
        assert r["method"] in ("rjfb", "jfb", "deq", "unrolled")
        for col in ("depth", "restarts", "iterations"):
            assert isinstance(r[col], int) and r[col] >= 0, (col, r)
        for col in ("ms_per_step", "peak_mib", "grad_rel_err"):
            assert isinstance(r[col], float) and math.isfinite(r[col]), (col, r)
            assert r[col] >= 0, (col, r)
        assert r["ms_per_step"] > 0 and r["iterations"] >= 1
        assert len(r["ms_all"]) >= 1
    assert {"cpu", "cpu_count", "torch_threads", "torch", "deepinv", "device"} <= set(
        result["machine"]
    )


def test_quick_cpu_suite_writes_every_row(quick_cpu: dict) -> None:
    _check_rows(quick_cpu, bench.cpu_configs())
    assert len(quick_cpu["rows"][0]["ms_all"]) >= 5  # median of at least 5
    assert quick_cpu["targets"]  # evaluated and reported, never asserted here


def test_rows_describe_what_ran(quick_cpu: dict) -> None:
    by = {(r["impl"], r["config"]): r for r in quick_cpu["rows"]}
    for cfg in bench.cpu_configs():
        project = by[("rjfb-pipeline", cfg.label)]
        floor = by[("torch-floor", cfg.label)]
        assert project["method"] == floor["method"] == cfg.method
        assert project["iterations"] == floor["iterations"]
        if cfg.method in ("rjfb", "unrolled"):
            assert project["iterations"] == (cfg.restarts + 1) * cfg.depth
            assert project["depth"] == cfg.depth
        if cfg.method == "deq":
            assert project["backward_iterations"] == floor["backward_iterations"] >= 1
            if cfg.tol is None:  # fixed counts: the unreachable tolerance never stops them
                assert project["iterations"] == cfg.forward_iter + 1
                assert project["backward_iterations"] == cfg.backward_iter
                assert by[("deepinv", cfg.label)]["backward_iterations"] == cfg.backward_iter


def test_deq_gradient_meets_the_float32_target(quick_cpu: dict) -> None:
    ref = quick_cpu["reference"]
    assert ref["converged"]
    # the float64 DEQ reference is the closed-form hypergradient of l1-Haar denoising
    assert ref["closed_form_rel_diff"] < 1e-8
    deq = [r for r in quick_cpu["rows"] if r["method"] == "deq"]
    assert deq
    for r in deq:
        assert r["grad_rel_err"] <= 1e-4, r
    # unrolling 100 contractive steps (0.8^100) is as exact; one JFB step is not
    by = {(r["impl"], r["config"]): r for r in quick_cpu["rows"]}
    assert by[("rjfb-pipeline", "unrolled N=100")]["grad_rel_err"] <= 1e-4
    assert by[("rjfb-pipeline", "jfb fwd 100")]["grad_rel_err"] > 0.1


def test_floor_gradient_equals_the_project_gradient(quick_cpu: dict) -> None:
    by = {(r["impl"], r["config"]): r for r in quick_cpu["rows"]}
    for label in CPU_LABELS:
        g_project = by[("rjfb-pipeline", label)]["grad"]
        g_floor = by[("torch-floor", label)]["grad"]
        assert g_project is not None and len(g_project) == len(g_floor) == 1
        assert g_floor[0] == pytest.approx(g_project[0], rel=1e-5, abs=0), label
        # deepinv (WaveletPrior or the same Haar prox) solves the same problem
        if ("deepinv", label) in by:
            assert by[("deepinv", label)]["grad"][0] == pytest.approx(g_project[0], rel=1e-4)


def test_markdown_table_has_exactly_the_columns(quick_cpu: dict) -> None:
    table = bench.markdown(quick_cpu)
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(bench.COLUMNS) + " |"
    assert len([ln for ln in lines if ln.startswith("| ")]) == 1 + len(quick_cpu["rows"])


def test_floor_haar_soft_threshold_is_the_project_prox() -> None:
    from pipeline.core.schemes import WaveletFB

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    scheme = WaveletFB("haar", 3, "l1").double()
    m = bench.HAAR.double()
    for t in (1e-3, 0.05, 0.3):
        want = scheme.prox(x, t / scheme.log_reg.exp().item())  # threshold γ·λ = t
        got = bench.haar_soft(x, torch.tensor(t, dtype=torch.float64), 3, m, m.mT.contiguous())
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_gpu_suite_runs_on_cpu_at_a_tiny_size(tmp_path: Path) -> None:
    path = tmp_path / "gpu.json"
    argv = ["bench", "--suite", "gpu", "--device", "cpu", "--size", "32", "--batch", "1"]
    argv += ["--width", "4", "--quick", "--repeats", "1", "--json", str(path)]
    assert main(argv) == 0
    result = json.loads(path.read_text())
    assert result["suite"] == "gpu" and result["machine"]["device"] == "cpu"
    _check_rows(result, bench.gpu_configs())
    by = {(r["impl"], r["config"]): r for r in result["rows"]}
    for cfg in bench.gpu_configs():
        project = by[("rjfb-pipeline", cfg.label)]
        floor = by[("torch-floor", cfg.label)]
        assert project["iterations"] == floor["iterations"]
        # same DRUNet weights, same blur (by hand in the floor): the same gradient
        assert floor["grad_norm"] == pytest.approx(project["grad_norm"], rel=1e-4)
        assert abs(project["grad_rel_err"] - floor["grad_rel_err"]) <= 1e-4


def test_unusable_devices_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    bad = [["bench", "--device", "banana"], ["bench", "--device", "meta"]]
    if not torch.cuda.is_available():
        bad += [["bench", "--device", "cuda"], ["bench", "--suite", "gpu"]]
    for argv in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--suite", "tpu"],
        ["bench", "--batch", "0"],
        ["bench", "--threads", "two"],
        ["bench", "--deepinv-prior", "ptwt"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_measure_runs_every_case_each_repetition_in_a_seeded_shuffled_order() -> None:
    # a rotating order put each case behind the same predecessor every time (a bias of up to
    # 12% on a row that followed a large one); the order is now shuffled per repetition, and
    # seeded, so two runs time the cases in the same orders
    from pipeline.tools.bench_base import Case, Config
    from pipeline.tools.bench_timing import measure

    def run() -> list[list[int]]:
        ran: list[int] = []
        cases = []
        for i in range(4):
            p = torch.ones(1, requires_grad=True)
            cases.append(
                Case(
                    "torch-floor",
                    Config("unrolled", depth=1),
                    [p],
                    forward=lambda i=i, p=p: (ran.append(i), p.sum())[1],
                    backward=lambda loss: loss.backward(),
                    to_ref=lambda g: torch.cat(g).double(),
                    counts=lambda: (1, 0),
                )
            )
        measure(cases, torch.device("cpu"), repeats=6, warmup=1)
        assert all(len(c.times) == 6 for c in cases)
        # the diagnostic step runs each case once first, in list order; then 7 repetitions
        assert ran[:4] == [0, 1, 2, 3]
        return [ran[4 + 4 * r : 8 + 4 * r] for r in range(7)]

    orders = run()
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders)
    predecessors = {o[o.index(2) - 1] if o.index(2) else None for o in orders}
    assert len(predecessors) > 1  # case 2 did not always follow the same case
    assert run() == orders
