"""Output paths checked before any work: a stage that would fail to write its results finds out
in its first second, with one line naming the path.

check_output_dir(Path("reports"), "--out")
check_output_file(Path("models/denoiser.pt"), "--out")
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.util.errors import UserError


def _creatable(path: Path, label: str) -> None:
    """``path`` (absent) could be created: its nearest existing ancestor is a writable folder."""
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label} {path}: cannot be created ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{label} {path}: cannot be created (no write permission in {parent})")


def check_output_dir(path: Path, label: str) -> None:
    """``path`` is a writable folder, or can be created as one."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(
                f"{label} {path}: exists and is not a folder (expected an output folder)"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{label} {path}: no write permission")
        return
    _creatable(path, label)


def check_output_file(
    path: Path, label: str, *, not_same_as: dict[str, Path] | None = None
) -> None:
    """``path`` can be written as a file (absent, or a regular writable file), and is none of
    ``not_same_as`` (other outputs of the same run: one would overwrite the other)."""
    path = Path(path)
    for what, other in (not_same_as or {}).items():
        if os.path.abspath(other) == os.path.abspath(path):
            raise UserError(
                f"{label} {path}: is also where the {what} would go (one would overwrite the "
                "other); choose another name"
            )
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise UserError(f"{label} {path}: is a folder (expected a file path)")
        if not path.is_file():
            raise UserError(
                f"{label} {path}: is not a regular file (a device, FIFO or broken link)"
            )
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise UserError(f"{label} {path}: no write permission in {path.parent}")
        return
    _creatable(path, label)
