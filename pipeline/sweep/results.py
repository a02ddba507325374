"""Results collection: the trials and history tables from Tune's results and MLflow."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.study.config import StudyConfig, prior_family
from pipeline.study.tables import HISTORY_COLUMNS, JSON_LIST_COLUMNS, TRIAL_COLUMNS, TRIAL_SCHEMA
from pipeline.sweep.grid import GridPoint
from pipeline.util.hashing import sha256_hex


def collect(grid: Any, cfg: StudyConfig) -> tuple[Any, Any]:
    """One row per trial (whatever its fate) and one row per (trial, epoch)."""
    import pandas as pd

    rows, hist = [], []
    for result in grid:
        point = GridPoint.from_tune(result.config["point"])
        spec = point.spec
        metrics = dict(result.metrics or {})
        family = prior_family(cfg.priors[spec.prior])
        train = cfg.train_for(spec.prior)
        row: dict[str, Any] = {
            "trial_id": point.key,
            "name": point.name,
            "prior": spec.prior,
            "prior_type": cfg.priors[spec.prior].type,
            "estimator": spec.estimator,
            "depth": spec.depth,
            "restarts": spec.restarts,
            "restart_tol": math.nan if spec.restart_tol is None else spec.restart_tol,
            "start": spec.start,
            "iterations": spec.iterations,
            "jac_reg": spec.jac_reg,
            "steps": math.nan if spec.steps is None else spec.steps,
            "damping": math.nan if spec.damping is None else spec.damping,
            "refine": spec.refine,
            "solver": spec.solver or "",
            "seed": spec.seed,
            "tuned_lr": point.lr if point.role == "tuned" and point.lr is not None else math.nan,
            "prior_family": family.key,
            "prior_label": family.label,
            "deq_tol": cfg.sweep.deq.tol,
            "deq_max_iter": cfg.sweep.deq.max_iter,
            "deq_backward_tol": cfg.sweep.deq.backward_tol,
            "deq_backward_max_iter": cfg.sweep.deq.backward_max_iter,
            "eval_tol": train.eval_tol,
            "eval_max_iter": train.eval_max_iter,
            "scheme_key": scheme_key(cfg.priors[spec.prior]),
            "epochs": train.epochs,
            "seed_train_noise": float(train.seed_train_noise),
        }
        finished = result.error is None and metrics.get("final") == 1
        if not finished:
            reason = _error_line(result.error) if result.error else "did not finish"
            row.update(status="failed", status_reason=reason)
        else:
            row.update(status=metrics["status"], status_reason=metrics.get("status_reason", ""))
        for col, kind in TRIAL_SCHEMA.items():  # the rest from the result, as the schema says
            if col not in row:
                row[col] = _cell(kind, col, metrics)
        rows.append(row)
        part = _history(result, metrics if finished else None)
        if part is not None:
            part.insert(0, "name", point.name)
            part.insert(0, "trial_id", point.key)
            hist.append(part)
    trials = pd.DataFrame(rows)
    trials = trials[TRIAL_COLUMNS]
    order = {t.name: i for i, t in enumerate(cfg.trials())}
    trials = trials.sort_values("name", key=lambda s: s.map(order)).reset_index(drop=True)
    history = pd.concat(hist, ignore_index=True) if hist else pd.DataFrame()
    if len(history):  # grid order, then epochs: the same table however trials were scheduled
        for col in HISTORY_COLUMNS:  # every column, whichever estimators the sweep ran
            if col not in history.columns:
                history[col] = math.nan
        rank = history["name"].map(order)
        history = history.assign(_rank=rank).sort_values(["_rank", "epoch"], kind="stable")
        history = history.drop(columns="_rank").reset_index(drop=True)
    return trials, history


def _cell(kind: str, col: str, metrics: Mapping[str, Any]) -> Any:
    """A trials-table cell of kind ``kind`` from a trial's result (its default where the result
    has none): JSON lists parsed, JSON objects kept as text, text, numbers (NaN)."""
    if col in JSON_LIST_COLUMNS:
        return json.loads(metrics.get(col, "[]"))
    if kind == "json":
        return metrics.get(col, "{}")
    if kind == "text":
        return metrics.get(col, "")
    return metrics.get(col, math.nan)


def scheme_key(prior: Any) -> str:
    """The prior's config without its ``train`` section, hashed: two priors with the same key
    train the same scheme from the same initial values and differ only in how they train."""
    dump = prior.model_dump(mode="json", exclude={"train"})
    return sha256_hex(json.dumps(dump, sort_keys=True, separators=(",", ":")), 16)


def _history(result: Any, final: Mapping[str, Any] | None) -> Any:
    """A trial's epochs: from its final result (exact, whatever restarts it went through), else
    from what Tune recorded (a failed trial; the last report of each epoch wins)."""
    import pandas as pd

    if final is not None and "history_json" in final:
        df = pd.DataFrame(json.loads(final["history_json"]))
    else:
        df = result.metrics_dataframe
        if df is None or not len(df) or "epoch" not in df:
            return None
        if "final" in df:
            df = df[df["final"] == 0]
        df = df.drop_duplicates("epoch", keep="last")
    if not len(df) or "epoch" not in df:
        return None
    keep = [c for c in df.columns if c in HISTORY_COLUMNS or c.startswith("theta.")]
    return df[keep].reset_index(drop=True).copy()


def _error_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    cause = [line for line in text if "Error" in line or "Exception" in line]
    return (cause[-1] if cause else (text[-1] if text else type(error).__name__))[:500]


def write_tables(trials: Any, history: Any, out_dir: Path) -> None:
    """Write ``trials.parquet`` and ``history.parquet`` as a pair: both or neither.

    Both are written in full (and fsynced) to temporary files beside their targets before either
    replaces anything, then ``history.parquet`` is renamed into place and ``trials.parquet`` last:
    readers (DVC, the report) key on the trials table, so the new trials table never appears
    beside an old history. A write that fails (disk full, a file-size limit, no permission) removes
    both temporary files, leaves the previous pair as it was and raises one-line
    :class:`~pipeline.util.errors.DataError`. Only a crash between the two renames (microseconds,
    no I/O of their own) can leave a new history beside the old trials table.
    """
    import os

    from pipeline.util.errors import DataError

    out_dir = Path(out_dir)
    # a killed earlier writer's temporary files (never read by anything)
    for stale in (".trials.parquet.tmp", ".history.parquet.tmp"):
        (out_dir / stale).unlink(missing_ok=True)
    pairs = (("history.parquet", history), ("trials.parquet", trials))
    temps = [out_dir / f".{name}.tmp" for name, _ in pairs]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for tmp, (_, df) in zip(temps, pairs, strict=True):
            with open(tmp, "wb") as f:
                df.to_parquet(f, index=False)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename makes it visible
        for tmp, (name, _) in zip(temps, pairs, strict=True):
            os.replace(tmp, out_dir / name)
        _fsync_dir(out_dir)
    except OSError as err:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        why = err.strerror or type(err).__name__
        raise DataError(
            f"{out_dir}: cannot write trials.parquet and history.parquet ({why}); the previous "
            "tables are unchanged (free space and rerun: finished trials are not trained again)"
        ) from None
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Persist the renames in ``folder`` (best effort: not every filesystem allows it)."""
    import os

    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
