"""The project's one file hash (sha256, streamed).

digest = sha256_file(Path("data/prepared/train.npz"))
digest = sha256_file(Path("models/denoiser.pt"), cached=True)   # hashed once per version
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# (path, size, mtime_ns) -> digest, for ``cached=True``
_CACHE: dict[tuple[str, int, int], str] = {}


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
