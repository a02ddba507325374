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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from profiles import STAGES, assert_refused, run_stage, tiny_data, tree

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
