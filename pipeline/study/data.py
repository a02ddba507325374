"""Image sources, patch data sets and their observations.

``prepare(cfg, out_dir)`` turns an image source into three patch data sets split *by image*
(``train.npz``, ``val.npz``, ``test.npz``), each holding clean patches, their degraded
observations ``y = A x + noise`` made with the deepinv physics of :mod:`pipeline.schemes`,
the inpainting masks if any, and the index of the source image of every patch; plus
``kernel.npy`` (blur) and ``manifest.json`` (what was made, from what, and checksums).

``load_split(prepared_dir, split)`` reads one split back as tensors and rebuilds its physics.

``pretrain.npz`` holds ``data.pretrain_patches`` random crops (side ``data.pretrain_patch_size``)
of the *train* images only, clean: what the pretrain stage trains the denoiser on
(``load_pretrain_pool``). Val and test images never enter it.

Sources (``data.source``):

* ``"bundled"``: natural photographs that ship inside the scikit-image wheel (read from the
  installed package folder: nothing is ever downloaded);
* a folder of PNG / JPEG / TIFF images (non-recursive, sorted by name; hidden files are
  ignored, any other file is an error). Relative paths resolve against the params file.

Every random choice (the split, the crops, the masks, the noise) derives from ``data.seed``:
the same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.util.errors import DataError
from pipeline.util.hashing import sha256_file
from pipeline.util.scratch import (  # noqa: F401 - host_tag: part of this module's API
    host_tag,
    remove_stale_scratch,
    scratch_name,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipeline.study.config import DataConfig, Degradation, StudyConfig


SplitName = Literal["train", "val", "test"]


SPLITS: tuple[SplitName, ...] = ("train", "val", "test")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


MANIFEST = "manifest.json"


KERNEL = "kernel.npy"


PRETRAIN = "pretrain.npz"


FORMAT_VERSION = 1


PSNR_CAP_DB = 100.0  # PSNR of a noiseless identity observation (MSE floored at 1e-10)


# Photographs inside the scikit-image wheel (file name in skimage/data). Left out: synthetic or
# graphic images (text, logo, horse, chessboard, colorwheel, phantom), text pages (page), an
# already motion-blurred photo (clock), a 102x102 crop (microaneurysms), microscopy (cell), and
# photos whose random crops are mostly flat black (hubble_deep_field: night sky; retina: dark
# border). Everything listed here is checked to be present in the installed package.
BUNDLED_IMAGES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "motorcycle": "motorcycle_left.png",
    "rocket": "rocket.jpg",
}


@dataclass(frozen=True)
class SourceImage:
    name: str
    pixels: np.ndarray  # (C, H, W) float32 in [0, 1]


def load_images(source: str | Path, color: Literal["gray", "rgb"]) -> list[SourceImage]:
    """All images of a source as (C, H, W) float32 arrays in [0, 1], in a fixed order.

    ``source`` is ``"bundled"`` or a folder path (already resolved).
    """
    if str(source) == "bundled":
        return [SourceImage(name, _convert(arr, color, name)) for name, arr in _bundled_arrays()]
    folder = Path(source)
    files = list_image_files(folder)
    return [SourceImage(f.name, _convert(_read_image(f), color, str(f))) for f in files]


def list_image_files(folder: Path) -> list[Path]:
    """The image files of a folder, sorted by name; DataError on anything unusable."""
    if not folder.exists():
        raise DataError(
            f"{folder}: image folder not found (data.source expects 'bundled' or a folder of PNG/JPEG/TIFF images)"
        )
    if not folder.is_dir():
        raise DataError(
            f"{folder}: not a folder (data.source expects 'bundled' or a folder of PNG/JPEG/TIFF images)"
        )
    files = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{entry}: not an image file (the data.source folder may hold only "
                f"{'/'.join(s.lstrip('.') for s in IMAGE_SUFFIXES)} files)"
            )
        try:
            mode = entry.stat().st_mode  # through a link: what would be read
        except OSError as err:
            raise DataError(f"{entry}: cannot be read ({err.strerror or err})") from None
        if not stat.S_ISREG(mode):
            raise DataError(
                f"{entry}: not a regular file (a FIFO, socket or device); the data.source folder "
                "may hold only image files"
            )
        files.append(entry)
    if not files:
        raise DataError(f"{folder}: no images found (expected PNG/JPEG/TIFF files)")
    return files


def _bundled_arrays() -> list[tuple[str, np.ndarray]]:
    import skimage.data
    import skimage.io

    root = Path(skimage.data.__file__).parent
    out = []
    for name, filename in BUNDLED_IMAGES.items():
        path = root / filename
        if not path.is_file():
            raise DataError(
                f"{path}: bundled image {name!r} missing from the installed scikit-image "
                "(reinstall scikit-image, or set data.source to a folder of images)"
            )
        out.append((name, np.asarray(skimage.io.imread(path))))
    return out


def _read_image(path: Path) -> np.ndarray:
    import warnings

    import skimage.io

    _check_decoded_size(path)
    try:
        with warnings.catch_warnings():  # imageio warns while probing its plugins on junk
            warnings.simplefilter("ignore")
            arr = np.asarray(skimage.io.imread(path))
    except Exception as err:  # imageio/PIL raise many types on corrupt files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: cannot be read as an image ({reason})") from None
    if arr.dtype == object or arr.size == 0:
        raise DataError(f"{path}: cannot be read as an image (no pixel data)")
    return arr


MAX_IMAGE_PIXELS = 1 << 26  # 64 Mpx (8192x8192) per image file, all frames together


def _check_decoded_size(path: Path) -> None:
    """Refuse an image whose header says it decodes to more than :data:`MAX_IMAGE_PIXELS`
    pixels, before decoding it (a small compressed file can decode to gigabytes). TIFF is read
    by tifffile, everything else by PIL: each header is read the way the file will be."""
    import warnings

    pixels = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                with tifffile.TiffFile(path) as tf:
                    pixels = sum(
                        int(page.imagewidth) * int(page.imagelength) * int(page.imagedepth or 1)
                        for page in tf.pages
                    )
            else:
                from PIL import Image

                with Image.open(path) as im:
                    w, h = im.size
                    pixels = w * h * int(getattr(im, "n_frames", 1))
    except Exception:  # an unreadable header is reported by the reader itself
        return
    if pixels is not None and pixels > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{path}: decodes to {pixels} pixels, more than the limit of {MAX_IMAGE_PIXELS} "
            "per image (did you mean a smaller image? crop or downscale it first)"
        )


def _convert(arr: np.ndarray, color: Literal["gray", "rgb"], label: str) -> np.ndarray:
    """Any gray / gray+alpha / RGB / RGBA array → (C, H, W) float32 in [0, 1]."""
    from skimage.color import rgb2gray
    from skimage.util import img_as_float32

    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 2:  # gray + alpha
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:  # RGBA: drop alpha
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise DataError(
            f"{label}: expected a single 2-D gray or RGB(A) image, got an array of shape "
            f"{tuple(arr.shape)}"
        )
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise DataError(
                f"{label}: floating-point pixels must lie in [0, 1], got [{lo:g}, {hi:g}]"
            )
    try:
        img = img_as_float32(arr)
    except ValueError as err:
        raise DataError(f"{label}: unsupported pixel type {arr.dtype} ({err})") from None
    if img.ndim == 2:
        img = img[None] if color == "gray" else np.repeat(img[None], 3, axis=0)
    elif color == "gray":
        img = rgb2gray(img).astype(np.float32)[None]
    else:
        img = np.moveaxis(img, -1, 0)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)


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


def make_kernel(d: Degradation) -> np.ndarray:
    """The (1, 1, k, k) float32 blur kernel of a blur degradation, or (1, C, k, k): one per
    channel when its ``blur_sigma`` (gaussian) or ``blur_angle`` (line) is a list."""
    import torch

    from pipeline.core.physics import gaussian_kernel, line_kernel

    if d.blur_kernel == "gaussian":
        make, values = gaussian_kernel, d.blur_sigma
    else:
        make, values = line_kernel, d.blur_angle
    if isinstance(values, list):
        k = torch.cat([make(d.blur_size, v) for v in values], dim=1)
    else:
        k = make(d.blur_size, values)
    return np.ascontiguousarray(k.detach().cpu().numpy(), dtype=np.float32)


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


def observation_psnr(observed: np.ndarray, clean: np.ndarray) -> float:
    """Mean over patches of the PSNR (dB, peak 1) of observed vs clean; capped at 100 dB."""
    diff = observed.astype(np.float64) - clean.astype(np.float64)
    mse = np.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=1)
    psnr = -10.0 * np.log10(np.maximum(mse, 10 ** (-PSNR_CAP_DB / 10)))
    return round(float(np.mean(psnr)), 4)


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


_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Like ``np.savez`` (uncompressed, loadable by ``np.load``) but byte-reproducible:
    ``np.savez`` stamps the current time into the zip entries. Returns the file's sha256."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(info, buf.getvalue())
    return sha256_file(path)


def write_npy(path: Path, array: np.ndarray) -> str:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return sha256_file(path)


@dataclass
class Split:
    """One prepared split as tensors: ``clean`` and ``observed`` are (N, C, P, P); ``mask`` is
    (N, 1, P, P) (1 = pixel kept, shared by all channels) for inpainting, else None; ``kernel``
    is the (1, 1, k, k) blur kernel for blur, else None."""

    name: str
    clean: torch.Tensor
    observed: torch.Tensor
    image_index: torch.Tensor
    degradation: dict[str, Any]
    mask: torch.Tensor | None = None
    kernel: torch.Tensor | None = None
    images: list[str] = field(default_factory=list)
    _shared_physics: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def img_shape(self) -> tuple[int, int, int]:
        c, h, w = self.clean.shape[1:]
        return (int(c), int(h), int(w))

    def physics(
        self, index: torch.Tensor | slice | None = None, rng: torch.Generator | None = None
    ) -> Any:
        """The deepinv physics of the patches ``index`` (all if None): for inpainting it carries
        their mask rows, so it applies to ``self.clean[index]`` batch-wise."""
        from pipeline.core.physics import build_physics

        shareable = self.mask is None and rng is None  # same operator for every batch
        if shareable and self._shared_physics is not None:
            return self._shared_physics
        mask = None
        if self.mask is not None:
            mask = self.mask if index is None else self.mask[index]
        physics = build_physics(
            self.degradation["kind"],
            self.img_shape,
            noise_sigma=_noise_sigma(self.degradation["noise_sigma"]),
            blur_kernel=self.kernel,
            mask=mask,
            device=self.clean.device,
            rng=rng,
            padding=self.degradation.get("blur_padding", "circular"),
        )
        if shareable:
            self._shared_physics = physics
        return physics


def _noise_sigma(value: Any) -> float | list[float]:
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared folder, checked field by field; DataError if missing,
    unreadable or malformed.

    A prepared folder is untrusted input (it is downloaded and shared): every field the project
    reads is checked for its type and range here, the one place a manifest is read, and the
    ``files`` it lists may only be the project's own plain file names (:data:`PREPARED_FILES`),
    so nothing that trusts the manifest (loading, packing, unpacking on nodes) can reach a path
    outside the folder."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST
    if not path.is_file():
        if path.exists() or path.is_symlink():
            raise DataError(f"{path}: not a regular file; rerun `dvc repro prepare`")
        raise DataError(f"{prepared_dir}: not prepared (run `dvc repro prepare`)")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise DataError(
                f"{path}: {path.stat().st_size} bytes is too large for a manifest "
                f"(limit {MAX_MANIFEST_BYTES}); rerun `dvc repro prepare`"
            )
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DataError(f"{path}: unreadable manifest ({err}); rerun `dvc repro prepare`") from None
    if (
        not isinstance(manifest, dict)
        or type(manifest.get("format")) is not int
        or manifest.get("format") != FORMAT_VERSION
    ):
        raise DataError(
            f"{path}: not a format-{FORMAT_VERSION} manifest; rerun `dvc repro prepare`"
        )
    _check_manifest(manifest, path)
    return manifest


# The only files a prepared folder holds besides its manifest: plain names, never paths.
PREPARED_FILES = (*(f"{s}.npz" for s in SPLITS), PRETRAIN, KERNEL)

MAX_MANIFEST_BYTES = 16 << 20
# The largest array a prepared split may hold (bytes): a header or manifest claiming more is
# refused before anything is allocated.
MAX_ARRAY_BYTES = 16 << 30

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_manifest(m: dict[str, Any], path: Path) -> None:
    """Types and ranges of every manifest field the project reads (DataError naming the field)."""
    stale = "; rerun `dvc repro prepare`"

    def bad(field: str, expected: str, got: Any) -> DataError:
        shown = repr(got)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return DataError(f"{path}: {field}: expected {expected}, got {shown}{stale}")

    def integer(field: str, value: Any, lo: int, hi: int) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise bad(field, f"an integer in [{lo}, {hi}]", value)
        return value

    files = m.get("files")
    if not isinstance(files, dict):
        raise bad("files", "a mapping of file names to sha256", files)
    for name, sha in files.items():
        if not plain_name(name):
            raise DataError(
                f"{path}: files: {str(name)[:80]!r} is not a plain file name inside the "
                f"prepared folder (refused: a manifest may only list its own files){stale}"
            )
        if name not in PREPARED_FILES:
            raise DataError(
                f"{path}: files: unknown file {name!r}; expected only "
                f"{', '.join(PREPARED_FILES)}{stale}"
            )
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise bad(f"files.{name}", "a sha256 hex digest", sha)
    channels = m.get("channels")
    if type(channels) is not int or channels not in (1, 3):
        raise bad("channels", "1 or 3", channels)
    p = integer("patch_size", m.get("patch_size"), 8, 1024)
    deg = m.get("degradation")
    if not isinstance(deg, dict):
        raise bad("degradation", "a mapping", deg)
    from pydantic import ValidationError

    from pipeline.study.config import Degradation

    try:
        d = Degradation.model_validate(deg)
    except (ValidationError, ValueError) as err:
        errors = err.errors() if isinstance(err, ValidationError) else []
        first = errors[0] if errors else {"loc": (), "msg": str(err)}
        where = ".".join(map(str, ("degradation", *first.get("loc", ()))))
        what = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise DataError(f"{path}: {where}: {what}{stale}") from None
    splits = m.get("splits")
    if not isinstance(splits, dict):
        raise bad("splits", "a mapping of train/val/test", splits)
    for split in SPLITS:
        info = splits.get(split)
        if not isinstance(info, dict):
            raise bad(f"splits.{split}", "a mapping", info)
        n = integer(f"splits.{split}.patches", info.get("patches"), 1, 2**40)
        if n * channels * p * p * 4 > MAX_ARRAY_BYTES:
            raise DataError(
                f"{path}: splits.{split}.patches: {n} patches of {channels}x{p}x{p} exceed the "
                f"{MAX_ARRAY_BYTES >> 30} GiB limit of a prepared split{stale}"
            )
        images = info.get("images", [])
        if not isinstance(images, list) or not all(isinstance(x, str) for x in images):
            raise bad(f"splits.{split}.images", "a list of image names", images)
        indices = info.get("image_indices", [])
        if not isinstance(indices, list) or not all(type(i) is int for i in indices):
            raise bad(f"splits.{split}.image_indices", "a list of integers", indices)
        if f"{split}.npz" not in files:
            raise DataError(f"{path}: files: {split}.npz is not listed{stale}")
    if (d.kind == "blur") != (KERNEL in files):
        need = "lists no" if d.kind == "blur" else f"lists {KERNEL} but the degradation is not"
        raise DataError(f"{path}: files: {need} {KERNEL if d.kind == 'blur' else 'blur'}{stale}")
    pool = m.get("pretrain")
    if pool is not None:  # absent in folders prepared before pretrain.npz existed
        if not isinstance(pool, dict):
            raise bad("pretrain", "a mapping", pool)
        n = integer("pretrain.patches", pool.get("patches"), 1, 2**40)
        q = integer("pretrain.patch_size", pool.get("patch_size"), 8, 1024)
        if n * channels * q * q * 4 > MAX_ARRAY_BYTES:
            raise DataError(
                f"{path}: pretrain.patches: {n} crops of {channels}x{q}x{q} exceed the "
                f"{MAX_ARRAY_BYTES >> 30} GiB limit of a prepared array{stale}"
            )
        indices = pool.get("image_indices")
        if not isinstance(indices, list) or not all(type(i) is int for i in indices):
            raise bad("pretrain.image_indices", "a list of integers", indices)
        if PRETRAIN not in files:
            raise DataError(f"{path}: files: {PRETRAIN} is not listed{stale}")
    elif PRETRAIN in files:
        raise DataError(f"{path}: files: lists {PRETRAIN} but the manifest has no pretrain{stale}")
    for key in ("source", "color"):
        if key in m and not isinstance(m[key], str):
            raise bad(key, "a string", m[key])
    for key in ("seed", "patches_per_image"):
        if key in m:
            integer(key, m[key], 0, 2**64)


def plain_name(name: Any) -> bool:
    """A file name that stays inside its folder: no separators, not '.' / '..', not absolute."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(ch in name for ch in ("/", "\\", "\0", ":"))
        and not Path(name).is_absolute()
    )


def expected_arrays(manifest: dict[str, Any], split: SplitName) -> dict[str, tuple[Any, ...]]:
    """Each array of a split's .npz -> (shape, dtype) as the (checked) manifest says."""
    n = manifest["splits"][split]["patches"]
    c, p = manifest["channels"], manifest["patch_size"]
    out: dict[str, tuple[Any, ...]] = {
        "clean": ((n, c, p, p), np.dtype(np.float32)),
        "observed": ((n, c, p, p), np.dtype(np.float32)),
        "image_index": ((n,), np.dtype(np.int64)),
    }
    if manifest["degradation"]["kind"] == "inpainting":
        out["mask"] = ((n, 1, p, p), np.dtype(np.float32))
    return out


def pool_arrays(manifest: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The arrays of ``pretrain.npz`` -> (shape, dtype) as the (checked) manifest says."""
    n, q = manifest["pretrain"]["patches"], manifest["pretrain"]["patch_size"]
    return {
        "clean": ((n, manifest["channels"], q, q), np.dtype(np.float32)),
        "image_index": ((n,), np.dtype(np.int64)),
    }


def load_pretrain_pool(prepared_dir: Path, device: Any = "cpu") -> torch.Tensor:
    """The clean pretraining crops of the train images (N, C, S, S), checked against the
    manifest: checksum, shapes, values finite in [0, 1], and every crop from a train image."""
    import torch

    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    stale = "; rerun `dvc repro prepare`"
    path = prepared_dir / PRETRAIN
    if "pretrain" not in manifest:
        raise DataError(f"{prepared_dir}: no pretraining crops ({PRETRAIN}){stale}")
    check_file(path, manifest["files"].get(PRETRAIN), stale)
    check_arrays(path, pool_arrays(manifest), stale)
    try:
        with np.load(path, allow_pickle=False) as z:
            clean, index = z["clean"], z["image_index"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable ({err}){stale}") from None
    train = set(manifest["splits"]["train"].get("image_indices", []))
    if not set(np.unique(index).tolist()) <= train:
        raise DataError(f"{path}: crops from images outside the train split{stale}")
    if not np.isfinite(clean).all() or (clean.size and (clean.min() < 0 or clean.max() > 1)):
        raise DataError(f"{path}: crops hold values outside [0, 1] or not finite{stale}")
    return torch.from_numpy(clean).to(device)


def _npy_header(f: Any, label: str, stale: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of an .npy stream, read without reading its data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=10000)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=10000)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{label}: unreadable ({err}){stale}") from None
    if dtype.hasobject:
        raise DataError(f"{label}: holds pickled Python objects (refused, never unpickled){stale}")
    if fortran:
        raise DataError(f"{label}: unexpected array layout (Fortran order){stale}")
    return tuple(shape), dtype, f.tell()


def check_arrays(path: Path, expected: dict[str, tuple[Any, ...]], stale: str) -> None:
    """The .npz at ``path`` holds exactly ``expected`` (shapes, dtypes, stored uncompressed with
    the sizes its headers claim), read from the headers: nothing is allocated."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            names = sorted(n.removesuffix(".npy") for n in infos)
            if sorted(infos) != sorted(f"{k}.npy" for k in expected):
                raise DataError(
                    f"{path}: holds arrays {names[:8]}, expected {sorted(expected)}{stale}"
                )
            for key, (shape, dtype) in expected.items():
                info = infos[f"{key}.npy"]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise DataError(
                        f"{path}: array {key!r} is compressed (never written so){stale}"
                    )
                with zf.open(info) as f:
                    got_shape, got_dtype, header = _npy_header(f, f"{path}: array {key!r}", stale)
                if got_shape != shape or got_dtype != dtype:
                    raise DataError(
                        f"{path}: array {key!r} is {got_dtype} {got_shape}, manifest says "
                        f"{dtype} {shape}{stale}"
                    )
                if info.file_size != header + int(np.prod(shape)) * dtype.itemsize:
                    raise DataError(f"{path}: array {key!r} is truncated or padded{stale}")
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, KeyError) as err:
        raise DataError(f"{path}: unreadable ({err}){stale}") from None


def check_kernel(path: Path, manifest: dict[str, Any], stale: str) -> None:
    k = manifest["degradation"].get("blur_size", 9)
    try:
        with open(path, "rb") as f:
            shape, dtype, header = _npy_header(f, str(path), stale)
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err}){stale}") from None
    if shape != (1, 1, k, k) or dtype != np.float32:
        raise DataError(
            f"{path}: kernel is {dtype} {shape}, expected float32 (1, 1, {k}, {k}){stale}"
        )
    if path.stat().st_size != header + k * k * 4:
        raise DataError(f"{path}: truncated or padded{stale}")


def verify_prepared(prepared_dir: Path) -> dict[str, Any]:
    """Check a whole prepared folder without loading it: the manifest's fields, every listed
    file's checksum, every array's shape and dtype from its header. Returns the manifest.

    The sweep runs this before Ray starts, so a damaged split fails once, here, not in every
    trial."""
    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    stale = "; rerun `dvc repro prepare`"
    for name in sorted(manifest["files"]):
        check_file(prepared_dir / name, manifest["files"][name], stale)
    for split in SPLITS:
        check_arrays(prepared_dir / f"{split}.npz", expected_arrays(manifest, split), stale)
    if PRETRAIN in manifest["files"]:
        check_arrays(prepared_dir / PRETRAIN, pool_arrays(manifest), stale)
    if KERNEL in manifest["files"]:
        check_kernel(prepared_dir / KERNEL, manifest, stale)
    return manifest


def load_split(prepared_dir: Path, split: SplitName, device: Any = "cpu") -> Split:
    """Load one split of a prepared folder, checking it against its manifest."""
    import torch

    prepared_dir = Path(prepared_dir)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    manifest = read_manifest(prepared_dir)
    stale = "; rerun `dvc repro prepare`"
    info = manifest["splits"][split]
    deg = manifest["degradation"]
    kind = deg["kind"]
    files = manifest["files"]

    path = prepared_dir / f"{split}.npz"
    check_file(path, files.get(path.name), stale)
    check_arrays(path, expected_arrays(manifest, split), stale)  # before anything is allocated
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable ({err}){stale}") from None
    allowed = set(info.get("image_indices", []))
    if not set(np.unique(arrays["image_index"]).tolist()) <= allowed:
        raise DataError(f"{path}: patches from images outside the {split} split{stale}")
    for key in ("clean", "observed"):
        arr = arrays[key]
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: array {key!r} holds NaN or infinite values{stale}")
    clean = arrays["clean"]
    if clean.size and (float(clean.min()) < 0.0 or float(clean.max()) > 1.0):
        raise DataError(f"{path}: clean patches outside [0, 1]{stale}")

    kernel = None
    if kind == "blur":
        kpath = prepared_dir / KERNEL
        check_file(kpath, files.get(KERNEL), stale)
        check_kernel(kpath, manifest, stale)
        kernel = torch.from_numpy(np.load(kpath, allow_pickle=False)).to(device)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return Split(
        name=split,
        clean=t(arrays["clean"]),
        observed=t(arrays["observed"]),
        image_index=t(arrays["image_index"]),
        degradation=dict(deg),
        mask=t(arrays["mask"]) if "mask" in arrays else None,
        kernel=kernel,
        images=list(info.get("images", [])),
    )


def check_file(path: Path, sha: str | None, stale: str) -> None:
    if not path.is_file():
        if path.exists():
            raise DataError(f"{path}: not a regular file (a folder, FIFO or device){stale}")
        raise DataError(f"{path}: missing from the prepared folder{stale}")
    if sha is None:
        raise DataError(f"{path}: not listed in {MANIFEST}{stale}")
    if sha256_file(path) != sha:
        raise DataError(f"{path}: checksum differs from {MANIFEST} (file changed){stale}")


def degrade(
    clean: torch.Tensor,
    d: Degradation,
    kernel: torch.Tensor | None,
    mask_gen: torch.Generator,
    noise_gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(A clean + noise, mask)`` for a batch of clean patches: the one place a degradation is
    applied, by ``prepare`` (one image's patches at a time) and by :func:`observe`. The mask
    (inpainting) is drawn from ``mask_gen``, the noise from ``noise_gen``."""
    import torch

    from pipeline.core.physics import build_physics

    n, c, h, w = clean.shape
    mask = None
    if d.kind == "inpainting":
        mask = (torch.rand((n, 1, h, w), generator=mask_gen) < d.mask_rate).float()
    physics = build_physics(
        d.kind,
        (c, h, w),
        noise_sigma=d.noise_sigma,
        blur_kernel=kernel,
        mask=mask,
        rng=noise_gen,
        padding=d.blur_padding,
    )
    with torch.no_grad():
        observed = physics(clean).to(torch.float32)
    return observed, mask


def observe(
    split: Split, degradation: Degradation, seed: int, trial_seed: int | None = None
) -> Split:
    """``split`` observed through another degradation: a prior's own ``degradation``.

    The clean patches are the prepared ones; blur kernel, inpainting masks and noise are drawn
    here on the CPU from ``seed`` (``data.seed``) and the split's name, so every trial of the
    prior (every estimator, every seed of the sweep) sees the same observations. With
    ``trial_seed`` (``train.seed_train_noise``, training split) the masks and noise are drawn
    from (seed, split, trial_seed) instead: each seed of the sweep trains on its own noise
    realisation, the same for every estimator of that seed.
    """
    import torch

    d = degradation
    entropy = [seed % 2**32, SPLITS.index(split.name), 0x0B5]
    if trial_seed is not None:
        entropy += [0x5EED, trial_seed % 2**32]
    streams = np.random.SeedSequence(entropy).spawn(2)
    mask_gen, noise_gen = (
        torch.Generator().manual_seed(int(s.generate_state(1, dtype=np.uint64)[0] >> 1))
        for s in streams
    )
    kernel = torch.from_numpy(make_kernel(d)) if d.kind == "blur" else None
    observed, mask = degrade(split.clean.cpu(), d, kernel, mask_gen, noise_gen)
    device = split.clean.device
    return Split(
        name=split.name,
        clean=split.clean,
        observed=observed.to(device),
        image_index=split.image_index,
        degradation=d.model_dump(mode="json"),
        mask=None if mask is None else mask.to(device),
        kernel=None if kernel is None else kernel.to(device),
        images=list(split.images),
    )
