"""Packing trials on one GPU: the real gpu-smoke sweep at ``ray.gpus_per_trial`` 1, 0.5, 0.25.

``python -m pipeline.tools.gpucheck --parts packing --out docs/results/gpu-<card>`` (or
``python -m pipeline.tools.packing --out DIR``) runs, on a machine with a CUDA GPU:

1. the ``prepare`` and ``pretrain`` stages of ``profiles/gpu-smoke.yaml`` once (subprocesses, as
   ``dvc repro`` runs them);
2. the ``sweep`` stage (real Ray Tune + MLflow, a local Ray started by the stage) three times,
   with ``ray.gpus_per_trial`` 1, 0.5 and 0.25 (``max_concurrent_trials`` 1/fraction), each in
   its own folder (its own ``mlflow.db`` and ``ray_results``), while a thread samples the card's
   utilisation and used memory with ``nvidia-smi`` every ``interval`` seconds;
3. the ``report`` stage on the last sweep.

It writes ``packing.json`` and ``packing.md`` (per fraction: trials, sweep wall time, trials per
hour and its gain over 1 GPU per trial, mean and 95th-percentile GPU utilisation, the card's
peak used memory, the largest per-trial peak allocated memory (``peak_mem_mib``), and each
trial's training time against its solo time at fraction 1), and the last sweep's
``trials.parquet``, ``ablation.md`` and the profile used. On a machine without a CUDA GPU it
refuses with one line: nothing here can be measured on a CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.util.errors import UserError

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "profiles" / "gpu-smoke.yaml"
FRACTIONS = (1.0, 0.5, 0.25)
# the targets: trials per hour at 0.25 against 1, and no trial much slower than solo
TARGET_GAIN = 1.8
TARGET_SLOWDOWN = 1.5


class NoGPU(UserError):
    """The packing measurement needs a CUDA GPU."""


def require_gpu(device: Any) -> None:
    """NoGPU (one line) unless ``device`` is a visible CUDA device and ``nvidia-smi`` runs."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        raise NoGPU(
            "packing: needs a CUDA GPU (none visible): trials per hour, GPU utilisation and "
            "peak memory of packed trials cannot be measured on a CPU; run "
            "`python -m pipeline.tools.gpucheck --parts packing --out docs/results/gpu-<card>` "
            "on a GPU machine"
        )
    if shutil.which("nvidia-smi") is None:
        raise NoGPU("packing: nvidia-smi not found: GPU utilisation cannot be sampled")


class GpuSampler:
    """A thread sampling ``nvidia-smi`` (utilisation %, used MiB of GPU 0) every ``interval``."""

    QUERY: ClassVar[list[str]] = [
        "nvidia-smi",
        "--query-gpu=utilization.gpu,memory.used",
        "--format=csv,noheader,nounits",
    ]

    def __init__(self, interval: float = 1.0, query: Sequence[str] | None = None) -> None:
        self.interval = interval
        self.query = list(query or self.QUERY)
        self.samples: list[tuple[float, float, float]] = []  # (seconds, util %, used MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            try:
                text = subprocess.run(
                    self.query, capture_output=True, text=True, timeout=10, check=True
                ).stdout
                util, mem = (float(v) for v in text.strip().splitlines()[0].split(","))
                self.samples.append((time.perf_counter() - start, util, mem))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | int]:
        utils = sorted(s[1] for s in self.samples)
        mems = [s[2] for s in self.samples]
        if not utils:
            return {"gpu_samples": 0}
        p95 = utils[min(len(utils) - 1, round(0.95 * (len(utils) - 1)))]
        return {
            "gpu_samples": len(utils),
            "gpu_util_mean": statistics.fmean(utils),
            "gpu_util_p95": p95,
            "gpu_mem_peak_mib": max(mems),
        }


def _stage(args: Sequence[str], log: Callable[[str], None]) -> float:
    """Run ``python -m <args>`` from the repository (a local Ray, not a cluster); seconds."""
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-20:]
        raise RuntimeError(f"{' '.join(args[:1])} failed ({done.returncode}):\n" + "\n".join(tail))
    log(f"[packing] {args[0]}: {time.perf_counter() - start:.0f} s")
    return time.perf_counter() - start


def fraction_params(raw: dict[str, Any], fraction: float, weights: Path) -> dict[str, Any]:
    """The profile with ``ray.gpus_per_trial = fraction`` (and as many concurrent trials as fit
    one card), the PnP priors' weights at ``weights``."""
    out = copy.deepcopy(raw)
    out["ray"] = {
        **out.get("ray", {}),
        "gpus_per_trial": fraction,
        "max_concurrent_trials": max(1, round(1 / fraction)),
    }
    for prior in out["priors"].values():
        if prior.get("type") == "pnp":
            prior["weights"] = str(weights)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows per fraction from each run's ``{fraction, wall_seconds, trials: [...], gpu: {...}}``
    (``trials``: name, status, train_seconds, peak_mem_mib), and the targets."""
    solo = next((r for r in runs if r["fraction"] == 1.0), None)
    solo_train = {t["name"]: t["train_seconds"] for t in solo["trials"]} if solo else {}
    rows = []
    for r in runs:
        finished = [t for t in r["trials"] if t["status"] == "finished"]
        per_hour = 3600 * len(finished) / r["wall_seconds"] if r["wall_seconds"] > 0 else 0.0
        slowdowns = [
            t["train_seconds"] / solo_train[t["name"]]
            for t in finished
            if solo_train.get(t["name"], 0) > 0
        ]
        rows.append(
            {
                "gpus_per_trial": r["fraction"],
                "trials": len(r["trials"]),
                "finished": len(finished),
                "wall_seconds": r["wall_seconds"],
                "trials_per_hour": per_hour,
                "train_seconds_sum": sum(t["train_seconds"] for t in finished),
                "peak_mem_mib_max": max((t["peak_mem_mib"] for t in finished), default=0.0),
                "slowdown_vs_solo_max": max(slowdowns, default=float("nan")),
                "slowdown_vs_solo_median": (
                    statistics.median(slowdowns) if slowdowns else float("nan")
                ),
                **r.get("gpu", {}),
            }
        )
    base = next((row for row in rows if row["gpus_per_trial"] == 1.0), None)
    for row in rows:
        row["gain_vs_1"] = (
            row["trials_per_hour"] / base["trials_per_hour"]
            if base and base["trials_per_hour"] > 0
            else float("nan")
        )
    quarter = next((row for row in rows if row["gpus_per_trial"] == 0.25), None)
    targets = []
    if quarter is not None:
        targets = [
            {
                "target": f"trials per hour at 0.25 >= {TARGET_GAIN}x at 1",
                "value": quarter["gain_vs_1"],
                "met": quarter["gain_vs_1"] >= TARGET_GAIN,
            },
            {
                "target": f"no trial slower than {TARGET_SLOWDOWN}x its solo time at 0.25",
                "value": quarter["slowdown_vs_solo_max"],
                "met": quarter["slowdown_vs_solo_max"] <= TARGET_SLOWDOWN,
            },
        ]
    return {"rows": rows, "targets": targets}


def markdown(result: dict[str, Any]) -> str:
    """The packing table (one row per gpus_per_trial) and the targets."""
    lines = [
        f"gpu-smoke sweep on {result.get('card', '?')}: real Ray Tune + MLflow, one card",
        "",
        "| gpus_per_trial | trials | wall s | trials/hour | gain vs 1 | GPU util mean / p95 % "
        "| card peak MiB | trial peak MiB (max) | slowdown vs solo (median / max) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        util = (
            f"{r['gpu_util_mean']:.0f} / {r['gpu_util_p95']:.0f}" if r.get("gpu_samples") else "-"
        )
        mem = f"{r['gpu_mem_peak_mib']:.0f}" if r.get("gpu_samples") else "-"
        lines.append(
            f"| {r['gpus_per_trial']:g} | {r['finished']}/{r['trials']} | "
            f"{r['wall_seconds']:.0f} | {r['trials_per_hour']:.1f} | {r['gain_vs_1']:.2f}x | "
            f"{util} | {mem} | {r['peak_mem_mib_max']:.0f} | "
            f"{r['slowdown_vs_solo_median']:.2f} / {r['slowdown_vs_solo_max']:.2f} |"
        )
    return "\n".join(lines + targets_table(result["targets"]))


def _trials(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    table = pd.read_parquet(path)
    out = []
    for _, row in table.iterrows():
        out.append(
            {
                "name": str(row["name"]),
                "status": str(row.get("status", "finished")),
                "train_seconds": float(row.get("train_seconds", float("nan"))),
                "peak_mem_mib": float(row.get("peak_mem_mib", float("nan"))),
            }
        )
    return out


def run(
    out: Path,
    device: Any,
    params: Path = SMOKE,
    fractions: Sequence[float] = FRACTIONS,
    interval: float = 1.0,
    log: Callable[[str], None] = print,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The measurement (see the module's docstring); refuses without a CUDA GPU."""
    require_gpu(device)
    import torch

    out.mkdir(parents=True, exist_ok=True)
    work = Path(workdir or tempfile.mkdtemp(prefix="rjfb-packing-"))
    raw = yaml.safe_load(params.read_text())
    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    (base / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    prepared, weights = base / "data" / "prepared", base / "models" / "denoiser.pt"
    seconds = {
        "prepare": _stage(
            [
                "stages.prepare",
                "--params",
                str(base / "params.yaml"),
                "--out",
                str(prepared),
                "--quiet",
            ],
            log,
        ),
        "pretrain": _stage(
            [
                "stages.pretrain",
                "--params",
                str(base / "params.yaml"),
                "--prepared",
                str(prepared),
                "--out",
                str(weights),
                "--quiet",
            ],
            log,
        ),
    }
    runs = []
    last: Path | None = None
    for fraction in fractions:
        folder = work / f"gpus-{fraction:g}"
        folder.mkdir(parents=True, exist_ok=True)
        p = folder / "params.yaml"
        p.write_text(yaml.safe_dump(fraction_params(raw, fraction, weights), sort_keys=False))
        with GpuSampler(interval) as sampler:
            wall = _stage(["stages.sweep", "--params", str(p), "--prepared", str(prepared),
                           "--out", str(folder / "reports")], log)  # fmt: skip
        runs.append(
            {
                "fraction": fraction,
                "wall_seconds": wall,
                "trials": _trials(folder / "reports" / "trials.parquet"),
                "gpu": sampler.summary(),
            }
        )
        last = folder
    result: dict[str, Any] = {
        "card": torch.cuda.get_device_name(device),
        "profile": str(params),
        "stage_seconds": seconds,
        "runs": runs,
        **summarise(runs),
    }
    if last is not None:
        _stage(["stages.report", "--params", str(last / "params.yaml"), "--trials",
                str(last / "reports" / "trials.parquet"), "--history",
                str(last / "reports" / "history.parquet"), "--out", str(last / "reports")], log)  # fmt: skip
        for name in ("trials.parquet", "ablation.md"):
            if (last / "reports" / name).exists():
                shutil.copyfile(last / "reports" / name, out / name)
    shutil.copyfile(params, out / params.name)
    (out / "packing.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    (out / "packing.md").write_text(markdown(result) + "\n")
    return result


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.packing", description=__doc__)
    parser.add_argument("--out", required=True, help="e.g. docs/results/gpu-<card>")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--params", default=str(SMOKE), help="(default: %(default)s)")
    parser.add_argument("--interval", type=float, default=1.0, help="nvidia-smi sampling s")
    args = parser.parse_args(argv)
    import torch

    run(Path(args.out), torch.device(args.device), Path(args.params), interval=args.interval)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.util.cli import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())


def targets_table(targets: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines of a device check's targets (what was aimed at, the value, met or not)."""
    lines = ["", "| target | value | met |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['value']:.3g} | {'yes' if t['met'] else 'no'} |")
    return lines
