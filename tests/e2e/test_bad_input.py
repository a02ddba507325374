"""Every stage refuses bad input with one line, exit code 2, no traceback and nothing written.

Each case runs a real stage CLI (``python -m stages.<stage>``) in a scratch folder holding a
``params.yaml`` (and images for the data cases), then checks the exit code, the message and that
the folder tree is exactly as before: no ``data/prepared``, no ``reports``, no ``mlflow.db``, no
``ray_results``, no ``models``.

Configuration errors must be found before any heavy import: those runs put stand-ins for
``torch``, ``deepinv``, ``ray`` and ``mlflow`` first on ``PYTHONPATH`` that raise when imported,
so a stage that imported one of them before validating would exit with a traceback (and each run
costs well under a second).

(tests/study/test_prepare_cli.py covers the prepare stage's missing / empty / non-image / corrupt /
too-small / too-few image folders; the cases here add the other stages and the other mistakes.)
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import HEAVY, STAGES, assert_refused, poison, run_module, run_stage, tiny_data, tree

VALID: dict[str, Any] = {
    "data": tiny_data(source="imgs", patches_per_image=2),
    "priors": {"l1": {"type": "wavelet", "levels": 2, "step_size": 0.3}},
    "train": {"epochs": 1, "batch_size": 2},
    "sweep": {"priors": ["l1"], "estimators": ["deq", "rjfb"], "depths": [2], "restarts": [0]},
    "ray": {"num_cpus": 2},
}

# --------------------------------------------------------------------------- helpers


def edit(*changes: tuple[str, Any]) -> dict[str, Any]:
    """VALID with ``("a.b.c", value)`` changes; the value ``DELETE`` removes the key."""
    cfg = copy.deepcopy(VALID)
    for path, value in changes:
        *parents, last = path.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return cfg


DELETE = object()


def write_params(cwd: Path, content: str | bytes | dict[str, Any] | None) -> None:
    path = cwd / "params.yaml"
    if content is None:
        return
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


# --------------------------------------------------------------------------- config cases

# name: (stage, params.yaml content (None: no file), regex the one-line message must match)
CONFIG_CASES: dict[str, tuple[str, Any, str]] = {
    # the file itself
    "missing-file": ("sweep", None, r"params\.yaml: file not found"),
    "empty-file": ("report", "", r"params\.yaml: the file is empty"),
    "only-comments": ("sweep", "# nothing here\n", r"params\.yaml: the file is empty"),
    "list-not-mapping": ("sweep", "- data\n- sweep\n", r"expected a mapping .* got list"),
    "scalar-not-mapping": ("prepare", "hello\n", r"expected a mapping .* got str"),
    "invalid-yaml": ("sweep", "sweep: {priors: [l1\n", r"params\.yaml: invalid YAML at line \d"),
    "tab-indent": ("report", "data:\n\tseed: 1\n", r"invalid YAML at line 2.*'\\t'"),
    "duplicate-section": (
        "prepare",
        yaml.safe_dump(VALID) + "data: {seed: 1}\n",
        r"invalid YAML at line \d+, column 1: duplicate key 'data' \(first at line \d+\)",
    ),
    "not-utf8": ("sweep", b"data:\n  source: \xff\xfe\n", r"params\.yaml: not a UTF-8 text file"),
    # unknown keys: did you mean
    "unknown-section": (
        "prepare",
        {**VALID, "sweeps": {}},
        r"params\.yaml: sweeps: unknown key \(did you mean 'sweep'\?\)",
    ),
    "unknown-prior-key": (
        "sweep",
        edit(("priors.l1.step", 0.5)),
        r"priors\.l1\.step: unknown key \(did you mean 'step_size'\?\)",
    ),
    "unknown-deq-key": (
        "report",
        edit(("sweep.deq.tolerance", 1e-3)),
        r"sweep\.deq\.tolerance: unknown key.*expected one of .*backward_tol",
    ),
    "missing-sweep": ("prepare", edit(("sweep", DELETE)), r"params\.yaml: sweep: missing"),
    "missing-prior-type": (
        "sweep",
        edit(("priors.l1", {"levels": 2})),
        r"priors\.l1: missing key 'type' \(expected 'wavelet' or 'pnp'\)",
    ),
    # wrong types
    "depths-not-a-list": ("sweep", edit(("sweep.depths", "5")), r"sweep\.depths: expected a list"),
    "patch-size-float": (
        "prepare",
        edit(("data.patch_size", 32.5)),
        r"data\.patch_size: expected an integer, got 32\.5",
    ),
    "lr-not-a-number": ("sweep", edit(("train.lr", "fast")), r"train\.lr: expected a number"),
    "seed-bool": ("prepare", edit(("data.seed", True)), r"data\.seed: expected an integer"),
    "section-is-list": ("report", edit(("data", [1, 2])), r"data: expected a mapping of keys"),
    # out of range
    "depth-zero": ("sweep", edit(("sweep.depths", [2, 0])), r"sweep\.depths\[1\]: .*integer >= 1"),
    "restarts-negative": (
        "sweep",
        edit(("sweep.restarts", [-1])),
        r"sweep\.restarts\[0\]: expected an integer >= 0, got -1",
    ),
    "tol-zero": ("report", edit(("sweep.deq.tol", 0)), r"sweep\.deq\.tol: expected a number > 0"),
    "restart-tol-negative": (
        "sweep",
        edit(("sweep.restart_tols", [-1e-3])),
        r"sweep\.restart_tols\[0\]: expected a number > 0",
    ),
    "eval-tol-infinite": (
        "pretrain" if "pretrain" in STAGES else "sweep",
        edit(("train.eval_tol", float("inf"))),
        r"train\.eval_tol: expected a finite number, got inf",
    ),
    "gpu-fraction": (
        "sweep",
        edit(("ray.gpus_per_trial", 1.5)),
        r"ray\.gpus_per_trial: expected a fraction in \(0, 1\] or a whole number, got 1\.5",
    ),
    "gpu-negative": ("sweep", edit(("ray.gpus_per_trial", -1)), r"ray\.gpus_per_trial: .*>= 0"),
    "cuda-without-gpu": (
        "sweep",
        edit(("train.device", "cuda")),
        r"ray\.gpus_per_trial: must be > 0 when train\.device is 'cuda'",
    ),
    "cpus-over-local-ray": (
        "sweep",
        edit(("ray.cpus_per_trial", 4)),
        r"ray\.cpus_per_trial: must be <= ray\.num_cpus 2",
    ),
    "drunet-patch": (
        "prepare",
        edit(("data.patch_size", 36), ("priors.pnp", {"type": "pnp", "denoiser": "drunet"})),
        r"data\.patch_size: must be divisible by 8 for prior 'pnp', got 36",
    ),
    "wavelet-patch": (
        "prepare",
        edit(("data.patch_size", 30)),
        r"data\.patch_size: must be divisible by 4 for prior 'l1', got 30",
    ),
    "negative-count": (
        "prepare",
        edit(("data.patches_per_image", -1)),
        r"data\.patches_per_image: expected an integer >= 1, got -1",
    ),
    "noise-above-one": (
        "prepare",
        edit(("data.degradation.noise_sigma", 1.5)),
        r"data\.degradation\.noise_sigma: expected a number <= 1, got 1\.5",
    ),
    "even-blur-kernel": (
        "prepare",
        edit(("data.degradation", {"kind": "blur", "blur_size": 8})),
        r"data\.degradation\.blur_size: must be odd, got 8",
    ),
    # unknown names
    "unknown-estimator": (
        "sweep",
        edit(("sweep.estimators", ["deq", "rjbf"])),
        r"sweep\.estimators\[1\]: unknown estimator 'rjbf' \(did you mean 'rjfb'\?\)",
    ),
    "unknown-degradation": (
        "prepare",
        edit(("data.degradation.kind", "deblur")),
        r"data\.degradation\.kind: unknown degradation kind 'deblur'.*blur, denoising, inpaint",
    ),
    "unknown-prior-type": (
        "report",
        edit(("priors.l1.type", "wavlet")),
        r"priors\.l1\.type: unknown prior type 'wavlet' \(did you mean 'wavelet'\?\)",
    ),
    "undefined-prior": (
        "sweep",
        edit(("sweep.priors", ["l2"])),
        r"sweep\.priors\[0\]: unknown prior 'l2'.*expected one of l1",
    ),
    "unknown-wavelet": (
        "sweep",
        edit(("priors.l1.wavelet", "db99")),
        r"priors\.l1\.wavelet: unknown wavelet 'db99'",
    ),
    "unknown-denoiser": (
        "pretrain" if "pretrain" in STAGES else "sweep",
        edit(("priors.pnp", {"type": "pnp", "denoiser": "drunett"})),
        r"priors\.pnp\.denoiser: unknown denoiser 'drunett' \(did you mean 'drunet'\?\)",
    ),
    "tracking-scheme": (
        "sweep",
        edit(("mlflow", {"tracking_uri": "ftp://127.0.0.1/runs"})),
        r"mlflow\.tracking_uri: unsupported scheme 'ftp'",
    ),
    # empty grids
    "no-estimators": ("sweep", edit(("sweep.estimators", [])), r"sweep\.estimators: .*non-empty"),
    "no-depths": ("sweep", edit(("sweep.depths", [])), r"sweep\.depths: expected a non-empty list"),
    "empty-rjfb-grid": (
        "sweep",
        edit(("sweep.restart_tols", [1e-3])),
        r"sweep\.restart_tols: the rjfb grid is empty",
    ),
    "no-priors": ("prepare", edit(("priors", {})), r"priors: expected a non-empty mapping"),
    # inconsistent settings
    "per-subband-on-l1": (
        "sweep",
        edit(("priors.l1.per_subband", True)),
        r"priors\.l1\.per_subband: applies to norm weighted_l1 only",
    ),
    "restarts-on-deq": (
        "sweep",
        edit(("sweep.extra_trials", [{"prior": "l1", "estimator": "deq", "restarts": 3}])),
        r"sweep\.extra_trials\[0\]\.restarts: applies to rjfb trials only",
    ),
    # sizes that allocate: upper bounds (pipeline/study/limits.py)
    "anderson-memory-huge": (
        "sweep",
        edit(("sweep.deq", {"anderson_memory": 100000})),
        r"sweep\.deq\.anderson_memory: expected an integer <= 100, got 100000 \(did you mean a "
        r"smaller value\?\)",
    ),
    "pretrain-nc-huge": (
        "pretrain" if "pretrain" in STAGES else "sweep",
        edit(("pretrain", {"nc": 65536})),
        r"pretrain\.nc: expected an integer <= 256, got 65536 \(did you mean a smaller value\?\)",
    ),
    "prior-nc-huge": (
        "sweep",
        edit(("priors.pnp", {"type": "pnp", "nc": 10**6})),
        r"priors\.pnp\.nc: expected an integer <= 256, got 1000000 \(did you mean a smaller",
    ),
    "patches-per-image-huge": (
        "prepare",
        edit(("data.patches_per_image", 10**9)),
        r"data\.patches_per_image: expected an integer <= 4096, got 1000000000",
    ),
    "prepared-data-too-large": (
        "prepare",
        edit(("data.patches_per_image", 4096), ("data.patch_size", 256)),
        r"data: 5 images x 4096 patches of 1x256x256 take 10\.0 GiB, more than the 8 GiB limit "
        r"\(did you mean a smaller data\.patches_per_image or data\.patch_size\?\)",
    ),
    "integer-prior-key": (
        "sweep",
        edit(("priors", {1: {"type": "wavelet"}})),
        r"params\.yaml: priors: key 1 is an integer, not a name \(quote it: '1'\)$",
    ),
    "prior-name-with-slash": (
        "sweep",
        edit(("priors", {"a/b": {"type": "wavelet"}}), ("sweep.priors", ["a/b"])),
        r"priors\.'a/b': a prior name must be",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_mistake_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    stage, content, pattern = CONFIG_CASES[case]
    cwd = tmp_path / "study"
    cwd.mkdir()
    (cwd / "imgs").mkdir()  # the configured source exists: only the params are wrong
    write_params(cwd, content)
    before = tree(cwd)
    assert_refused(run_stage(stage, cwd), pattern, before, cwd)


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (edit(("data.sed", 1)), r"params\.yaml: data\.sed: unknown key \(did you mean 'seed'\?\)"),
        (edit(("data.seed", "abc")), r"params\.yaml: data\.seed: expected an integer, got 'abc'"),
    ],
    ids=["typo", "seed-type"],
)
def test_every_stage_validates_first(
    tmp_path: Path, stage: str, content: Any, pattern: str
) -> None:
    cwd = tmp_path / "study"
    cwd.mkdir()
    write_params(cwd, content)
    before = tree(cwd)
    assert_refused(run_stage(stage, cwd), pattern, before, cwd)


# --------------------------------------------------------------------------- data cases


def png(path: Path, shape: tuple[int, int] = (40, 40)) -> None:
    from skimage import data as skdata
    from skimage.io import imsave

    imsave(path, skdata.camera()[: shape[0], : shape[1]], check_contrast=False)


def images(cwd: Path, n: int = 5) -> Path:
    folder = cwd / "imgs"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        png(folder / f"im{i}.png")
    return folder


def source_is_a_file(cwd: Path) -> None:
    (cwd / "imgs").write_text("not a folder")


def zero_byte_png(cwd: Path) -> None:
    (images(cwd) / "empty.png").write_bytes(b"")


def image_stack(cwd: Path) -> None:
    import numpy as np
    from skimage.io import imsave

    stack = (np.random.default_rng(0).random((4, 40, 40, 3)) * 255).astype(np.uint8)
    imsave(images(cwd) / "stack.tif", stack, check_contrast=False)


def float_out_of_range(cwd: Path) -> None:
    import numpy as np
    from skimage.io import imsave

    imsave(images(cwd) / "hdr.tif", np.full((40, 40), 3.0, np.float32), check_contrast=False)


def foreign_output(cwd: Path) -> None:
    images(cwd)
    (cwd / "data" / "prepared").mkdir(parents=True)
    (cwd / "data" / "prepared" / "thesis.tex").write_text("precious")


def not_prepared(cwd: Path) -> None:
    images(cwd)


def corrupt_manifest(cwd: Path) -> None:
    images(cwd)
    (cwd / "data" / "prepared").mkdir(parents=True)
    (cwd / "data" / "prepared" / "manifest.json").write_text("{not json")


def fifo_image(cwd: Path) -> None:
    import os

    os.mkfifo(images(cwd) / "pipe.png")  # read, it blocks forever


def device_image(cwd: Path) -> None:
    (images(cwd) / "zero.png").symlink_to("/dev/zero")  # read, it never ends


def tiff_bomb(cwd: Path) -> None:
    """A small compressed TIFF that decodes to 81 Mpx (about 350 kB on disk)."""
    import numpy as np
    import tifffile

    tifffile.imwrite(images(cwd) / "bomb.tif", np.zeros((9000, 9000), np.uint8), compression="zlib")


def png_bomb(cwd: Path) -> None:
    from PIL import Image

    Image.new("L", (9000, 9000)).save(images(cwd) / "bomb.png", optimize=False, compress_level=9)


# name: (stage, setup, regex, heavy modules the stage may import before failing)
DATA_CASES: dict[str, tuple[str, Callable[[Path], None], str, tuple[str, ...]]] = {
    "source-is-a-file": ("prepare", source_is_a_file, r"imgs: not a folder", ()),
    "zero-byte-image": ("prepare", zero_byte_png, r"empty\.png: cannot be read as an image", ()),
    "image-stack": (
        "prepare",
        image_stack,
        r"stack\.tif: expected a single 2-D gray or RGB\(A\) image",
        (),
    ),
    "float-pixels-out-of-range": (
        "prepare",
        float_out_of_range,
        r"hdr\.tif: floating-point pixels must lie in \[0, 1\]",
        (),
    ),
    "fifo-named-png": (
        "prepare",
        fifo_image,
        r"pipe\.png: not a regular file \(a FIFO, socket or device\)",
        (),
    ),
    "link-to-a-device": (
        "prepare",
        device_image,
        r"zero\.png: not a regular file \(a FIFO, socket or device\)",
        (),
    ),
    "tiff-decompression-bomb": (
        "prepare",
        tiff_bomb,
        r"bomb\.tif: decodes to 81000000 pixels, more than the limit of 67108864 per image",
        (),
    ),
    "png-decompression-bomb": (
        "prepare",
        png_bomb,
        r"bomb\.png: decodes to 81000000 pixels, more than the limit",
        (),
    ),
    "foreign-output-folder": (
        "prepare",
        foreign_output,
        r"prepared: exists, is not empty and holds no manifest\.json",
        (),
    ),
    "sweep-not-prepared": (
        "sweep",
        not_prepared,
        r"data/prepared: not prepared \(run `dvc repro prepare`\)",
        ("torch",),
    ),
    "sweep-corrupt-manifest": (
        "sweep",
        corrupt_manifest,
        r"manifest\.json: unreadable manifest",
        ("torch",),
    ),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_data_mistake_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    stage, setup, pattern, allowed = DATA_CASES[case]
    cwd = tmp_path / "study"
    cwd.mkdir()
    write_params(cwd, VALID)
    setup(cwd)
    before = tree(cwd)
    assert_refused(run_stage(stage, cwd, heavy_allowed=allowed), pattern, before, cwd)


# --------------------------------------------------------------------------- prepared data, services

SWEEP_VALID: dict[str, Any] = {**VALID, "data": tiny_data(patches_per_image=2)}
ALL_HEAVY = HEAVY


@pytest.fixture(scope="module")
def prepared_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import prepare_tiny

    return prepare_tiny(tmp_path_factory.mktemp("src") / "prepared")


def with_prepared(src: Path, cwd: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, cwd / "data" / "prepared"))


def manifest_edit(cwd: Path, change: Callable[[dict[str, Any]], None]) -> None:
    import json

    path = cwd / "data" / "prepared" / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    path.write_text(json.dumps(m))


def truncate(name: str) -> Callable[[Path], None]:
    def setup(cwd: Path) -> None:
        path = cwd / "data" / "prepared" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def rewrite_npz(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    """Rewrite a split with changed arrays and a matching checksum (a consistent hostile file)."""

    def setup(cwd: Path) -> None:
        import numpy as np

        from pipeline.study.data import write_npz

        folder = cwd / "data" / "prepared"
        with np.load(folder / name, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        sha = write_npz(folder / name, arrays)
        manifest_edit(cwd, lambda m: m["files"].__setitem__(name, sha))

    return setup


def huge_header(cwd: Path) -> None:
    """A split whose .npy header claims 10^12 elements (its checksum in the manifest is right)."""
    import io
    import zipfile

    import numpy as np

    from pipeline.util.hashing import sha256_file

    path = cwd / "data" / "prepared" / "test.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, shape in (("clean", (10**12,)), ("observed", (1,)), ("image_index", (1,))):
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                buf, {"descr": "<f4", "fortran_order": False, "shape": shape}
            )
            zf.writestr(f"{key}.npy", buf.getvalue() + b"\0" * 16)
    manifest_edit(cwd, lambda m: m["files"].__setitem__("test.npz", sha256_file(path)))


def start_fake_mlflow(cwd: Path) -> str:
    """An HTTP server answering /health with 200 OK that is not MLflow (a static file server)."""
    import sys

    from helpers import wait_http

    from pipeline.tools.procs import free_port

    site = cwd.parent / "site"
    site.mkdir()
    (site / "health").write_text("OK")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    FAKE_SERVERS.append(proc)
    wait_http(f"http://127.0.0.1:{port}/health", 20)
    return f"http://127.0.0.1:{port}"


FAKE_SERVERS: list[Any] = []


def sqlite_not_mlflow(path: Path) -> None:
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("create table notes (x text)")
    con.commit()
    con.close()


# name: (params changes, setup after copying the prepared data, extra args, regex)
SWEEP_CASES: dict[str, tuple[dict[str, Any], Callable[[Path], Any] | None, list[str], str]] = {
    "truncated-test-split": ({}, truncate("test.npz"), [], r"test\.npz: checksum differs"),
    "truncated-val-split": ({}, truncate("val.npz"), [], r"val\.npz: checksum differs"),
    "val-wrong-dtype": (
        {},
        rewrite_npz("val.npz", lambda a: a.__setitem__("clean", a["clean"].astype("float64"))),
        [],
        r"val\.npz: array 'clean' is float64 .* manifest says float32",
    ),
    "test-wrong-shape": (
        {},
        rewrite_npz("test.npz", lambda a: a.__setitem__("observed", a["observed"][:1])),
        [],
        r"test\.npz: array 'observed' is float32 \(1, ",
    ),
    "fifo-as-split": (
        {},
        lambda cwd: (
            (cwd / "data" / "prepared" / "val.npz").unlink(),
            __import__("os").mkfifo(cwd / "data" / "prepared" / "val.npz"),
        ),
        [],
        r"val\.npz: not a regular file \(a folder, FIFO or device\)",
    ),
    "huge-npz-header": ({}, huge_header, [], r"test\.npz: (holds arrays|array 'clean' is)"),
    "manifest-channels-string": (
        {},
        lambda cwd: manifest_edit(cwd, lambda m: m.__setitem__("channels", "1")),
        [],
        r"manifest\.json: channels: expected 1 or 3, got '1'",
    ),
    "manifest-patches-float": (
        {},
        lambda cwd: manifest_edit(cwd, lambda m: m["splits"]["val"].__setitem__("patches", 2.5)),
        [],
        r"manifest\.json: splits\.val\.patches: expected an integer",
    ),
    "manifest-unknown-degradation": (
        {},
        lambda cwd: manifest_edit(cwd, lambda m: m["degradation"].__setitem__("kind", "deblur")),
        [],
        r"manifest\.json: degradation\.kind: ",
    ),
    "stale-prepared-data": (
        {"data": tiny_data(patches_per_image=2, seed=7)},
        None,
        [],
        r"prepared: made with a different data section than params\.yaml \(data\.seed: 0 "
        r"prepared, 7 in params\.yaml\).*--allow-stale-data",
    ),
    "mlflow-db-is-a-folder": (
        {},
        lambda cwd: (cwd / "mlflow.db").mkdir(),
        [],
        r"mlflow\.tracking_uri: .*mlflow\.db is a folder, not an MLflow SQLite database",
    ),
    "mlflow-db-random-bytes": (
        {},
        lambda cwd: (cwd / "mlflow.db").write_bytes(bytes(range(256)) * 4),
        [],
        r"mlflow\.tracking_uri: .*mlflow\.db is not an SQLite database",
    ),
    "mlflow-db-not-mlflow": (
        {},
        lambda cwd: sqlite_not_mlflow(cwd / "mlflow.db"),
        [],
        r"mlflow\.db is an SQLite database but not an MLflow store",
    ),
    "tracking-not-mlflow": (
        {"mlflow": "FAKE"},
        None,
        [],
        r"mlflow\.tracking_uri: http://127\.0\.0\.1:\d+ answers /health but is not an MLflow",
    ),
    "tracking-bad-ipv6": (
        {"mlflow": {"tracking_uri": "http://[::1"}},
        None,
        [],
        r"mlflow\.tracking_uri: malformed URL 'http://\[::1'",
    ),
    "tracking-port-not-numeric": (
        {"mlflow": {"tracking_uri": "http://127.0.0.1:abc"}},
        None,
        [],
        r"mlflow\.tracking_uri: malformed URL 'http://127\.0\.0\.1:abc' \(Port could not",
    ),
    "storage-path-under-a-file": (
        {"ray": {"num_cpus": 2, "storage_path": "params.yaml/results"}},
        None,
        [],
        r"ray\.storage_path: .*params\.yaml/results cannot be created \(.*params\.yaml is not a "
        r"folder\)",
    ),
    "weights-is-a-folder": (
        {
            "priors": {"pnp": {"type": "pnp", "denoiser": "dncnn", "weights": "models"}},
            "sweep": {**VALID["sweep"], "priors": ["pnp"]},
        },
        lambda cwd: (cwd / "models").mkdir(),
        [],
        r"priors\.pnp: denoiser weights '.*models' is a folder, not a weights file$",
    ),
    "out-is-a-file": (
        {},
        lambda cwd: (cwd / "results.txt").write_text("x"),
        ["--out", "results.txt"],
        r"--out results\.txt: exists and is not a folder",
    ),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_sweep_refuses_before_ray_with_one_line(
    tmp_path: Path, prepared_src: Path, case: str
) -> None:
    """Every prepared split, the manifest's fields, the tracking store, the storage path and the
    output folder are checked before Ray starts: one line, exit 2, nothing written."""
    changes, setup, extra, pattern = SWEEP_CASES[case]
    cwd = tmp_path / "study"
    cwd.mkdir()
    with_prepared(prepared_src, cwd)
    if changes.get("mlflow") == "FAKE":
        changes = {**changes, "mlflow": {"tracking_uri": start_fake_mlflow(cwd)}}
    write_params(cwd, {**SWEEP_VALID, **changes})
    if setup is not None:
        setup(cwd)
    before = tree(cwd)
    shadow = poison(cwd.parent / "poison", ("ray",))  # Ray must not even be imported
    try:
        result = run_module(
            "stages.sweep", *extra, cwd=cwd, pythonpath=[shadow], env={"RAY_ADDRESS": ""}
        )
    finally:
        while FAKE_SERVERS:
            proc = FAKE_SERVERS.pop()
            proc.terminate()
            proc.wait(10)
    assert_refused(result, pattern, before, cwd)


def test_read_only_mlflow_db_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Tests run as root, where chmod cannot make a file read-only: os.access stands in.)"""
    import os
    import sqlite3

    from pipeline.sweep.preflight import check_tracking_store
    from pipeline.util.errors import ConfigError

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == db else real(p, m))
    with pytest.raises(ConfigError, match=r"mlflow\.db is read-only"):
        check_tracking_store(f"sqlite:///{db}")


def test_stale_data_allowed_records_the_prepared_data(tmp_path: Path, prepared_src: Path) -> None:
    """--allow-stale-data: the study the sweep runs with carries the prepared data's own data
    section, so trial contexts, MLflow parameters and the sweep key name the data used."""
    from pipeline.study.config import parse_params
    from pipeline.study.data import read_manifest
    from pipeline.sweep.grid import build_grid, trial_context
    from pipeline.sweep.preflight import check_data_matches
    from pipeline.util.errors import DataError

    fresh = parse_params(SWEEP_VALID).with_root(tmp_path)
    edited = parse_params({**SWEEP_VALID, "data": tiny_data(patch_size=64, seed=3)})
    edited = edited.with_root(tmp_path)
    manifest = read_manifest(prepared_src)
    assert check_data_matches(fresh, prepared_src, manifest) is fresh
    with pytest.raises(DataError, match=r"data\.seed: 0 prepared, 3 in params\.yaml"):
        check_data_matches(edited, prepared_src, manifest)
    used = check_data_matches(edited, prepared_src, manifest, allow_stale=True)
    assert used.data == fresh.data
    assert used.root == edited.root
    assert trial_context(used, "l1")["data"]["patch_size"] == 32
    assert build_grid(used).key == build_grid(fresh).key


def test_a_sweep_whose_every_trial_failed_is_not_a_success() -> None:
    import pandas as pd

    from pipeline.sweep.preflight import all_failed

    failed = pd.DataFrame(
        {"name": ["a", "b"], "status": ["failed"] * 2, "status_reason": ["DataError: x", "y"]}
    )
    assert all_failed(failed) == (
        "all 2 trials failed (first: a: DataError: x); see the sweep's MLflow runs or Ray's "
        "trial logs"
    )
    mixed = failed.assign(status=["failed", "diverged"])
    assert all_failed(mixed) is None


# --------------------------------------------------------------------------- outputs and arguments


def pretrain_params(cwd: Path, **pretrain: Any) -> None:
    write_params(
        cwd,
        {
            **SWEEP_VALID,
            "pretrain": {
                "nc": 4,
                "steps": 2,
                "batch_size": 2,
                "crop": 16,
                "eval_sigmas": [0.1],
                "allow_weak": True,
                **pretrain,
            },
        },
    )


@pytest.mark.parametrize(
    ("stage", "args", "setup", "pattern"),
    [
        (
            "pretrain",
            ["--out", "models/w.json"],
            None,
            r"--out models/w\.json: is also where the metrics file .* would go",
        ),
        (
            "pretrain",
            ["--out", "notes.txt/w.pt"],
            lambda cwd: (cwd / "notes.txt").write_text("x"),
            r"--out notes\.txt/w\.pt: cannot be created \(notes\.txt is not a folder\)",
        ),
        (
            "pretrain",
            ["--out", "models"],
            lambda cwd: (cwd / "models").mkdir(),
            r"--out models: is a folder",
        ),
        ("pretrain", ["--threads", "-1"], None, r"--threads: .*expected a positive integer"),
        (
            "prepare",
            ["--out", "notes.txt/prepared"],
            lambda cwd: (cwd / "notes.txt").write_text("x"),
            r"prepared-data folder notes\.txt/prepared: cannot be created \(notes\.txt is not a",
        ),
        (
            "report",
            ["--out", "notes.txt"],
            lambda cwd: (cwd / "notes.txt").write_text("x"),
            r"--out notes\.txt: exists and is not a folder",
        ),
    ],
    ids=[
        "pretrain-out-json",
        "pretrain-out-under-file",
        "pretrain-out-folder",
        "threads",
        "prepare-out-under-file",
        "report",
    ],
)
def test_unusable_output_or_argument_is_refused_before_work(
    tmp_path: Path, prepared_src: Path, stage: str, args: list[str], setup: Any, pattern: str
) -> None:
    cwd = tmp_path / "study"
    cwd.mkdir()
    with_prepared(prepared_src, cwd)
    pretrain_params(cwd)
    if setup is not None:
        setup(cwd)
    before = tree(cwd)
    result = run_module(*STAGES[stage], *args, cwd=cwd)
    if "--threads" in args:  # argparse's own usage error: exit 2, its usage line, then error
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert re.search(pattern, result.stderr.splitlines()[-1]), result.stderr
        assert tree(cwd) == before
        return
    assert_refused(result, pattern, before, cwd)


def test_pretrain_non_finite_loss_blames_the_learning_rate(
    tmp_path: Path, prepared_src: Path
) -> None:
    cwd = tmp_path / "study"
    cwd.mkdir()
    with_prepared(prepared_src, cwd)
    pretrain_params(cwd, lr=1e30, steps=5)
    before = tree(cwd)
    result = run_module(*STAGES["pretrain"], "--threads", "1", cwd=cwd)
    assert_refused(result, r"pretrain\.lr: the loss became (nan|inf) at step \d+ of 5", before, cwd)


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (lambda a: a.__setitem__("clean", a["clean"][:0]), r"pretrain\.npz: array 'clean' is"),
        (
            lambda a: a.__setitem__("clean", a["clean"] * float("nan")),
            r"pretrain\.npz: crops hold values outside \[0, 1\] or not finite",
        ),
    ],
    ids=["empty", "nan"],
)
def test_pretrain_blames_the_data_not_the_learning_rate(
    tmp_path: Path, prepared_src: Path, change: Any, pattern: str
) -> None:
    cwd = tmp_path / "study"
    cwd.mkdir()
    with_prepared(prepared_src, cwd)
    pretrain_params(cwd)
    rewrite_npz("pretrain.npz", change)(cwd)  # what pretraining reads (train.npz it does not)
    before = tree(cwd)
    result = run_module(*STAGES["pretrain"], "--threads", "1", cwd=cwd)
    assert_refused(result, pattern, before, cwd)


# --------------------------------------------------------------------------- leftovers


def test_prepare_removes_the_scratch_folders_of_dead_runs_only(tmp_path: Path) -> None:
    """A prepare killed by SIGKILL leaves ``data/.prepared.tmp-<host>-<pid>-<id>``; the next
    prepare removes it (its process is gone), and nothing else: not a live run's folder, not a
    folder outside the naming pattern, not an old-style one younger than a day."""
    import os
    import sys
    import time

    from pipeline.study.data import host_tag

    cwd = tmp_path / "study"
    cwd.mkdir()
    write_params(cwd, {**SWEEP_VALID, "data": tiny_data(patches_per_image=1)})
    data = cwd / "data"
    data.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    host = host_tag()
    leftovers = {
        f".prepared.tmp-{host}-{dead_pid}-0123abcd": False,  # killed run: removed
        f".prepared.old-{host}-{dead_pid}-89abcdef": False,  # killed mid-swap: removed
        ".prepared.tmp-deadbeef": False,  # old naming, two days old: removed
        f".prepared.tmp-{host}-{os.getpid()}-0123abcd": True,  # a live process's: kept
        ".prepared.tmp-0badc0de": True,  # old naming, recent: kept
        f".prepared.tmp-ffffff-{dead_pid}-0123abcd": True,  # another host's, recent: kept
        ".prepared.tmp-mine": True,  # not the pattern: kept
        ".other.tmp-deadbeef": True,  # another output's: kept
    }
    for name in leftovers:
        (data / name).mkdir()
        (data / name / "train.npz").write_bytes(b"x" * 1000)
    two_days_ago = time.time() - 2 * 86400
    os.utime(data / ".prepared.tmp-deadbeef", (two_days_ago, two_days_ago))
    (data / "notes.tmp-deadbeef").write_text("keep")
    result = run_module("stages.prepare", "--quiet", cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = {p.name for p in data.iterdir()}
    assert kept == {"prepared", "notes.tmp-deadbeef"} | {n for n, keep in leftovers.items() if keep}


def test_a_refused_sweep_leaves_no_lock_file_or_folder(tmp_path: Path) -> None:
    from helpers import TINY

    from pipeline.study.config import parse_params
    from pipeline.sweep.cluster import sweep_lock
    from pipeline.util.errors import UserError

    storage = tmp_path / "ray_results"
    cfg = parse_params({**TINY, "ray": {"storage_path": str(storage)}})
    with pytest.raises(UserError), sweep_lock(cfg, "k", poll_s=0.05):
        raise UserError("refused inside the lock (e.g. resources)")
    assert not storage.exists()
    # a killed driver's lock file (the kernel released its lock) is removed by the next run
    storage.mkdir()
    (storage / ".sweep-k.lock").write_text("pid 999999 on elsewhere\n")
    (storage / "sweep-k").mkdir()  # Tune's results stay
    with sweep_lock(cfg, "k", poll_s=0.05):
        assert "pid" in (storage / ".sweep-k.lock").read_text()
    assert {p.name for p in storage.iterdir()} == {"sweep-k"}
