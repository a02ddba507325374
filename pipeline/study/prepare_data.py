"""``prepare``: patches cut from the source images, split by image, degraded, and written to the
prepared-data folder, which replaces the old one only if this project made it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.study.degradations import degrade, make_kernel, observation_psnr
from pipeline.study.images import SourceImage, load_images
from pipeline.study.prepared import (
    FORMAT_VERSION,
    KERNEL,
    MANIFEST,
    PRETRAIN,
    SPLITS,
    read_manifest,
    write_npy,
    write_npz,
)
from pipeline.util.errors import DataError
from pipeline.util.scratch import (
    remove_stale_scratch,
    scratch_name,
)

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.study.config import DataConfig, StudyConfig


def prepare(cfg: StudyConfig, out_dir: Path, progress: bool = True) -> Path:
    """Build the train/val/test patch sets of ``cfg.data`` into ``out_dir`` (atomically).

    Returns ``out_dir``. On any error nothing is left behind and a previous ``out_dir`` is kept.
    """
    data = cfg.data
    out_dir = Path(out_dir)
    source = data.source if data.source == "bundled" else str(cfg.resolve(data.source))
    _check_out_dir(out_dir)
    remove_stale_scratch(out_dir)

    images = load_images(source, data.color)
    label = "bundled images" if source == "bundled" else source
    needed = data.train_images + data.val_images + data.test_images
    if len(images) < needed:
        raise DataError(
            f"{label}: found {len(images)} images, need {needed} "
            f"(data.train_images {data.train_images} + data.val_images {data.val_images} "
            f"+ data.test_images {data.test_images})"
        )
    p = data.patch_size
    for im in images:
        _, h, w = im.pixels.shape
        if h < p or w < p:
            where = f"bundled image {im.name!r}" if source == "bundled" else f"{source}/{im.name}"
            raise DataError(f"{where}: image is {h}x{w}, smaller than data.patch_size {p}")

    # one stream per split, then the pretraining crops': spawned children depend only on their
    # index, so adding the last stream left the splits' bytes unchanged
    streams = np.random.SeedSequence(data.seed % 2**64).spawn(2 + len(SPLITS))
    order = np.random.default_rng(streams[0]).permutation(len(images))
    counts = {"train": data.train_images, "val": data.val_images, "test": data.test_images}
    members: dict[str, list[int]] = {}
    start = 0
    for split in SPLITS:
        members[split] = [int(i) for i in order[start : start + counts[split]]]
        start += counts[split]
    unused = sorted(int(i) for i in order[start:])
    q = data.pretrain_patch_size
    for i in members["train"]:
        _, h, w = images[i].pixels.shape
        if h < q or w < q:
            name = images[i].name
            where = f"bundled image {name!r}" if source == "bundled" else f"{source}/{name}"
            raise DataError(
                f"{where}: train image is {h}x{w}, smaller than data.pretrain_patch_size {q}"
            )

    kernel = make_kernel(data.degradation) if data.degradation.kind == "blur" else None
    import deepinv.physics  # noqa: F401  (seconds: import before the progress bar starts)

    arrays: dict[str, dict[str, np.ndarray]] = {}
    bar = _progress(total=needed, enabled=progress)
    try:
        for split, stream in zip(SPLITS, streams[1:-1], strict=True):
            arrays[split] = _make_split(
                [images[i] for i in members[split]], members[split], data, kernel, stream, bar
            )
    finally:
        bar.close()
    pool = pretrain_crops(
        [images[i] for i in members["train"]], members["train"], data, streams[-1]
    )

    tmp = out_dir.parent / scratch_name(out_dir, "tmp")
    try:
        tmp.mkdir(parents=True)
        files: dict[str, str] = {}
        for split in SPLITS:
            files[f"{split}.npz"] = write_npz(tmp / f"{split}.npz", arrays[split])
        files[PRETRAIN] = write_npz(tmp / PRETRAIN, pool)
        if kernel is not None:
            files[KERNEL] = write_npy(tmp / KERNEL, kernel)
        manifest = {
            "format": FORMAT_VERSION,
            "source": source,
            "color": data.color,
            "channels": data.channels,
            "patch_size": p,
            "patches_per_image": data.patches_per_image,
            "seed": data.seed,
            "degradation": data.degradation.model_dump(mode="json"),
            "images": [im.name for im in images],
            "unused_images": [images[i].name for i in unused],
            "splits": {
                split: {
                    "images": [images[i].name for i in members[split]],
                    "image_indices": members[split],
                    "patches": int(arrays[split]["clean"].shape[0]),
                    "observed_psnr": observation_psnr(
                        arrays[split]["observed"], arrays[split]["clean"]
                    ),
                }
                for split in SPLITS
            },
            "pretrain": {
                "patches": int(pool["clean"].shape[0]),
                "patch_size": q,
                "images": [images[i].name for i in members["train"]],
                "image_indices": members["train"],
            },
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _make_split(
    images: list[SourceImage],
    indices: list[int],
    data: DataConfig,
    kernel: np.ndarray | None,
    stream: np.random.SeedSequence,
    bar: Any,
) -> dict[str, np.ndarray]:
    import torch

    d = data.degradation
    p, n = data.patch_size, data.patches_per_image
    crop_ss, mask_ss, noise_ss = stream.spawn(3)
    crop_rng = np.random.default_rng(crop_ss)
    mask_gen = torch.Generator().manual_seed(_torch_seed(mask_ss))
    noise_gen = torch.Generator().manual_seed(_torch_seed(noise_ss))
    kernel_t = torch.from_numpy(kernel) if kernel is not None else None

    clean_all, observed_all, mask_all, index_all = [], [], [], []
    for im, index in zip(images, indices, strict=True):
        _, h, w = im.pixels.shape
        tops = crop_rng.integers(0, h - p + 1, size=n)
        lefts = crop_rng.integers(0, w - p + 1, size=n)
        patches = np.stack(
            [im.pixels[:, t : t + p, s : s + p] for t, s in zip(tops, lefts, strict=True)]
        )
        clean = torch.from_numpy(np.ascontiguousarray(patches))
        observed, mask = degrade(clean, d, kernel_t, mask_gen, noise_gen)
        clean_all.append(patches)
        observed_all.append(observed.numpy())
        if mask is not None:
            mask_all.append(mask.numpy())
        index_all.append(np.full(n, index, dtype=np.int64))
        bar.update(1)

    out = {
        "clean": np.ascontiguousarray(np.concatenate(clean_all), dtype=np.float32),
        "observed": np.ascontiguousarray(np.concatenate(observed_all), dtype=np.float32),
        "image_index": np.concatenate(index_all),
    }
    if mask_all:
        out["mask"] = np.ascontiguousarray(np.concatenate(mask_all), dtype=np.float32)
    return out


def pretrain_crops(
    images: list[SourceImage],
    indices: list[int],
    data: DataConfig,
    stream: np.random.SeedSequence,
) -> dict[str, np.ndarray]:
    """``data.pretrain_patches`` clean random crops of side ``data.pretrain_patch_size`` of the
    given (train) images, each image drawn with probability proportional to its area, so large
    photographs are not under-sampled against small ones."""
    rng = np.random.default_rng(stream)
    q, n = data.pretrain_patch_size, data.pretrain_patches
    area = np.array([im.pixels.shape[1] * im.pixels.shape[2] for im in images], dtype=np.float64)
    which = rng.choice(len(images), size=n, p=area / area.sum())
    crops = np.empty((n, images[0].pixels.shape[0], q, q), dtype=np.float32)
    for k, j in enumerate(which):
        _, h, w = images[j].pixels.shape
        top, left = int(rng.integers(0, h - q + 1)), int(rng.integers(0, w - q + 1))
        crops[k] = images[j].pixels[:, top : top + q, left : left + q]
    return {
        "clean": np.ascontiguousarray(crops),
        "image_index": np.asarray([indices[j] for j in which], dtype=np.int64),
    }


def _torch_seed(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc="prepare", unit="image", disable=not enabled, leave=False)


def _check_out_dir(out_dir: Path) -> None:
    """``out_dir`` may be replaced only if it is absent, empty, or a prepared-data folder this
    project made: a format manifest that passes :func:`read_manifest` and nothing but the files
    it lists. Anything else (a folder that merely holds a ``manifest.json``) is refused."""
    if out_dir.is_symlink():
        raise DataError(
            f"{out_dir}: is a symbolic link; refusing to replace it (pass the real folder as --out)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(
            f"{out_dir}: exists and is not a folder (expected the prepared-data folder)"
        )
    if not out_dir.is_dir():
        from pipeline.util.paths import check_output_dir

        check_output_dir(out_dir, "prepared-data folder")  # found now, not after the work
        return
    entries = list(out_dir.iterdir())
    if not entries:
        return
    refuse = f"{out_dir}: exists, is not empty and"
    if not (out_dir / MANIFEST).is_file():
        raise DataError(
            f"{refuse} holds no {MANIFEST}: refusing to replace a folder that is not a prepared "
            "data set"
        )
    try:
        manifest = read_manifest(out_dir)
    except DataError as err:
        reason = (
            str(err)
            .removeprefix(f"{out_dir / MANIFEST}: ")
            .removesuffix("; rerun `dvc repro prepare`")
        )
        raise DataError(
            f"{refuse} its {MANIFEST} is not a prepared-data manifest ({reason[:120]}): refusing "
            "to replace it (choose another --out, or remove the folder yourself)"
        ) from None
    listed = {MANIFEST, *manifest["files"]}
    foreign = sorted(
        e.name for e in entries if e.name not in listed or e.is_symlink() or not e.is_file()
    )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DataError(
            f"{refuse} holds files its {MANIFEST} does not list ({shown}): refusing to replace a "
            "folder that is not only a prepared data set (choose another --out, or remove them)"
        )


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Swap the finished ``tmp`` folder in for ``out_dir`` (keeps the old one on failure)."""
    _check_out_dir(out_dir)  # again: the folder may have changed while the data was made
    old = None
    if out_dir.exists():
        old = out_dir.parent / scratch_name(out_dir, "old")
        os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
