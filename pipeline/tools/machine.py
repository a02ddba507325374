"""What a measurement ran on, in one dict the tools write next to their numbers.

info = machine(torch.device("cuda"), packages=("deepinv",))
info["cpu"], info["gpu"], info["deepinv"]
"""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Linux/macOS
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def machine(device: torch.device | None = None, packages: Sequence[str] = ()) -> dict[str, Any]:
    """Platform, CPU (model, count, usable, torch threads), Python and torch versions, the
    versions of ``packages``; with a CUDA ``device`` also the GPU, CUDA, memory and TF32 flags."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for name in packages:
        info[name] = importlib.import_module(name).__version__
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
            info["cuda"] = torch.version.cuda
            info["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
            info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
            info["matmul_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return info
