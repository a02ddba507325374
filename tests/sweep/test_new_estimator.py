"""Adding a gradient estimator is one module: a throwaway one, registered by a module this test
writes (its core class and its registration side by side), runs a one-trial sweep through real
Ray, MLflow and the report's labels without any other file changing."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import tiny_rjfb_sweep

PLUGIN = '''
"""A throwaway estimator: the plain truncated network, K tracked steps from x0."""

from dataclasses import dataclass
from typing import ClassVar

from pipeline.core.estimators import Diagnostics, Estimator, as_layered, register_estimator
from pipeline.core.solvers import relative_residual
from pipeline.study.estimators import EstimatorKind, register_kind


@register_estimator
@dataclass
class Truncated(Estimator):
    name: ClassVar[str] = "truncated"
    depth: int = 1

    def __call__(self, step, x0):
        layered, x = as_layered(step), x0
        for k in range(self.depth):
            prev, x = x, layered(x, k)
        residual = relative_residual(x.detach(), prev.detach())
        self.last = Diagnostics(forward_steps=self.depth, residual=residual)
        return x


def options(spec, deq):
    return {"depth": spec.depth}


def at_depth(spec):
    return spec.depth


register_kind(
    EstimatorKind(
        name="truncated",
        module=__name__,
        label="Trunc",
        order=7,
        color="tab:gray",
        options=options,
        iterations_at_depth=at_depth,
    )
)
'''


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The throwaway estimator's module, importable here and in Ray's worker processes (they
    inherit PYTHONPATH); unregistered afterwards."""
    from pipeline.core.estimators import ESTIMATORS
    from pipeline.study.estimators import unregister_kind

    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "throwaway_estimator.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    )
    module = importlib.import_module("throwaway_estimator")
    yield module
    unregister_kind("truncated")
    ESTIMATORS.pop("truncated", None)
    sys.modules.pop("throwaway_estimator", None)


def test_a_registered_estimator_is_named_built_and_labelled(plugin: Any) -> None:
    from pipeline.study.build import build_estimator
    from pipeline.study.config import parse_params

    raw = tiny_rjfb_sweep("plugin", epochs=1)
    raw["sweep"] = {**raw["sweep"], "estimators": ["truncated", "deq"], "depths": [3]}
    cfg = parse_params(raw)
    names = [t.name for t in cfg.trials()]
    assert names == ["l1-truncated-s0", "l1-truncated-s1", "l1-deq-s0", "l1-deq-s1"]
    est = build_estimator(cfg, cfg.trials()[0])
    assert isinstance(est, plugin.Truncated) and est.depth == 1
    # a field it does not use is refused, naming the estimators that use it
    bad = {
        **raw,
        "sweep": {
            **raw["sweep"],
            "extra_trials": [{"prior": "l1", "estimator": "truncated", "restarts": 2}],
        },
    }
    with pytest.raises(Exception, match=r"restarts: applies to rjfb trials only, not truncated"):
        parse_params(bad)


@pytest.mark.slow
def test_a_new_estimator_runs_a_one_trial_sweep(plugin: Any, tmp_path: Path) -> None:
    import ray

    from pipeline.report.tables import normalise_trials
    from pipeline.report.writer import write_report
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare
    from pipeline.sweep.driver import run_sweep

    assert not ray.is_initialized(), "the sweep must start its own Ray (workers see PYTHONPATH)"
    raw = tiny_rjfb_sweep("plugin", epochs=1)
    raw["sweep"] = {**raw["sweep"], "estimators": ["truncated"], "depths": [2], "seeds": [0]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_params(tmp_path / "params.yaml")
    prepare(cfg, tmp_path / "data" / "prepared", progress=False)
    trials, history = run_sweep(cfg, tmp_path / "data" / "prepared")
    assert list(trials["name"]) == ["l1-truncated-s0"]
    row = trials.iloc[0]
    assert row["status"] == "finished", row["status_reason"]
    assert row["estimator"] == "truncated" and row["depth"] == 1
    assert row["test_psnr"] > 0 and row["test_psnr_at_depth"] > 0
    assert list(history["epoch"]) == [1]
    out = tmp_path / "report"
    write_report(trials, history, out, cfg.report, priors=cfg.priors)
    assert "Trunc" in (out / "ablation.md").read_text()  # the registration's label
    assert list(normalise_trials(trials)["label"]) == ["Trunc"]
