"""``python -m stages.prepare``: user mistakes exit 2 with one line and write nothing.

Every error case fails before deepinv is imported (config errors in ``load_params``, image
errors while reading the source), so each subprocess costs about a second; only the good run
pays the deepinv import.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, assert_one_line_error, run_module, tiny_data

VALID = {
    "data": tiny_data(source="imgs", patches_per_image=2),
    "priors": {"l1": {"type": "wavelet"}},
    "sweep": {"priors": ["l1"], "estimators": ["deq"]},
}


def run_prepare(tmp: Path, params: Path) -> subprocess.CompletedProcess[str]:
    return run_module(
        "stages.prepare", "--params", str(params), "--out", str(tmp / "prepared"), cwd=REPO
    )


def write_images(folder: Path, n: int = 5, shape: tuple[int, int] = (48, 40)) -> None:
    from skimage import data as skdata
    from skimage.io import imsave

    folder.mkdir(exist_ok=True)
    photo = skdata.astronaut()
    for i in range(n):
        imsave(
            folder / f"im{i}.png",
            photo[i * 50 : i * 50 + shape[0], : shape[1]],
            check_contrast=False,
        )


def with_data(**changes: object) -> dict:
    return {**VALID, "data": {**VALID["data"], **changes}}


def params(text: str | dict) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        write_images(tmp / "imgs")
        path = tmp / "params.yaml"
        path.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
        return path

    return setup


def folder(files: dict[str, bytes], n: int = 5) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        write_images(tmp / "imgs", n=n)
        for name, content in files.items():
            (tmp / "imgs" / name).write_bytes(content)
        path = tmp / "params.yaml"
        path.write_text(yaml.safe_dump(VALID))
        return path

    return setup


def small_image(tmp: Path) -> Path:
    write_images(tmp / "imgs")
    write_images(tmp / "small", n=1, shape=(20, 40))
    (tmp / "small" / "im0.png").rename(tmp / "imgs" / "tiny.png")
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(VALID))
    return path


def empty_folder(tmp: Path) -> Path:
    (tmp / "imgs").mkdir()
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(VALID))
    return path


CASES = {
    "missing-params": (lambda t: t / "nope.yaml", r"nope\.yaml: file not found"),
    "invalid-yaml": (params("data: [1, 2\n"), r"params\.yaml: invalid YAML at line"),
    "empty-file": (params(""), r"params\.yaml: the file is empty"),
    "unknown-key": (
        params({**VALID, "data": {"sed": 1}}),
        r"data\.sed: unknown key \(did you mean 'seed'\?\)",
    ),
    "seed-type": (params(with_data(seed="abc")), r"data\.seed: .*integer.*got 'abc'"),
    "missing-folder": (params(with_data(source="nowhere")), r"nowhere: image folder not found"),
    "empty-folder": (empty_folder, r"imgs: no images found"),
    "non-image": (folder({"readme.md": b"# hi"}), r"readme\.md: not an image file"),
    "corrupt-png": (
        folder({"broken.png": b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"}),
        r"broken\.png: cannot be read as an image",
    ),
    "too-small": (small_image, r"tiny\.png: image is 20x40, smaller than data\.patch_size 32"),
    "too-few": (folder({}, n=4), r"imgs: found 4 images, need 5"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    setup, pattern = CASES[case]
    params_path = setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_prepare(tmp_path, params_path)
    assert_one_line_error(result, pattern)
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_good_run_writes_the_data_set(tmp_path: Path) -> None:
    params_path = params(VALID)(tmp_path)
    result = run_prepare(tmp_path, params_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "prepared"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "pretrain.npz",
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    line = result.stdout.strip()
    assert "\n" not in line
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        assert manifest["splits"][split]["patches"] == n
        assert f"{split} {n // 2} images / {n} patches" in line
        with np.load(out / f"{split}.npz", allow_pickle=False) as z:
            assert z["clean"].shape == (n, 1, 32, 32)
    psnr = manifest["splits"]["train"]["observed_psnr"]
    assert f"observed PSNR {psnr:.2f} dB" in line and abs(psnr - 20) < 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "params.yaml", "prepared"]
