"""A suite's result as a markdown table (the columns of :data:`COLUMNS`) and as JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

COLUMNS = (
    "impl",
    "method",
    "depth",
    "restarts",
    "iterations",
    "ms_per_step",
    "peak_mib",
    "grad_rel_err",
)


def _fmt(value: Any, key: str) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if key == "grad_rel_err":
            return f"{value:.1e}"
        if key == "ms_per_step":
            return f"{value:.2f}" if value < 100 else f"{value:.1f}"
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The rows as a markdown table, then the configurations and the targets."""
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_fmt(r[c], c) for c in COLUMNS) + " |")
    for r in result["rows"]:
        if r.get("error"):
            lines.append(f"\n{r['impl']} {r['config']}: not measured ({r['error']})")
    lines.append("")
    lines.append("Configurations (iterations = forward scheme applications; deq backward):")
    seen: set[str] = set()
    for r in result["rows"]:
        if r["config"] in seen:
            continue
        seen.add(r["config"])
        bwd = [
            f"{x['impl']} {x['backward_iterations']}"
            for x in result["rows"]
            if x["config"] == r["config"] and x["method"] == "deq"
        ]
        extra = f" (backward iterations: {', '.join(bwd)})" if bwd else ""
        lines.append(f"- {r['config']}{extra}")
    lines.append("")
    lines.append("Targets (measured on ms_per_step, not asserted; CPU-time ratio in brackets):")
    for t in result["targets"]:
        mark = "met" if t["met"] else "MISSED"
        if "cpu_value" in t:
            val = f"{t['value']:.2f}x [{t['cpu_value']:.2f}x]"
        elif t.get("kind") == "ratio":
            val = f"{t['value']:.2f}x"
        else:
            val = f"{t['value']:.2e}"
        lines.append(f"- {t['target']}: {val} ({mark})")
    units = result.get("denoiser_units") or {}
    if units:
        lines.append("")
        lines.append(
            "Denoiser unit costs (bare calls, medians): "
            + ", ".join(f"{k} {v:.2f}" for k, v in units.items())
        )
        for r in result["rows"]:
            if math.isfinite(r.get("denoiser_calls_ms", float("nan"))):
                lines.append(
                    f"- {r['impl']} {r['config']}: {r['ms_per_step']:.1f} ms against "
                    f"{r['denoiser_calls_ms']:.1f} ms of denoiser calls"
                )
    m = result["machine"]
    lines.append("")
    lines.append(
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
        f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}; torch {m['torch']}, "
        f"deepinv {m['deepinv']}; load average before {m['loadavg_before']}, after "
        f"{m['loadavg_after']}; {result['repeats']} timed repetitions after {result['warmup']} "
        f"warm-up; reference: {result['reference'].get('estimator')}"
    )
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | Path) -> None:
    from pipeline.util import jsonio

    jsonio.write(path, result)
