"""Upper bounds of the params that size an allocation: one table, checked once after the schema.

A value past its bound is refused with one line, before anything is built or allocated:
``params.yaml: sweep.deq.anderson_memory: expected an integer <= 100, got 100000 (did you mean a
smaller value?)``. The bounds are far above any study this project runs; they exist so that a
typo (an extra zero or three) fails in a second instead of in an out-of-memory kill.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from pipeline.util.errors import ConfigError

# (model class name, field) -> the largest value accepted (an int, or each int of a list).
MAXIMA: dict[tuple[str, str], int] = {
    ("DataConfig", "patches_per_image"): 4096,
    ("DataConfig", "train_images"): 10_000,
    ("DataConfig", "val_images"): 10_000,
    ("DataConfig", "test_images"): 10_000,
    ("PretrainConfig", "nc"): 256,
    ("PretrainConfig", "nb"): 16,
    ("PretrainConfig", "depth"): 64,
    ("PretrainConfig", "nf"): 512,
    ("PretrainConfig", "steps"): 10_000_000,
    ("PretrainConfig", "batch_size"): 4096,
    ("PnPPrior", "nc"): 256,
    ("PnPPrior", "nb"): 16,
    ("PnPPrior", "depth"): 64,
    ("PnPPrior", "nf"): 512,
    ("TrainConfig", "epochs"): 100_000,
    ("TrainConfig", "batch_size"): 4096,
    ("TrainConfig", "probe_batch_size"): 4096,
    ("TrainConfig", "steps_per_epoch"): 10_000_000,
    ("TrainConfig", "eval_max_iter"): 1_000_000,
    ("TrainOverrides", "epochs"): 100_000,
    ("TrainOverrides", "batch_size"): 4096,
    ("TrainOverrides", "probe_batch_size"): 4096,
    ("TrainOverrides", "steps_per_epoch"): 10_000_000,
    ("TrainOverrides", "eval_max_iter"): 1_000_000,
    ("DEQOptions", "anderson_memory"): 100,
    ("DEQOptions", "max_iter"): 1_000_000,
    ("DEQOptions", "backward_max_iter"): 1_000_000,
    ("SweepConfig", "depths"): 1000,
    ("SweepConfig", "restarts"): 1000,
    ("SweepConfig", "unrolled_iterations"): 100_000,
    ("TrialSpec", "depth"): 1000,
    ("TrialSpec", "restarts"): 1000,
    ("TrialSpec", "iterations"): 100_000,
    ("ReportConfig", "images"): 1000,
}

# The prepared patches (clean + observed, float32) of all splits together.
MAX_PREPARED_BYTES = 8 << 30


def check_maxima(cfg: Any, label: str = "params.yaml") -> None:
    """ConfigError (one line, naming the key) for the first value past its bound in MAXIMA, or
    a data section whose patches would not fit in :data:`MAX_PREPARED_BYTES`."""
    for loc, value, limit in _bounded(cfg, ()):
        if value > limit:
            raise ConfigError(
                f"{label}: {_where(loc)}: expected an integer <= {limit}, got {value} (did you "
                "mean a smaller value?)"
            )
    d = cfg.data
    images = d.train_images + d.val_images + d.test_images
    size = 2 * images * d.patches_per_image * d.channels * d.patch_size**2 * 4
    if size > MAX_PREPARED_BYTES:
        raise ConfigError(
            f"{label}: data: {images} images x {d.patches_per_image} patches of "
            f"{d.channels}x{d.patch_size}x{d.patch_size} take {size / 2**30:.1f} GiB, more than "
            f"the {MAX_PREPARED_BYTES >> 30} GiB limit (did you mean a smaller "
            "data.patches_per_image or data.patch_size?)"
        )


def _bounded(node: Any, loc: tuple[Any, ...]):
    if isinstance(node, BaseModel):
        kind = type(node).__name__
        for name in type(node).model_fields:
            value = getattr(node, name)
            limit = MAXIMA.get((kind, name))
            if limit is not None:
                items = value if isinstance(value, list) else [value]
                for i, v in enumerate(items):
                    if isinstance(v, int) and not isinstance(v, bool):
                        at = (*loc, name, i) if isinstance(value, list) else (*loc, name)
                        yield at, v, limit
            yield from _bounded(value, (*loc, name))
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _bounded(v, (*loc, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _bounded(v, (*loc, i))


def _where(loc: tuple[Any, ...]) -> str:
    """``sweep.deq.anderson_memory``, ``sweep.depths[2]``, ``priors.'my prior'.nc``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[\w.-]+", str(part)) else repr(part)
            out += f".{text}" if out else text
    return out
