"""PnP weights files reach trials on nodes that do not share the driver's disk.

The driver packs each PnP prior's weights file (``pack_weights``) and hands the bundle to the
trials through Ray's object store with the prepared data; each node unpacks one copy per file
(``materialize_weights``, keyed by its sha256) and the trial loads that copy
(``localize_weights``), while its MLflow parameters keep the configured path and the file's
sha256 (``trial_params``). The units run without Ray; the last test runs a one-trial sweep on a
local Ray connected to as an existing cluster (so the data and weights are shipped) and moves
the weights file away after the driver packed it, as on a node without the file.
(tests/sweep/test_cluster.py covers shipping the prepared data on a real two-node cluster.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_sweep_checks import STUDY, save_denoiser

PNP_STUDY: dict[str, Any] = {
    **STUDY,
    "sweep": {
        "priors": ["pnp"],
        "estimators": ["rjfb"],
        "depths": [1],
        "restarts": [0],
    },
    "mlflow": {"experiment": "shipping"},
}


def _study(root: Path, params: dict[str, Any]) -> Any:
    from pipeline.study.config import load_params

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params(root / "params.yaml")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_ship_once_per_file_and_unpack_once_per_node(tmp_path: Path) -> None:
    from pipeline.sweep.shipping import materialize_weights, pack_weights
    from pipeline.util.errors import DataError

    root = tmp_path / "driver"
    root.mkdir()
    (root / "models").mkdir()
    (root / "models" / "denoiser.pt").write_bytes(b"pretrained" * 100)
    (root / "elsewhere.pth").write_bytes(b"official")
    pnp = {"type": "pnp", "weights": "models/denoiser.pt"}
    params = {
        **STUDY,
        "priors": {
            "l1": STUDY["priors"]["l1"],
            "a": pnp,
            "b": {**pnp, "per_layer_sigma": True},  # the same file: shipped once
            "c": {"type": "pnp", "weights": str(root / "elsewhere.pth")},  # absolute path
            "gone": {"type": "pnp", "weights": "models/none.pt"},  # left to fail in its trials
            "unused": {"type": "pnp", "weights": "models/unused.pt"},  # not in the sweep
        },
        "sweep": {
            "priors": ["l1", "a", "c", "gone"],
            "estimators": ["rjfb"],
            "depths": [1],
            "restarts": [0],
            "extra_trials": [{"prior": "b", "estimator": "deq", "depth": 1}],
        },
    }
    bundle = pack_weights(_study(root, params))
    assert bundle is not None
    a, c = _sha(root / "models" / "denoiser.pt"), _sha(root / "elsewhere.pth")
    assert bundle.priors == {"a": a, "b": a, "c": c}
    assert {k: v[0] for k, v in bundle.files.items()} == {a: "denoiser.pt", c: "elsewhere.pth"}
    assert pickle.loads(pickle.dumps(bundle)) == bundle  # what Ray's object store does

    cache = tmp_path / "node" / "rjfb-weights"
    local = materialize_weights(bundle, cache)
    assert local["a"] == local["b"] == cache / a[:32] / "denoiser.pt"
    assert local["c"].read_bytes() == b"official"
    stat = local["a"].stat()
    assert materialize_weights(bundle, cache) == local  # unpacked once per node
    assert local["a"].stat().st_mtime_ns == stat.st_mtime_ns
    assert not [p for p in cache.iterdir() if p.name.startswith(".unpack-")]
    local["a"].write_bytes(b"tampered")
    with pytest.raises(DataError, match=r"denoiser\.pt: cached weights differ"):
        materialize_weights(bundle, cache)
    wavelet_only = {**params, "sweep": {**params["sweep"], "priors": ["l1"], "extra_trials": []}}
    assert pack_weights(_study(root, wavelet_only)) is None


def test_a_trial_on_a_node_without_the_file_loads_the_shipped_copy(tmp_path: Path) -> None:
    import torch

    from pipeline.study.build import check_denoisers
    from pipeline.study.trial import Trial
    from pipeline.sweep.grid import build_grid, trial_context, trial_params
    from pipeline.sweep.shipping import localize_weights, pack_weights
    from pipeline.util.errors import ConfigError

    driver = tmp_path / "driver"
    driver.mkdir()
    study = _study(driver, PNP_STUDY)
    weights = save_denoiser(driver / "models" / "denoiser.pt")
    expected = torch.load(weights, weights_only=True)
    point = build_grid(study).points[0]
    driver_params = {"trial": point.spec.model_dump(mode="json"), **trial_context(study, "pnp")}
    bundle = pack_weights(study)

    # the node: same config and root path, but no models/ folder there
    (driver / "models").rename(tmp_path / "models.moved")
    with pytest.raises(ConfigError, match="does not exist"):
        check_denoisers(study, channels=1)
    node = localize_weights(study, bundle, cache=tmp_path / "node-cache")
    assert node.root == study.root
    assert Path(str(node.priors["pnp"].weights)).parent.parent == tmp_path / "node-cache"
    assert study.priors["pnp"].weights == "models/denoiser.pt"  # the driver's config untouched
    check_denoisers(node, channels=1)

    params = trial_params(study, point, bundle)
    assert params == driver_params  # MLflow sees the configured path and the same sha256
    assert params["prior"]["weights"] == "models/denoiser.pt"

    prepared = _prepare(tmp_path / "data")
    spec = study.trials()[0]
    trial = Trial(node, spec, prepared)
    state = trial.scheme.denoiser.state_dict()
    assert set(state) == set(expected)
    for k, v in expected.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


def _prepare(out: Path) -> Path:
    from pipeline.study.config import parse_params
    from pipeline.study.data import prepare

    return prepare(parse_params(STUDY), out / "prepared", progress=False)


@pytest.fixture
def ray_cluster(tmp_path: Path):
    """A local Ray the sweep connects to as an existing cluster (so it ships data and weights);
    its workers unpack shipped files under ``tmp_path / "cache"`` (``$RJFB_DATA_CACHE``)."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray session is already up in this process")
    cache = tmp_path / "cache"
    old = {k: os.environ.get(k) for k in ("RJFB_DATA_CACHE", "RAY_ENABLE_UV_RUN_RUNTIME_ENV")}
    os.environ["RJFB_DATA_CACHE"] = str(cache)  # inherited by the workers Ray starts
    os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield cache
    finally:
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_sweep_ships_the_weights_to_its_trials(
    tmp_path: Path, ray_cluster: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from pipeline.sweep import driver

    root = tmp_path / "study"
    root.mkdir()
    study = _study(root, PNP_STUDY)
    weights = save_denoiser(root / "models" / "denoiser.pt")
    sha = _sha(weights)
    prepared = _prepare(root / "data")
    packed = driver.pack_weights

    def pack_then_hide(cfg):
        bundle = packed(cfg)
        (root / "models").rename(root / "models.elsewhere")  # only the shipped copy is left
        return bundle

    monkeypatch.setattr(driver, "pack_weights", pack_then_hide)
    trials, _ = driver.run_sweep(study, prepared, check_pnp_weights=True)

    assert list(trials["status"]) == ["finished"], trials[["name", "status_reason"]]
    assert not (root / "models").exists()
    assert (ray_cluster / "rjfb-weights" / sha[:32] / "denoiser.pt").read_bytes() == (
        root / "models.elsewhere" / "denoiser.pt"
    ).read_bytes()
    run = MlflowClient(study.tracking_uri).get_run(trials["mlflow_run_id"].iloc[0])
    assert run.data.params["weights_sha256"] == sha
    assert run.data.params["prior.weights"] == "models/denoiser.pt"
