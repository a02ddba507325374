"""Image sources: the photographs bundled with scikit-image, or a folder of image files,
read, size-checked and converted to gray or RGB floats in [0, 1]."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.util.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


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
