"""The results schema is the metrics contract, and one function picks the DEQ baseline."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.study.tables import (
    HISTORY_COLUMNS,
    JSON_LIST_COLUMNS,
    JSON_OBJECT_COLUMNS,
    TRIAL_SCHEMA,
    check_trial_keys,
    deq_baseline,
)


def test_an_unknown_metric_key_fails_loudly() -> None:
    with pytest.raises(KeyError, match=r"metric 'test_psnr_typo'.*not in the results schema"):
        check_trial_keys({"test_psnr": 30.0, "test_psnr_typo": 31.0})


def test_an_unknown_history_key_or_json_column_fails_loudly() -> None:
    with pytest.raises(KeyError, match=r"history key 'val_psnr_2'"):
        check_trial_keys({}, history=["epoch", "val_psnr_2"])
    with pytest.raises(KeyError, match=r"JSON column 'test_psnr'"):  # a number, not JSON
        check_trial_keys({}, json_columns=["test_psnr"])


def test_every_schema_and_history_key_and_theta_passes() -> None:
    check_trial_keys(
        [*TRIAL_SCHEMA, *HISTORY_COLUMNS, "theta.lambda", "theta.weights.3"],
        history=[*HISTORY_COLUMNS, "theta.tau"],
        json_columns=[*JSON_LIST_COLUMNS, *JSON_OBJECT_COLUMNS],
    )


def test_json_columns_are_the_schemas_json_columns() -> None:
    json_cols = {c for c, kind in TRIAL_SCHEMA.items() if kind == "json"}
    assert set(JSON_LIST_COLUMNS) | set(JSON_OBJECT_COLUMNS) == json_cols
    assert not set(JSON_LIST_COLUMNS) & set(JSON_OBJECT_COLUMNS)
    assert "theta_json" in JSON_OBJECT_COLUMNS and "test_psnr_per_image" in JSON_LIST_COLUMNS


def _trials() -> pd.DataFrame:
    rows = [
        ("a-deq-s0", "deq", "y", "finished", 0.0),
        ("a-deq-jr1.0-s0", "deq", "y", "finished", 1.0),
        ("a-deq-warm-s0", "deq", "warm", "finished", 0.0),
        ("a-deq-s1", "deq", "y", "failed", 0.0),
        ("a-deq-s2", "deq", "y", "finished", math.nan),  # an older table's missing weight
        ("a-rjfb-K1-T0-s0", "rjfb", "y", "finished", 0.0),
    ]
    cols = ["name", "estimator", "start", "status", "jac_reg"]
    return pd.DataFrame(rows, columns=cols)


def test_deq_baseline_is_deq_from_y_finished_and_optionally_plain() -> None:
    t = _trials()
    assert list(deq_baseline(t)["name"]) == ["a-deq-s0", "a-deq-jr1.0-s0", "a-deq-s2"]
    assert list(deq_baseline(t, plain=True)["name"]) == ["a-deq-s0", "a-deq-s2"]
    assert list(deq_baseline(t, finished=False)["name"]) == [
        "a-deq-s0",
        "a-deq-jr1.0-s0",
        "a-deq-s1",
        "a-deq-s2",
    ]
    # the report's normalised tables carry "finished" (a hollow result is not finished)
    hollow = t.assign(finished=[True, True, True, False, False, True])
    assert list(deq_baseline(hollow)["name"]) == ["a-deq-s0", "a-deq-jr1.0-s0"]
    # a table without jac_reg is plain DEQ throughout
    assert len(deq_baseline(t.drop(columns="jac_reg"), plain=True)) == 3
