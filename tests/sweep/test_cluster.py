"""The sweep on an existing Ray cluster: two nodes on 127.0.0.1, an MLflow server, `ray job submit`.

The cluster (a head and a second node, one CPU each, token authentication with a fresh token)
and the MLflow server run in their own process groups under one temporary folder; the module
fixture stops them by those groups. Unit tests of the pieces (data shipping, resource checks)
need no cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import REPO, TINY, LocalCluster, base_env, copy_project

EXPECTED = {
    "l1-deq-s0",
    "l1-rjfb-K2-T0-s0",
    "l1-rjfb-K2-T3-s0",
    "l1-unrolled-N4-s0",
    "l1-rjfb-K2-T0-warm-s0",
}


# --------------------------------------------------------------------------- units


def test_prepared_data_ships_as_a_bundle_and_unpacks_once(tmp_path: Path) -> None:
    from pipeline.study.data import MANIFEST
    from pipeline.sweep.shipping import materialize, pack_prepared

    src = tmp_path / "prepared"
    src.mkdir()
    files = {"train.npz": b"a" * 10, "val.npz": b"b", "test.npz": b"c"}
    for name, blob in files.items():
        (src / name).write_bytes(blob)
    (src / "pretrain.npz").write_bytes(b"d" * 100)  # the pretrain stage's alone: not shipped
    listed = {**files, "pretrain.npz": b"d" * 100}
    manifest = {
        "format": 1,
        "channels": 1,
        "patch_size": 8,
        "degradation": {"kind": "denoising", "noise_sigma": 0.1},
        "splits": {s: {"patches": 1} for s in ("train", "val", "test")},
        "pretrain": {"patches": 1, "patch_size": 8, "image_indices": [0]},
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in listed.items()},
    }
    (src / MANIFEST).write_text(json.dumps(manifest))
    (src / "notes.txt").write_text("not listed: not shipped")

    bundle = pack_prepared(src)
    assert set(bundle.files) == {MANIFEST, *files}
    dest = materialize(bundle, cache=tmp_path / "cache")
    assert dest.parent == tmp_path / "cache" and dest.name == bundle.digest
    assert {p.name for p in dest.iterdir()} == {MANIFEST, *files}
    assert (dest / "train.npz").read_bytes() == files["train.npz"]
    (dest / "train.npz").write_bytes(b"cached copy")
    assert materialize(bundle, cache=tmp_path / "cache") == dest  # unpacked once per node
    assert (dest / "train.npz").read_bytes() == b"cached copy"
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".unpack-")]


def test_ray_leaves_gitignored_prepared_data_out_of_a_job_upload(tmp_path: Path) -> None:
    """Why the driver needs --prepared on shared storage, or the data shipped with the job."""
    from zipfile import ZipFile

    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    if not hasattr(packaging, "_zip_files"):
        pytest.skip("Ray's packaging internals moved")
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "train.npz").write_bytes(b"x")
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "x.py").write_text("")
    shutil.copy2(REPO / ".gitignore", tmp_path / ".gitignore")
    listed = {}
    for include_gitignore in (True, False):
        out = tmp_path.parent / f"{tmp_path.name}-{include_gitignore}.zip"
        packaging._zip_files(str(tmp_path), [], str(out), include_gitignore=include_gitignore)
        listed[include_gitignore] = set(ZipFile(out).namelist())
    assert "pipeline/x.py" in listed[True] and "data/prepared/train.npz" not in listed[True]
    # RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1 is include_gitignore=False: the data ships
    assert "data/prepared/train.npz" in listed[False]


def test_resources_are_checked_per_node() -> None:
    from pipeline.study.config import parse_params
    from pipeline.sweep.cluster import check_resources
    from pipeline.util.errors import ConfigError

    params = copy.deepcopy(TINY)
    params["ray"] = {"address": "auto", "cpus_per_trial": 2, "gpus_per_trial": 0.5}
    cfg = parse_params(params)
    two_small = [{"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}]
    with pytest.raises(ConfigError, match="on one node"):
        check_resources(cfg, {"CPU": 2, "GPU": 2}, two_small)
    check_resources(cfg, {"CPU": 3, "GPU": 1}, [{"CPU": 1}, {"CPU": 2, "GPU": 1}])
    with pytest.raises(ConfigError, match="gpus_per_trial"):
        check_resources(cfg, {"CPU": 4}, [{"CPU": 4}])
    # an autoscaling cluster whose GPU nodes are not up yet: fine if a node type fits
    check_resources(cfg, {"CPU": 4}, [{"CPU": 4}], node_types=[{"CPU": 8, "GPU": 1}])
    with pytest.raises(ConfigError, match="largest node or node type"):
        check_resources(cfg, {"CPU": 4}, [{"CPU": 4}], node_types=[{"CPU": 1, "GPU": 4}])


# --------------------------------------------------------------------------- a real cluster


class _Pending:
    def __init__(self, proc: subprocess.Popen, path: Path) -> None:
        self.proc, self.path = proc, path

    def wait(self) -> Path:
        if self.proc.returncode is None:
            out, _ = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, out[-3000:]
        assert self.proc.returncode == 0
        return self.path


@pytest.fixture(scope="module")
def cluster():
    import importlib.util

    missing = [m for m in ("aiohttp", "aiohttp_cors") if importlib.util.find_spec(m) is None]
    if missing:  # the dashboard (job server) needs ray[default]
        pytest.skip(f"needs the cluster extra, pip install -e '.[cluster]' (missing {missing})")
    c = LocalCluster(cpus_per_node=1)
    try:
        c.start()
        yield c
    except BaseException:
        logs = "\n".join(f"--- {g.log.name}\n{g.tail(2000)}" for g in c.groups)
        print(logs, file=sys.stderr)
        raise
    finally:
        c.stop()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Pending]:
    """TINY's prepared data, made once for the module's checkouts (while the cluster starts)."""
    root = tmp_path_factory.mktemp("prepare")
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.prepare", "--params", "params.yaml", "--out", "prepared"],
        cwd=root,
        env={**base_env(), "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield _Pending(proc, root / "prepared")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _checkout(cluster: LocalCluster, prepared: _Pending, name: str, experiment: str) -> Path:
    """A checkout whose params use the cluster's MLflow server and shared trial storage."""
    root = cluster.root / name
    copy_project(root)
    params = copy.deepcopy(TINY)
    params["ray"] = {
        "max_concurrent_trials": 2,
        "storage_path": str(cluster.root / "ray_results"),  # shared: every node is on this disk
    }
    params["mlflow"] = {"tracking_uri": cluster.tracking_uri, "experiment": experiment}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(prepared.wait(), root / "data" / "prepared")
    return root


def _alive_node_ids(cluster: LocalCluster) -> set[str]:
    out = cluster.list_nodes()
    assert out.returncode == 0, out.stderr
    return {n["node_id"] for n in json.loads(out.stdout) if n["state"] == "ALIVE"}


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return c, parents, children


@pytest.mark.cluster
@pytest.mark.slow
def test_sweep_as_a_ray_job_runs_trials_on_both_nodes(
    cluster: LocalCluster, prepared: Path
) -> None:
    import pandas as pd

    checkout = _checkout(cluster, prepared, "checkout", "job")
    # data/prepared is .gitignore'd, so Ray would not upload it; ship it with the job instead.
    env = {**cluster.env, "RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}
    cmd = [cluster.ray, "job", "submit"]
    cmd += ["--address", cluster.dashboard, "--working-dir", str(checkout)]
    cmd += ["--", "python", "-m", "stages.sweep"]
    out = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=600)
    log = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, log
    assert "sweep: 5 trials {'finished': 5}" in out.stdout, log

    c, parents, children = _runs(cluster.tracking_uri, "job")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.runName"] for r in children} == EXPECTED
    assert all(r.info.status == "FINISHED" for r in children)
    assert len(children) == len(EXPECTED)

    # The results reached the driver: its tables travel with the parent run.
    d = Path(c.download_artifacts(parents[0].info.run_id, "", str(cluster.root / "dl")))
    trials = pd.read_parquet(d / "trials.parquet")
    assert set(trials["name"]) == EXPECTED
    assert (trials["status"] == "finished").all()
    assert (trials["test_psnr"] > trials["test_psnr_input"] + 1.0).all()
    history = pd.read_parquet(d / "history.parquet")
    assert len(history) == 2 * len(EXPECTED)

    nodes = _alive_node_ids(cluster)
    assert len(nodes) == 2
    assert set(trials["node_id"]) == nodes, (set(trials["node_id"]), nodes)
    tagged = {r.data.tags["mlflow.runName"]: r.data.tags["rjfb.node_id"] for r in children}
    assert tagged == dict(zip(trials["name"], trials["node_id"], strict=True))


@pytest.mark.cluster
@pytest.mark.slow
def test_sweep_from_a_local_driver_with_ray_address(
    prepared: _Pending, cluster: LocalCluster
) -> None:
    """`dvc repro`'s way: the driver runs here, RAY_ADDRESS names the cluster; the code reaches
    the workers as a runtime-env module and the data through the object store."""
    import pandas as pd

    checkout = _checkout(cluster, prepared, "local-driver", "address")
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["sweep"]["estimators"] = ["deq", "rjfb"]
    params["sweep"]["restarts"] = [0]
    params["sweep"]["extra_trials"] = []
    (checkout / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address, "PYTHONPATH": str(checkout)}
    out = subprocess.run(
        [sys.executable, "-m", "stages.sweep"],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-3000:]
    trials = pd.read_parquet(checkout / "reports" / "trials.parquet")
    assert set(trials["name"]) == {"l1-deq-s0", "l1-rjfb-K2-T0-s0"}
    assert (trials["status"] == "finished").all()
    assert set(trials["node_id"]) <= _alive_node_ids(cluster)
    _, parents, children = _runs(cluster.tracking_uri, "address")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]
