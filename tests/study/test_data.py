"""pipeline.study.data: split by image, crops, degradations (values), determinism, sources, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.study.config import StudyConfig, parse_params
from pipeline.study.data import (
    BUNDLED_IMAGES,
    SPLITS,
    load_images,
    load_split,
    observation_psnr,
    prepare,
    read_manifest,
)
from pipeline.util.errors import DataError

SMALL = {
    "patch_size": 32,
    "patches_per_image": 2,
    "train_images": 3,
    "val_images": 1,
    "test_images": 1,
    "pretrain_patches": 16,
    "pretrain_patch_size": 32,
}


def make_cfg(root: Path, **data: object) -> StudyConfig:
    degradation = data.pop("degradation", {})
    raw = {
        "data": {**SMALL, **data, "degradation": degradation},
        "priors": {"l1": {"type": "wavelet"}},
        "sweep": {"priors": ["l1"], "estimators": ["deq"]},
    }
    return parse_params(raw).with_root(root)


def arrays(out: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(out / f"{split}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def find_crop(image: np.ndarray, patch: np.ndarray) -> list[tuple[int, int]]:
    """All (top, left) where ``patch`` (C, P, P) sits exactly inside ``image`` (C, H, W)."""
    p = patch.shape[-1]
    rows = np.lib.stride_tricks.sliding_window_view(image[0], p, axis=1)  # (H, W-p+1, p)
    r, c = np.nonzero(np.all(rows == patch[0, 0], axis=-1))
    return [
        (int(t), int(s))
        for t, s in zip(r, c, strict=True)
        if t + p <= image.shape[1] and np.array_equal(image[:, t : t + p, s : s + p], patch)
    ]


@pytest.fixture(scope="module")
def bundled_gray(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundled photos, gray, denoising at sigma 0.1 with the SMALL sizes."""
    root = tmp_path_factory.mktemp("bundled")
    cfg = make_cfg(root, seed=3, degradation={"kind": "denoising", "noise_sigma": 0.1})
    return prepare(cfg, root / "prepared", progress=False)


# --------------------------------------------------------------------------- sources


def test_bundled_images_are_offline_photos() -> None:
    images = load_images("bundled", "rgb")
    assert [im.name for im in images] == list(BUNDLED_IMAGES)
    for im in images:
        c, h, w = im.pixels.shape
        assert c == 3 and min(h, w) >= 256, im.name
        assert im.pixels.dtype == np.float32
        assert im.pixels.min() >= 0.0 and im.pixels.max() <= 1.0
        # a photograph, not a flat or binary graphic: many distinct levels, real spread
        assert len(np.unique(im.pixels[0])) > 64 and im.pixels.std() > 0.03, im.name


def test_gray_conversion_matches_rgb2gray() -> None:
    from skimage import data as skdata
    from skimage.color import rgb2gray

    gray = {im.name: im.pixels for im in load_images("bundled", "gray")}
    rgb = {im.name: im.pixels for im in load_images("bundled", "rgb")}
    np.testing.assert_allclose(gray["astronaut"][0], rgb2gray(skdata.astronaut()), atol=1e-6)
    cam = rgb["camera"]  # a gray photo replicated into 3 equal channels
    assert np.array_equal(cam[0], cam[1]) and np.array_equal(cam[0], cam[2])
    np.testing.assert_allclose(cam[0], skdata.camera() / 255.0, atol=1e-6)


# --------------------------------------------------------------------------- splits and crops


def test_split_by_image(bundled_gray: Path) -> None:
    m = read_manifest(bundled_gray)
    names = {s: m["splits"][s]["images"] for s in SPLITS}
    assert [len(names[s]) for s in SPLITS] == [3, 1, 1]
    assert sum(len(v) for v in names.values()) == len(set().union(*names.values()))
    assert len(m["images"]) == len(BUNDLED_IMAGES)
    assert set(m["unused_images"]).isdisjoint(set().union(*names.values()))
    for split in SPLITS:
        a = arrays(bundled_gray, split)
        idx = a["image_index"]
        assert idx.dtype == np.int64
        assert {m["images"][i] for i in idx} == set(names[split])
        # every image of the split gives exactly patches_per_image patches
        assert sorted(np.unique(idx, return_counts=True)[1].tolist()) == [2] * len(names[split])
        assert m["splits"][split]["patches"] == len(idx) == a["clean"].shape[0]


def test_patches_are_crops_of_their_own_images(bundled_gray: Path) -> None:
    m = read_manifest(bundled_gray)
    images = {im.name: im.pixels for im in load_images("bundled", "gray")}
    for split in SPLITS:
        a = arrays(bundled_gray, split)
        assert a["clean"].shape[1:] == (1, 32, 32) and a["clean"].dtype == np.float32
        for patch, i in zip(a["clean"], a["image_index"], strict=True):
            assert find_crop(images[m["images"][i]], patch), (split, m["images"][i])


def test_same_seed_same_bytes_other_seed_differs(bundled_gray: Path, tmp_path: Path) -> None:
    deg = {"kind": "denoising", "noise_sigma": 0.1}
    again = prepare(make_cfg(tmp_path, seed=3, degradation=deg), tmp_path / "a", progress=False)
    other = prepare(make_cfg(tmp_path, seed=4, degradation=deg), tmp_path / "b", progress=False)
    for split in SPLITS:
        name = f"{split}.npz"
        assert (again / name).read_bytes() == (bundled_gray / name).read_bytes()
        a, b = arrays(bundled_gray, split), arrays(other, split)
        assert not np.array_equal(a["observed"], b["observed"])
    m1, m2 = read_manifest(bundled_gray), read_manifest(again)
    assert m1["files"] == m2["files"]
    assert read_manifest(other)["splits"] != m1["splits"]


def test_manifest_records_everything(bundled_gray: Path) -> None:
    m = read_manifest(bundled_gray)
    assert m["source"] == "bundled" and m["seed"] == 3 and m["channels"] == 1
    assert m["patch_size"] == 32 and m["patches_per_image"] == 2
    assert m["degradation"]["kind"] == "denoising" and m["degradation"]["noise_sigma"] == 0.1
    assert set(m["files"]) == {"train.npz", "val.npz", "test.npz", "pretrain.npz"}
    pool = m["pretrain"]
    assert pool["images"] == m["splits"]["train"]["images"]
    assert pool["image_indices"] == m["splits"]["train"]["image_indices"]
    with np.load(bundled_gray / "pretrain.npz") as z:
        assert z["clean"].shape == (pool["patches"], 1, pool["patch_size"], pool["patch_size"])
        assert set(z["image_index"].tolist()) <= set(pool["image_indices"])
    for split in SPLITS:
        a = arrays(bundled_gray, split)
        assert m["splits"][split]["observed_psnr"] == observation_psnr(a["observed"], a["clean"])
    # sigma 0.1 noise on [0,1] images: PSNR = -10 log10(0.01) = 20 dB (±0.5 dB over 2+ patches)
    assert abs(m["splits"]["train"]["observed_psnr"] - 20.0) < 0.5
    assert not [p for p in bundled_gray.parent.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- degradations


def test_denoising_noise_level(tmp_path: Path) -> None:
    sigma = 0.07
    cfg = make_cfg(
        tmp_path,
        patches_per_image=8,
        degradation={"kind": "denoising", "noise_sigma": sigma},
    )
    out = prepare(cfg, tmp_path / "p", progress=False)
    a = arrays(out, "train")
    r = (a["observed"] - a["clean"]).ravel()  # 3 images x 8 patches x 32^2 = 24576 samples
    # std of a sample std ~ sigma / sqrt(2n) = 0.45%: 3% is > 6 standard errors
    assert abs(r.std() / sigma - 1) < 0.03
    assert abs(r.mean()) < 5 * sigma / np.sqrt(r.size)
    assert "mask" not in a
    split = load_split(out, "train")
    assert split.mask is None and split.kernel is None and len(split) == 24


def test_inpainting_masks_and_observations(tmp_path: Path) -> None:
    sigma, rate = 0.05, 0.3
    cfg = make_cfg(
        tmp_path,
        color="rgb",
        patches_per_image=4,
        degradation={"kind": "inpainting", "noise_sigma": sigma, "mask_rate": rate},
    )
    out = prepare(cfg, tmp_path / "p", progress=False)
    a = arrays(out, "train")
    mask, clean, obs = a["mask"], a["clean"], a["observed"]
    assert mask.shape == (12, 1, 32, 32) and set(np.unique(mask).tolist()) == {0.0, 1.0}
    # 12 x 32^2 = 12288 Bernoulli(0.3) pixels: std of the mean 0.4%; allow 0.02
    assert abs(mask.mean() - rate) < 0.02
    # the masks differ from patch to patch
    assert len({m.tobytes() for m in mask}) == len(mask)
    keep = np.broadcast_to(mask, obs.shape) == 1
    assert np.all(obs[~keep] == 0.0)  # deepinv masks the noise too: y = m * (m * x + n)
    r = (obs - clean)[keep]
    assert abs(r.std() / sigma - 1) < 0.04 and abs(r.mean()) < 5 * sigma / np.sqrt(r.size)

    split = load_split(out, "train")
    idx = slice(2, 5)
    physics = split.physics(idx)
    ax = physics.A(split.clean[idx])
    np.testing.assert_array_equal(ax.numpy(), (mask[2:5] * clean[2:5]))
    # an index tensor picks the matching mask rows
    import torch

    rows = torch.tensor([7, 0])
    np.testing.assert_array_equal(
        split.physics(rows).A(split.clean[rows]).numpy(), mask[[7, 0]] * clean[[7, 0]]
    )


@pytest.mark.parametrize("kernel", ["gaussian", "line"])
def test_blur_observation_is_a_of_clean_plus_noise(tmp_path: Path, kernel: str) -> None:
    from pipeline.core.physics import gaussian_kernel, line_kernel

    sigma = 0.05
    deg = {
        "kind": "blur",
        "noise_sigma": sigma,
        "blur_kernel": kernel,
        "blur_size": 7,
        "blur_sigma": 2.0,
        "blur_angle": 30.0,
    }
    out = prepare(
        make_cfg(tmp_path, patches_per_image=8, degradation=deg), tmp_path / "p", progress=False
    )
    expected = gaussian_kernel(7, 2.0) if kernel == "gaussian" else line_kernel(7, 30.0)
    k = np.load(out / "kernel.npy", allow_pickle=False)
    assert k.shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(k, expected.numpy())

    split = load_split(out, "train")
    ax = split.physics().A(split.clean)
    assert (ax - split.clean).abs().mean() > 1e-3  # the blur really acts
    r = (split.observed - ax).numpy().ravel()
    assert abs(r.std() / sigma - 1) < 0.03 and abs(r.mean()) < 5 * sigma / np.sqrt(r.size)

    # without noise the observation is exactly A(clean)
    quiet = prepare(
        make_cfg(tmp_path, degradation={**deg, "noise_sigma": 0.0}),
        tmp_path / "q",
        progress=False,
    )
    s0 = load_split(quiet, "val")
    np.testing.assert_allclose(s0.observed, s0.physics().A(s0.clean), atol=1e-6)


# --------------------------------------------------------------------------- folder sources


def write_folder(folder: Path) -> None:
    from PIL import Image
    from skimage import data as skdata
    from skimage.io import imsave

    folder.mkdir()
    imsave(folder / "b_astronaut.png", skdata.astronaut()[:100, :120], check_contrast=False)
    imsave(folder / "a_camera.png", skdata.camera()[200:300, 100:180], check_contrast=False)
    rgba = np.dstack([skdata.coffee()[:90, :90], np.full((90, 90), 7, np.uint8)])
    imsave(folder / "c_coffee.png", rgba, check_contrast=False)
    Image.fromarray(skdata.chelsea()[:64, :64]).save(folder / "d_chelsea.jpg", quality=95)
    cam16 = skdata.camera()[:70, :70].astype(np.uint16) * 257
    imsave(folder / "e_camera16.tif", cam16, check_contrast=False)
    (folder / ".DS_Store").write_bytes(b"\0junk")  # hidden files are ignored
    (folder / "sub").mkdir()  # so are sub-folders (non-recursive)


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_folder_source(tmp_path: Path, color: str) -> None:
    from skimage import data as skdata

    write_folder(tmp_path / "imgs")
    images = load_images(tmp_path / "imgs", color)
    names = [im.name for im in images]
    assert names == [
        "a_camera.png",
        "b_astronaut.png",
        "c_coffee.png",
        "d_chelsea.jpg",
        "e_camera16.tif",
    ]
    c = 1 if color == "gray" else 3
    assert [im.pixels.shape for im in images] == [
        (c, 100, 80),
        (c, 100, 120),
        (c, 90, 90),
        (c, 64, 64),
        (c, 70, 70),
    ]
    cam = images[0].pixels
    np.testing.assert_allclose(cam[0], skdata.camera()[200:300, 100:180] / 255, atol=1e-6)
    np.testing.assert_allclose(images[4].pixels[0], skdata.camera()[:70, :70] / 255, atol=1e-6)
    if color == "rgb":
        assert np.array_equal(cam[0], cam[2])
        np.testing.assert_allclose(
            images[2].pixels, np.moveaxis(skdata.coffee()[:90, :90], -1, 0) / 255, atol=1e-6
        )  # alpha dropped

    # relative source resolves against the params file's folder
    cfg = make_cfg(tmp_path, source="imgs", color=color, train_images=2)
    out = prepare(cfg, tmp_path / "prepared", progress=False)
    m = read_manifest(out)
    assert m["source"] == str((tmp_path / "imgs").resolve()) and m["channels"] == c
    used = [n for s in SPLITS for n in m["splits"][s]["images"]]
    assert len(used) == 4 and set(used) | set(m["unused_images"]) == set(names)
    assert load_split(out, "test").clean.shape == (2, c, 32, 32)


# --------------------------------------------------------------------------- errors


def good_png(path: Path, shape: tuple[int, int] = (40, 40)) -> None:
    from skimage import data as skdata
    from skimage.io import imsave

    imsave(path, skdata.camera()[: shape[0], : shape[1]], check_contrast=False)


def folder_with(tmp_path: Path, n: int = 5, extra: dict[str, bytes] | None = None) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        good_png(folder / f"im{i}.png")
    for name, content in (extra or {}).items():
        (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda t: t / "missing", r"missing: image folder not found"),
        (lambda t: (t / "imgs").mkdir() or t / "imgs", r"imgs: no images found"),
        (lambda t: folder_with(t, extra={"notes.txt": b"hi"}), r"notes\.txt: not an image file"),
        (
            lambda t: folder_with(t, extra={"z.png": b"\x89PNG\r\n\x1a\nbroken"}),
            r"z\.png: cannot be read as an image",
        ),
        (lambda t: folder_with(t, n=4), r"found 4 images, need 5 \(data\.train_images 3"),
    ],
    ids=["missing", "empty", "non-image", "corrupt", "too-few"],
)
def test_folder_errors(tmp_path: Path, setup, message: str) -> None:
    folder = setup(tmp_path)
    cfg = make_cfg(tmp_path, source=str(folder))
    with pytest.raises(DataError, match=message) as err:
        prepare(cfg, tmp_path / "prepared", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "prepared").exists()


def test_image_smaller_than_patch(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    good_png(folder / "small.png", (40, 20))
    with pytest.raises(
        DataError, match=r"small\.png: image is 40x20, smaller than data\.patch_size 32"
    ):
        prepare(make_cfg(tmp_path, source="imgs"), tmp_path / "prepared", progress=False)
    with pytest.raises(DataError, match=r"bundled image 'chelsea': image is 300x451, smaller"):
        prepare(make_cfg(tmp_path, patch_size=320), tmp_path / "prepared", progress=False)
    assert not (tmp_path / "prepared").exists()


def test_failure_keeps_previous_output(tmp_path: Path) -> None:
    folder = folder_with(tmp_path)
    out = prepare(make_cfg(tmp_path, source="imgs"), tmp_path / "prepared", progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad\.png"):
        prepare(make_cfg(tmp_path, source="imgs", seed=9), out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # a rerun replaces the old output (no leftovers beside it)
    (folder / "bad.png").unlink()
    prepare(make_cfg(tmp_path, source="imgs", seed=9), out, progress=False)
    assert read_manifest(out)["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "prepared"]


def test_refuses_to_replace_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a prepared data set"):
        prepare(make_cfg(tmp_path), tmp_path / "prepared", progress=False)
    assert (tmp_path / "prepared" / "thesis.tex").read_text() == "precious"


def test_load_split_validates(bundled_gray: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: not prepared \(run `dvc repro prepare`\)"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="unknown split 'training'"):
        load_split(bundled_gray, "training")  # type: ignore[arg-type]

    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundled_gray, copy)
    (copy / "val.npz").unlink()
    with pytest.raises(DataError, match=r"val\.npz: missing from the prepared folder"):
        load_split(copy, "val")
    a = arrays(copy, "train")
    a["observed"][0, 0, 0, 0] += 1
    np.savez(copy / "train.npz", **a)
    with pytest.raises(DataError, match=r"train\.npz: checksum differs"):
        load_split(copy, "train")
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable manifest"):
        load_split(copy, "test")

    s = load_split(bundled_gray, "val")
    a = arrays(bundled_gray, "val")
    assert np.array_equal(s.clean.numpy(), a["clean"])
    assert np.array_equal(s.observed.numpy(), a["observed"])
    assert s.degradation == json.loads((bundled_gray / "manifest.json").read_text())["degradation"]


def test_a_train_image_smaller_than_the_pretraining_crops_is_named(tmp_path: Path) -> None:
    import skimage.io

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        skimage.io.imsave(folder / f"im{i}.png", (rng.random((40, 40)) * 255).astype(np.uint8))
    cfg = make_cfg(tmp_path, source=str(folder), pretrain_patch_size=48)
    with pytest.raises(
        DataError,
        match=r"im[0-9]\.png: train image is 40x40, smaller than data\.pretrain_patch_size 48",
    ):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
