"""The project's one file hash (sha256, streamed).

digest = sha256_file(Path("data/prepared/train.npz"))
digest = sha256_file(Path("models/denoiser.pt"), cached=True)   # hashed once per version
digest = keyed_digest(key, "tuner.pkl", open(path, "rb"))           # HMAC: who wrote it
key = sha256_hex(json.dumps(payload, sort_keys=True), 16)           # names and keys
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import BinaryIO

# (path, size, mtime_ns) -> digest, for ``cached=True``
_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_hex(data: str | bytes, length: int | None = None) -> str:
    """The hex sha256 of ``data`` (text as UTF-8), cut to ``length`` characters: the project's
    trial keys, grid keys, experiment names and digests of small blobs."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    digest = hashlib.sha256(raw).hexdigest()
    return digest if length is None else digest[:length]


def sha256_file(path: Path, *, cached: bool = False) -> str:
    """The hex sha256 of a file's bytes (``OSError`` if it cannot be read).

    ``cached``: reuse the digest of the same (path, size, mtime), for files hashed again and
    again that only change by being rewritten (the weights file in every trial key of a sweep).
    Integrity checks leave it off: they must read the bytes they vouch for.
    """
    key = None
    if cached:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _CACHE:
            return _CACHE[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if key is not None:
        _CACHE[key] = digest
    return digest


def keyed_digest(key: bytes, label: str, stream: BinaryIO) -> str:
    """The hex HMAC-SHA256 under ``key`` of ``label`` and the bytes of ``stream`` (read to its
    end). Only a holder of the key can produce it: it vouches that this project wrote the bytes
    under that name (the label binds them to it: a file cannot stand in for another)."""
    h = hmac.new(key, label.encode("utf-8") + b"\0", hashlib.sha256)
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Constant-time comparison of two hex digests."""
    return hmac.compare_digest(a.encode(), b.encode())
