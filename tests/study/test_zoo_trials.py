"""Every zoo estimator trains a real trial in process (no Ray) on a small PnP problem with one
σ per layer of a 2-block: it finishes, moves θ, and its gradient fidelity is probed against the
baseline DEQ (on sweep.deq.solver, also for the DEQ that runs Broyden itself)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_trial import make_study, root  # noqa: F401  (the module-scoped prepared folder)

from pipeline.study.config import TrialSpec
from pipeline.study.trial import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "fields",
    [
        {"estimator": "phantom_unrolled", "steps": 3, "damping": 0.5},
        {"estimator": "phantom_neumann", "steps": 3},
        {"estimator": "shine", "refine": 2},
        {"estimator": "deq", "solver": "broyden"},
        {"estimator": "jfb", "solver": "broyden"},
    ],
    ids=lambda f: "-".join(str(v) for v in f.values()),
)
def test_a_zoo_trial_trains(root: Path, fields: dict) -> None:  # noqa: F811
    study = make_study(root)
    spec = TrialSpec(prior="pnp_layer", depth=2, **fields)
    result = run_trial(study, spec, root / "prepared")
    assert result.status == "finished", result.reason
    m = result.metrics
    for key in ("test_psnr", "test_psnr_at_depth", "seconds_per_step", "peak_mem_mib"):
        assert math.isfinite(m[key]) and m[key] > 0, key
    # an equilibrium estimator: evaluated at equilibrium, whatever its training depth
    assert m["test_psnr_at_depth"] == m["test_psnr"]
    sigma = result.theta["sigma"]
    assert len(sigma) == 2 and sigma != pytest.approx([0.08, 0.08], rel=1e-4)
    # probed against the baseline DEQ (Anderson here): a Broyden DEQ is close, not identical
    cos = m["grad_cos_vs_deq"]
    assert math.isfinite(cos) and -1 <= cos <= 1
    if fields == {"estimator": "deq", "solver": "broyden"}:
        assert 0.99 < cos < 1 - 1e-12 or 0 < m["grad_rel_err_vs_deq"] < 0.05
