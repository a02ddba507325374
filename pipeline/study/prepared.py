"""The prepared-data folder's files: their names, the manifest and its checks, byte-reproducible
``.npz`` / ``.npy`` writing, and the array checks made before anything is loaded."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.util.errors import DataError
from pipeline.util.hashing import sha256_file

SplitName = Literal["train", "val", "test"]


SPLITS: tuple[SplitName, ...] = ("train", "val", "test")


MANIFEST = "manifest.json"


KERNEL = "kernel.npy"


PRETRAIN = "pretrain.npz"


FORMAT_VERSION = 1


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


def check_file(path: Path, sha: str | None, stale: str) -> None:
    if not path.is_file():
        if path.exists():
            raise DataError(f"{path}: not a regular file (a folder, FIFO or device){stale}")
        raise DataError(f"{path}: missing from the prepared folder{stale}")
    if sha is None:
        raise DataError(f"{path}: not listed in {MANIFEST}{stale}")
    if sha256_file(path) != sha:
        raise DataError(f"{path}: checksum differs from {MANIFEST} (file changed){stale}")
