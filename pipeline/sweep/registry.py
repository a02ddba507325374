"""The model registry: the best configuration of each prior, registered under the alias ``best``.

After a sweep's tables are written (the sweep stage), each prior's finished trials are grouped
by configuration (``study.tables.CONFIG_KEYS``: estimator, K, T, restart tolerance, start, N,
Jacobian penalty; every seed of one arm together).
The best configuration is the one with the highest mean **validation** PSNR over its seeds (the
test split stays out of the choice); its best-validating seed's run is registered as a version of
the registered model ``<experiment>.<prior>`` from the run's ``model/`` artefact
(:mod:`pipeline.study.export`: state dicts and an architecture JSON), and the alias ``best``
points at it. The version's tags say what was chosen and how it compares with DEQ on the test
split: ``delta_psnr_vs_deq`` = mean test PSNR of the configuration − mean test PSNR of the
prior's plain DEQ trials started from y (``n/a`` without them), ``test_psnr`` (the registered
trial's own).

Registering again the same run is a no-op, so a rerun of an unchanged sweep adds no version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.study.tables import CONFIG_KEYS, deq_baseline
from pipeline.sweep import tracking

ALIAS = "best"
CONFIG_COLUMNS = list(CONFIG_KEYS)
MODEL_PATH = "model"


@dataclass(frozen=True)
class Registered:
    """One prior's registered best: the model name, its version and the chosen trial."""

    prior: str
    model: str
    version: str
    run_id: str
    trial: str
    test_psnr: float
    delta_psnr_vs_deq: float


def model_name(experiment: str, prior: str) -> str:
    return f"{experiment}.{prior}"


def best_per_prior(trials: Any) -> dict[str, dict[str, Any]]:
    """prior -> the chosen trial row (a dict) plus ``config_test_psnr``, ``config_val_psnr``,
    ``deq_test_psnr`` and ``delta_psnr_vs_deq``; priors without a finished trial are absent."""
    done = trials[(trials["status"] == "finished") & (trials["mlflow_run_id"] != "")].copy()
    if not len(done):
        return {}
    for col in CONFIG_COLUMNS:  # NaN never equals NaN: group unset options together
        if col not in done.columns:
            done[col] = "-"
        done[col] = done[col].astype(object).where(done[col].notna(), "-")
    out: dict[str, dict[str, Any]] = {}
    for prior, rows in done.groupby("prior", sort=True):
        means = rows.groupby(CONFIG_COLUMNS, dropna=False)[["final_val_psnr", "test_psnr"]].mean()
        config = means["final_val_psnr"].idxmax()
        arm = rows[(rows[CONFIG_COLUMNS] == list(config)).all(axis=1)]
        chosen = arm.loc[arm["final_val_psnr"].idxmax()].to_dict()
        # the plain DEQ arms started from y (not the Jacobian-regularised or warm-started ones)
        deq = deq_baseline(rows, plain=True)["test_psnr"]
        deq_mean = float(deq.mean()) if len(deq) else math.nan
        chosen.update(
            config_val_psnr=float(means.loc[config, "final_val_psnr"]),
            config_test_psnr=float(means.loc[config, "test_psnr"]),
            deq_test_psnr=deq_mean,
            delta_psnr_vs_deq=float(means.loc[config, "test_psnr"]) - deq_mean,
            seeds=len(arm),
        )
        out[str(prior)] = chosen
    return out


def register_best(uri: str, experiment: str, trials: Any) -> list[Registered]:
    """Register each prior's best configuration (see the module's doc); return what is now
    registered under ``best``."""
    c = tracking.client(uri)
    done: list[Registered] = []
    for prior, row in best_per_prior(trials).items():
        name = model_name(experiment, prior)
        run_id = str(row["mlflow_run_id"])
        tags = _tags(row)
        version = _current(c, name, run_id)
        if version is None:
            if not _exists(c, name):
                c.create_registered_model(
                    name, description=f"best configuration of prior {prior!r} ({experiment})"
                )
            mv = c.create_model_version(
                name, f"runs:/{run_id}/{MODEL_PATH}", run_id=run_id, tags=tags
            )
            version = str(mv.version)
            c.set_registered_model_alias(name, ALIAS, version)
        else:
            for k, v in tags.items():
                c.set_model_version_tag(name, version, k, v)
        done.append(
            Registered(
                prior,
                name,
                version,
                run_id,
                str(row["name"]),
                float(row["test_psnr"]),
                float(row["delta_psnr_vs_deq"]),
            )
        )
    return done


def _tags(row: dict[str, Any]) -> dict[str, str]:
    def num(v: float) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:.4f}"

    return {
        "delta_psnr_vs_deq": num(row["delta_psnr_vs_deq"]),
        "test_psnr": num(float(row["test_psnr"])),
        "config_test_psnr": num(row["config_test_psnr"]),
        "config_val_psnr": num(row["config_val_psnr"]),
        "deq_test_psnr": num(row["deq_test_psnr"]),
        "trial": str(row["name"]),
        "estimator": str(row["estimator"]),
        "seeds": str(row["seeds"]),
        "chosen_by": "mean final val_psnr over seeds",
    }


def _exists(c: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _current(c: Any, name: str, run_id: str) -> str | None:
    """The version ``best`` points at when it already holds ``run_id``."""
    from mlflow.exceptions import MlflowException

    try:
        mv = c.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    return str(mv.version) if mv.run_id == run_id else None
