"""The targets of issue 6 a suite's rows are checked against (ratios to the floor and to
deepinv, DEQ gradient error, denoiser calls, step memory, the bf16 speed-up)."""

from __future__ import annotations

import math
from typing import Any

# Targets of issue 6 (reported, never asserted).
FLOOR_RATIO_TARGET = 1.25


DEEPINV_RATIO_TARGET = 0.5


DEQ_GRAD_TARGET = 1e-4


# Targets of issue 4 for the GPU suite's rJFB step (reported, never asserted): its time against
# the sum of its denoiser calls, its peak memory against K tracked steps, bf16 restarts' speed-up.
DENOISER_CALLS_TARGET = 1.05


STEP_MEMORY_SLACK = 1.10


BF16_SPEEDUP_TARGET = 1.15


def _find(rows: list[dict[str, Any]], impl: str, config: str) -> dict[str, Any] | None:
    for r in rows:
        if r["impl"] == impl and r["config"] == config:
            return r
    return None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue-6 targets, evaluated on the rows (reported, not asserted)."""
    out: list[dict[str, Any]] = []
    for r in rows:
        if r["impl"] != "rjfb-pipeline":
            continue
        floor = _find(rows, "torch-floor", r["config"])
        if floor is not None:
            ratio = r["ms_per_step"] / floor["ms_per_step"]
            out.append(
                {
                    "target": f"{r['config']}: project / floor <= {FLOOR_RATIO_TARGET}",
                    "value": ratio,
                    "cpu_value": r["cpu_ms_per_step"] / floor["cpu_ms_per_step"],
                    "met": ratio <= FLOOR_RATIO_TARGET,
                }
            )
        if r["method"] in ("deq", "jfb"):
            dinv = _find(rows, "deepinv", r["config"])
            if dinv is not None:
                ratio = r["ms_per_step"] / dinv["ms_per_step"]
                out.append(
                    {
                        "target": f"{r['config']}: project / deepinv <= {DEEPINV_RATIO_TARGET}",
                        "value": ratio,
                        "cpu_value": r["cpu_ms_per_step"] / dinv["cpu_ms_per_step"],
                        "met": ratio <= DEEPINV_RATIO_TARGET,
                    }
                )
        if r["method"] == "deq":
            out.append(
                {
                    "target": f"{r['config']}: DEQ grad rel err <= {DEQ_GRAD_TARGET:g}",
                    "value": r["grad_rel_err"],
                    "met": r["grad_rel_err"] <= DEQ_GRAD_TARGET,
                }
            )
    return out


def gpu_targets(rows: list[dict[str, Any]], units: dict[str, float]) -> list[dict[str, Any]]:
    """The issue-4 targets of the gpu suite's rJFB rows (reported, not asserted)."""
    out: list[dict[str, Any]] = []
    if not units:
        return out
    for r in rows:
        if r["impl"] != "rjfb-pipeline" or r["method"] != "rjfb":
            continue
        ratio = r["ms_per_step"] / r["denoiser_calls_ms"]
        out.append(
            {
                "target": f"{r['config']}: step / its denoiser calls <= {DENOISER_CALLS_TARGET}",
                "value": ratio,
                "kind": "ratio",
                "met": ratio <= DENOISER_CALLS_TARGET,
            }
        )
        one = units.get("one_step_peak_mib")
        peak = r.get("peak_above_resident_mib", float("nan"))
        if one is not None and math.isfinite(peak):
            ratio = peak / (r["depth"] * one)
            out.append(
                {
                    "target": f"{r['config']}: peak memory / (K x one tracked step) <= "
                    f"{STEP_MEMORY_SLACK}",
                    "value": ratio,
                    "kind": "ratio",
                    "met": ratio <= STEP_MEMORY_SLACK,
                }
            )
        if r["config"].endswith(" restarts"):
            full = _find(rows, "rjfb-pipeline", r["config"].rsplit(" ", 2)[0])
            if full is not None:
                speedup = full["ms_per_step"] / r["ms_per_step"]
                out.append(
                    {
                        "target": f"{r['config']}: speed-up over full-precision restarts >= "
                        f"{BF16_SPEEDUP_TARGET}",
                        "value": speedup,
                        "kind": "ratio",
                        "met": speedup >= BF16_SPEEDUP_TARGET,
                    }
                )
    return out
