"""Security: no code execution from files, servers on loopback, hostile files refused.

* a scan of the package source (``pipeline/``, ``stages/``): every ``torch.load`` passes
  ``weights_only=True``; no ``eval``/``exec``/``compile``, no ``pickle``/``marshal``/``dill``
  loads, no ``np.load(allow_pickle=True)``, no ``pd.read_pickle``, no unsafe YAML loader, no
  ``shell=True`` / ``os.system``;
* servers the project starts or documents bind to 127.0.0.1 (``--host``-style flags in the docs,
  host keywords in the code), and Ray's token authentication is never switched off;
* files carrying pickled code — denoiser weights, a trial checkpoint, a prepared ``.npz`` — are
  refused with a clear message, and the payload never runs.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*REPO.joinpath("pipeline").rglob("*.py"), *REPO.joinpath("stages").rglob("*.py")])
DOCS = sorted(
    [
        REPO / "README.md",
        *REPO.joinpath("docs").rglob("*.md"),
        *REPO.glob("*.yaml"),
        *REPO.glob("*.sh"),
        *REPO.joinpath("scripts").rglob("*"),  # empty when there is no scripts/ folder
    ]
)
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO)}:{node.lineno}"


# --------------------------------------------------------------------------- source scan


def test_the_scan_sees_the_package() -> None:
    names = {p.name for p in SOURCES}
    assert {"config.py", "schemes.py", "sweep.py", "data.py", "prepare.py"} <= names


def test_every_torch_load_is_weights_only() -> None:
    found, bad = [], []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"from\s+torch\s+import\s+[^\n]*\bload\b", text), path
        for call in calls(path):
            if dotted(call.func) in ("torch.load", "torch.serialization.load"):
                found.append(where(path, call))
                if not is_true(keyword(call, "weights_only")):
                    bad.append(where(path, call))
    assert found, "no torch.load found: the scan is looking in the wrong place"
    assert not bad, f"torch.load without weights_only=True: {bad}"


FORBIDDEN_CALLS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "marshal.load",
    "marshal.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "shelve.open",
    "yaml.unsafe_load",
    "yaml.full_load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "os.system",
    "os.popen",
    "torch.jit.load",
}


def test_no_code_execution_from_data() -> None:
    bad = []
    for path in SOURCES:
        for call in calls(path):
            name = dotted(call.func)
            if name in FORBIDDEN_CALLS:
                bad.append(f"{where(path, call)} {name}(")
            if name.endswith("load") and is_true(keyword(call, "allow_pickle")):
                bad.append(f"{where(path, call)} {name}(allow_pickle=True)")
            if is_true(keyword(call, "shell")):
                bad.append(f"{where(path, call)} {name}(shell=True)")
            if name == "yaml.load":
                loader = keyword(call, "Loader")
                if loader is None and len(call.args) > 1:
                    loader = call.args[1]
                if not (isinstance(loader, ast.Name | ast.Attribute)):
                    bad.append(f"{where(path, call)} yaml.load without an explicit safe Loader")
                elif dotted(loader) not in ("yaml.SafeLoader", "yaml.CSafeLoader", "_Loader"):
                    bad.append(f"{where(path, call)} yaml.load(Loader={dotted(loader)})")
    assert not bad, bad


def test_the_params_loader_is_a_safe_loader() -> None:
    import yaml

    from pipeline.study import config

    assert issubclass(config._Loader, yaml.SafeLoader)
    with pytest.raises(config.ConfigError, match="invalid YAML"):
        config._parse_yaml("x: !!python/object/apply:os.system ['true']\n", "params.yaml")


# --------------------------------------------------------------------------- servers


HOST_FLAG = re.compile(
    r"--(?:host|dashboard-host|node-ip-address|ray-client-server-host|bind|address-host)"
    r"(?:=|\s+)([^\s`'\"]+)"
)


def test_documented_servers_bind_to_loopback() -> None:
    """Every documented bind address is loopback, or a ``<placeholder>`` for a private address
    in the multi-host guide. One exception: a Ray head of a multi-host cluster serves its
    dashboard (job submission) to the other machines, and only with token authentication on
    (``RAY_AUTH_MODE=token`` on the same command line). Never all interfaces for anything else."""
    found, bad = [], []
    for path in DOCS:
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in HOST_FLAG.finditer(line):
                found.append(f"{path.name}:{n}")
                value = m.group(1).strip(",;)")
                placeholder = re.fullmatch(r"<[\w .-]+>|\$\{?\w+\}?", value) is not None
                head_with_token = (
                    "--dashboard-host" in m.group(0)
                    and "ray start --head" in line
                    and "RAY_AUTH_MODE=token" in line
                )
                if value in LOOPBACK or (placeholder and path.name != "README.md"):
                    continue
                if not head_with_token:
                    bad.append(f"{path.name}:{n}: {line.strip()}")
            if re.search(r"RAY_AUTH_MODE\s*=\s*['\"]?disabled", line):
                bad.append(f"{path.name}:{n}: turns Ray's token authentication off")
    assert any(f.startswith("README.md") for f in found), "README's `mlflow ui --host` not seen"
    assert not bad, bad


HOST_KEYWORDS = {"host", "dashboard_host", "node_ip_address", "ray_client_server_host", "bind"}


def test_servers_started_in_code_bind_to_loopback() -> None:
    bad = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for m in HOST_FLAG.finditer(text):
            if m.group(1).strip(",;)") not in LOOPBACK:
                bad.append(f"{path.relative_to(REPO)}: {m.group(0)}")
        if re.search(r"RAY_AUTH_MODE['\"]?\s*[\]:=,]\s*['\"]disabled", text):
            bad.append(f"{path.relative_to(REPO)}: turns Ray's token authentication off")
        for call in calls(path):
            for k in call.keywords:
                v = k.value
                local = isinstance(v, ast.Constant) and v.value in LOOPBACK
                if k.arg in HOST_KEYWORDS and isinstance(v, ast.Constant) and not local:
                    bad.append(f"{where(path, call)} {k.arg}={v.value!r}")
        for m in re.finditer(r"['\"]0\.0\.0\.0['\"]", text):
            bad.append(f"{path.relative_to(REPO)}: binds {m.group(0)}")
    assert not bad, bad


# --------------------------------------------------------------------------- hostile files


class Payload:
    """Pickles to ``os.system("touch <marker>")``: a checkpoint that runs code when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_denoiser_weights_are_refused(tmp_path: Path) -> None:
    import torch

    from pipeline.core.denoisers import build_denoiser

    marker = tmp_path / "PWNED"
    weights = tmp_path / "denoiser.pt"
    torch.save({"head.weight": torch.zeros(1), "x": Payload(marker)}, weights)
    with pytest.raises(ValueError, match=r"denoiser\.pt.*pickled objects") as info:
        build_denoiser("drunet", channels=1, weights=weights, nc=4, nb=1)
    assert "weights" in str(info.value)
    # a whole pickled model is refused the same way (save its state_dict instead)
    model = build_denoiser("dncnn", channels=1, depth=2, nf=4)
    torch.save(model, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model\.pt.*pickled objects"):
        build_denoiser("dncnn", channels=1, weights=tmp_path / "model.pt", depth=2, nf=4)
    # a plain state dict still loads
    torch.save(model.state_dict(), tmp_path / "ok.pt")
    build_denoiser("dncnn", channels=1, weights=tmp_path / "ok.pt", depth=2, nf=4)
    assert not marker.exists()


def test_hostile_trial_checkpoint_is_refused(tmp_path: Path, capfd) -> None:
    """A resumed trial reads Tune's checkpoint with torch.load(weights_only=True): a checkpoint
    holding code is not run; the trial says so and starts over."""
    import torch
    from ray import tune

    from pipeline.sweep import trainable

    marker = tmp_path / "PWNED"
    folder = tmp_path / "trial" / "checkpoint_000001"
    folder.mkdir(parents=True)
    torch.save({"epoch": 1, "x": Payload(marker)}, folder / "state.pt")
    state = trainable.load_checkpoint(tune.Checkpoint.from_directory(str(folder)))
    assert state is None
    assert not marker.exists()
    err = capfd.readouterr().err
    assert "unreadable" in err and "starting over" in err, err


def test_prepared_data_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    from pipeline.study.data import MANIFEST, load_split
    from pipeline.util.errors import DataError
    from pipeline.util.hashing import sha256_file

    folder = tmp_path / "prepared"
    folder.mkdir()
    marker = tmp_path / "PWNED"
    payload = np.empty(2, dtype=object)
    payload[:] = [Payload(marker), 1]
    arrays = {
        "clean": np.zeros((2, 1, 8, 8), np.float32),
        "observed": payload,
        "image_index": np.zeros(2, np.int64),
    }
    np.savez(folder / "train.npz", **arrays)  # object arrays are pickled inside the .npz
    manifest = {
        "format": 1,
        "channels": 1,
        "patch_size": 8,
        "degradation": {"kind": "denoising", "noise_sigma": 0.1},
        "splits": {"train": {"patches": 2, "image_indices": [0], "images": ["a"]}},
        "files": {"train.npz": sha256_file(folder / "train.npz")},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train\.npz: unreadable .*pickle"):
        load_split(folder, "train")
    assert not marker.exists()
