"""``pipeline.util.jsonio``: result files are strict JSON whatever the numbers are."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.util import jsonio


def test_strict_values() -> None:
    value = {
        1: [float("nan"), float("inf"), -0.5, np.float32(2.5), np.int64(3), np.bool_(True)],
        "t": (pd.NA, pd.NaT, None, "x", Path("a/b")),
    }
    assert jsonio.strict(value) == {
        "1": [None, None, -0.5, 2.5, 3, True],
        "t": [None, None, None, "x", "a/b"],
    }
    text = jsonio.dumps({"v": math.nan})
    assert json.loads(text) == {"v": None} and "NaN" not in text


def test_write_is_atomic_and_creates_parents(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    jsonio.write(path, {"x": np.float64(1.0)})
    assert json.loads(path.read_text()) == {"x": 1.0}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary left behind
