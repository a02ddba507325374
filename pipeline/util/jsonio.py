"""Strict JSON for result files (benchmarks, device checks, overhead, report metrics).

Python's ``json`` writes NaN and Infinity, which are not JSON, and refuses numpy scalars.
:func:`strict` turns a result into plain JSON values: non-finite floats and missing values
(None, pandas NA/NaT) become null, numpy scalars become Python numbers, mapping keys become
strings, anything else that is not a JSON value becomes its ``str``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _missing(value: Any) -> bool:
    if value is None:
        return True
    # pandas' NA/NaT: only possible when pandas is already imported (this module never imports it)
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)


def strict(value: Any) -> Any:
    """``value`` as strict JSON values (see the module doc)."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return value
    if _missing(value):
        return None
    return str(value)


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (``allow_nan=False`` proves it)."""
    return json.dumps(strict(value), indent=indent, allow_nan=False)


def write(path: str | Path, value: Any) -> Path:
    """Write ``value`` as strict JSON to ``path`` (parents created), atomically: a reader never
    sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(value) + "\n")
    tmp.replace(path)
    return path
