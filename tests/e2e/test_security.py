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

    from pipeline.study import params_loader

    assert issubclass(params_loader._Loader, yaml.SafeLoader)
    with pytest.raises(params_loader.ConfigError, match="invalid YAML"):
        params_loader.parse_yaml("x: !!python/object/apply:os.system ['true']\n", "params.yaml")


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
        "splits": {
            s: {"patches": 2, "image_indices": [0], "images": ["a"]}
            for s in ("train", "val", "test")
        },
        "files": {f"{s}.npz": sha256_file(folder / "train.npz") for s in ("train", "val", "test")},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train\.npz: array 'observed': holds pickled Python"):
        load_split(folder, "train")
    assert not marker.exists()


# --------------------------------------------------------------------------- hostile folders


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real prepared folder of the tiny study (bundled images), made once for the module."""
    from helpers import tiny_data

    from pipeline.study.config import parse_params
    from pipeline.study.data import prepare

    root = tmp_path_factory.mktemp("prepared-src")
    cfg = parse_params(
        {
            "data": tiny_data(patches_per_image=2),
            "priors": {"l1": {"type": "wavelet", "levels": 2}},
            "sweep": {"priors": ["l1"], "estimators": ["deq"], "depths": [2], "restarts": [0]},
        }
    ).with_root(root)
    return prepare(cfg, root / "prepared", progress=False)


def copy_prepared(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


def edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


HOSTILE_NAMES = [
    "../../../escape.npz",
    "../escape.npz",
    "sub/train.npz",
    "/tmp/absolute.npz",
    "..",
    "..\\escape.npz",
    "notes.txt",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_manifest_file_names_are_confined_to_the_folder(
    tmp_path: Path, prepared: Path, name: str
) -> None:
    """A manifest listing a path (or any name but the project's own files) is refused where
    it is read, so packing it for the nodes and unpacking it there never happen."""
    from pipeline.study.data import read_manifest, verify_prepared
    from pipeline.sweep.shipping import pack_prepared
    from pipeline.util.errors import DataError

    folder = copy_prepared(prepared, tmp_path / "a" / "b" / "c" / "prepared")
    (tmp_path / "escape.npz").write_bytes(b"secret")  # what a traversal would read
    files = json.loads((folder / "manifest.json").read_text())["files"]
    edit_manifest(folder, files={**files, name: "0" * 64})
    for fn in (read_manifest, verify_prepared, pack_prepared):
        with pytest.raises(DataError, match=r"manifest\.json: files: .*(plain file name|unknown)"):
            fn(folder)


def test_node_side_unpack_writes_only_inside_the_cache(tmp_path: Path, prepared: Path) -> None:
    """Even a hand-made bundle (not from read_manifest) cannot make a node write outside its
    cache folder."""
    from helpers import tree

    from pipeline.sweep.shipping import PreparedBundle, materialize, pack_prepared
    from pipeline.util.errors import DataError

    cache = tmp_path / "cache" / "rjfb-prepared"
    before = tree(tmp_path)
    for name in ("../../outside.bin", "/tmp/rjfb-outside.bin", ".."):
        with pytest.raises(DataError, match="not a plain file name"):
            materialize(PreparedBundle("abcd", {name: b"x"}), cache)
    with pytest.raises(DataError, match="not a plain file name"):
        materialize(PreparedBundle("../up", {"train.npz": b"x"}), cache)
    assert not Path("/tmp/rjfb-outside.bin").exists()
    assert tree(tmp_path) - before <= {"cache", "cache/rjfb-prepared"}, tree(tmp_path) - before
    # the real bundle still unpacks, inside the cache, and loads
    dest = materialize(pack_prepared(prepared), cache)
    assert dest.parent == cache and (dest / "train.npz").is_file()


def test_sweep_refuses_a_traversing_manifest_before_anything_is_written(
    tmp_path: Path, prepared: Path
) -> None:
    from helpers import assert_one_line_error, run_module, tree

    cwd = tmp_path / "study"
    cwd.mkdir()
    folder = copy_prepared(prepared, cwd / "data" / "prepared")
    files = json.loads((folder / "manifest.json").read_text())["files"]
    edit_manifest(folder, files={**files, "../../../../outside.npz": "0" * 64})
    (cwd / "params.yaml").write_text(
        json.dumps(
            {
                "priors": {"l1": {"type": "wavelet", "levels": 2}},
                "sweep": {"priors": ["l1"], "estimators": ["deq"], "depths": [2]},
                "ray": {"num_cpus": 1, "ship_data": True},
            }
        )
    )
    before = tree(tmp_path)
    result = run_module("stages.sweep", cwd=cwd, env={"RAY_ADDRESS": ""})
    assert_one_line_error(result, r"manifest\.json: files: .*not a plain file name")
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- prepare --out


def foreign_with_manifest(out: Path) -> None:
    """A web app: it has a manifest.json, but not the project's."""
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"name": "my app", "start_url": "/"}')
    (out / "index.html").write_text("<html></html>")


def prepared_plus_thesis(out: Path, prepared: Path) -> None:
    copy_prepared(prepared, out)
    (out / "thesis.tex").write_text("precious")


def manifest_format_only(out: Path) -> None:
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"format": 1}')
    (out / "app.js").write_text("precious")


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("web-app", r"manifest\.json is not a prepared-data manifest"),
        ("format-only", r"manifest\.json is not a prepared-data manifest"),
        ("prepared-plus-thesis", r"holds files its manifest\.json does not list \(thesis\.tex\)"),
        ("symlink", r"is a symbolic link"),
    ],
)
def test_prepare_never_replaces_a_folder_it_did_not_make(
    tmp_path: Path, prepared: Path, case: str, pattern: str
) -> None:
    from helpers import assert_one_line_error, run_module, tree

    cwd = tmp_path / "study"
    cwd.mkdir()
    out = cwd / "site"
    if case == "web-app":
        foreign_with_manifest(out)
    elif case == "format-only":
        manifest_format_only(out)
    elif case == "prepared-plus-thesis":
        prepared_plus_thesis(out, prepared)
    else:
        foreign_with_manifest(tmp_path / "real")
        out.symlink_to(tmp_path / "real")
    (cwd / "params.yaml").write_text(
        json.dumps(
            {
                "data": {"source": "bundled", "patch_size": 32, "patches_per_image": 1},
                "priors": {"l1": {"type": "wavelet", "levels": 2}},
                "sweep": {"priors": ["l1"], "estimators": ["deq"]},
            }
        )
    )
    before = {p: (tmp_path / p).read_bytes() for p in tree(tmp_path) if (tmp_path / p).is_file()}
    result = run_module("stages.prepare", "--out", "site", "--quiet", cwd=cwd)
    assert_one_line_error(result, pattern)
    after = {p: (tmp_path / p).read_bytes() for p in tree(tmp_path) if (tmp_path / p).is_file()}
    assert after == before  # nothing deleted, changed or added


# --------------------------------------------------------------------------- weights and trials tables


@pytest.mark.parametrize(
    ("make", "pattern"),
    [
        (lambda p: p.mkdir(), r"is a folder, not a weights file"),
        (
            lambda p: p.symlink_to("/dev/null"),
            r"is not a regular file \(a device, FIFO or socket\)",
        ),
        (lambda p: p.write_text("state = {}\n"), r"is not a PyTorch weights file .* starts with"),
        (
            "sparse",
            r"do not match the dncnn asked for \(a DnCNN with depth=3, nf=4, 1 image "
            r"channel\(s\)\): missing keys out_conv\.weight$",
        ),
    ],
    ids=["folder", "device", "text", "sparse"],
)
def test_unusable_weights_files_are_named_for_what_they_are(tmp_path: Path, make, pattern) -> None:
    import torch

    from pipeline.core.denoisers import build_denoiser

    path = tmp_path / "denoiser.pt"
    if make == "sparse":
        state = build_denoiser("dncnn", channels=1, depth=3, nf=4).state_dict()
        torch.save({k: v for k, v in state.items() if k != "out_conv.weight"}, path)
    else:
        make(path)
    with pytest.raises(ValueError, match=pattern) as info:
        build_denoiser("dncnn", channels=1, weights=path, depth=3, nf=4)
    assert "does not exist" not in str(info.value)


def test_report_over_a_hostile_trials_table(tmp_path: Path) -> None:
    """Names and reasons from a trials table cannot add markup, HTML or headings to
    ablation.md, and a DEQ row marked finished without a PSNR is not a baseline anywhere."""
    import math

    import pandas as pd
    from helpers import tree

    from pipeline.report import write_report
    from pipeline.report.writer import REPORT_TABLES
    from pipeline.study.config import ReportConfig
    from pipeline.study.tables import TRIAL_COLUMNS

    def row(name: str, estimator: str, **kw) -> dict:
        r = {c: math.nan for c in TRIAL_COLUMNS}
        r.update(
            trial_id=name,
            name=name,
            prior="l1",
            prior_type="wavelet",
            estimator=estimator,
            depth=1,
            restarts=0,
            start="y",
            seed=0,
            status="finished",
            status_reason="",
            test_psnr_per_image="[]",
            theta_json="{}",
            mlflow_run_id="",
            node_id="",
        )
        r.update(kw)
        return r

    trials = pd.DataFrame(
        [
            row("l1-deq-s0", "deq", test_psnr=math.nan),
            row("x\n# Owned <script>alert(1)</script>", "rjfb", test_psnr=25.0, depth=5),
            row("y", "rjfb", status="failed", status_reason="<img src=x onerror=alert(1)>\n## H"),
            row("z", "rjfb", prior="p`\n# Heading <b>", test_psnr=24.0),
        ]
    )
    out = tmp_path / "reports"
    write_report(trials, None, out, ReportConfig())
    md = (out / "ablation.md").read_text()
    assert "<script" not in md and "<img" not in md and "<b>" not in md
    assert not [
        line for line in md.splitlines() if line.startswith(("# Owned", "## H", "# Heading"))
    ]
    if "No finished DEQ baseline" in md:
        assert "DEQ baseline `" not in md
    assert set(tree(tmp_path)) <= {
        "reports",
        "reports/ablation.md",
        "reports/metrics.json",
        "reports/plots",
    } | {f"reports/{name}.parquet" for name in REPORT_TABLES} | {
        f"reports/plots/{p.name}" for p in (out / "plots").iterdir()
    }
