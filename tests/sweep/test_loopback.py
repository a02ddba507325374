"""The local Ray a sweep starts listens on loopback only (issue 23, root cause 5).

Before: ``init_ray`` passed no loopback node address; the GCS, raylet and workers listened on
``*`` (``::``), the dashboard agent on ``0.0.0.0`` and on the machine's interface address, the
runtime-env agent on that address. Here a real sweep (``python -m stages.sweep``, one trial) runs
while the test lists every socket its processes (the driver and all Ray processes below it)
listen on or are bound to, until it ends.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from helpers import REPO, TINY, base_env

STUDY = {
    **TINY,
    "data": {**TINY["data"], "patches_per_image": 2},
    "train": {**TINY["train"], "epochs": 2, "steps_per_epoch": 1},
    "sweep": {
        "priors": ["l1"],
        "estimators": ["rjfb"],
        "depths": [2],
        "restarts": [0],
        "deq": TINY["sweep"]["deq"],
    },
    "ray": {"num_cpus": 1, "max_concurrent_trials": 1},
    "mlflow": {"experiment": "loopback"},
}


def _listening(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket and bound UDP socket."""
    found = set()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return found
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                udp = c.type == 2 and c.laddr  # SOCK_DGRAM
                if c.status == psutil.CONN_LISTEN or udp:
                    found.add((name, c.laddr.ip, c.laddr.port))
        except psutil.Error:
            continue
    return found


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.slow
def test_a_local_sweep_listens_on_loopback_only(tmp_path: Path) -> None:
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare

    root = tmp_path / "study"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    prepare(load_params(root / "params.yaml"), root / "data" / "prepared", progress=False)
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stages.sweep", "--params", "params.yaml"],
        cwd=root,
        env=base_env(PYTHONPATH=str(REPO), RAY_ADDRESS=""),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    seen: set[tuple[str, str, int]] = set()
    polls = 0
    try:
        top = psutil.Process(proc.pid)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= _listening(top)
            polls += 1
            time.sleep(0.3)
        assert proc.poll() == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(30)
        log.close()
    names = {n for n, _, _ in seen}
    # the sweep's own Ray was seen running: its servers and a worker that ran the trial
    assert {"gcs_server", "raylet"} <= names, (names, polls)
    assert any(n.startswith("ray::") for n in names), names
    outside = sorted(s for s in seen if not _loopback(s[1]))
    assert outside == [], outside
