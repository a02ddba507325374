"""Scratch folders a stage writes before it moves its results into place, named so that a later
run can tell a dead run's leftover from a live run's: ``.<out>.<kind>-<host>-<pid>-<random>``.

tmp = scratch_path(out)           # beside ``out``; removed by the stage however it ends
remove_stale_scratch(out)         # at the start: what SIGKILLed runs left
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import uuid
from pathlib import Path


def host_tag() -> str:
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def scratch_name(out_dir: Path, kind: str) -> str:
    """``.<out>.tmp-<host>-<pid>-<random>``: whose it is, so a later run can tell a dead
    run's leftover from a live run's folder."""
    return f".{out_dir.name}.{kind}-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def scratch_path(out: Path, kind: str = "tmp") -> Path:
    """A scratch folder's path beside ``out`` named as :func:`remove_stale_scratch` knows it
    (``.<out name>.<kind>-<host>-<pid>-<random>``), for any stage's temporary output."""
    return out.parent / scratch_name(out, kind)


STALE_SCRATCH_S = 24 * 3600  # another host's (or an old-style) leftover: removed after a day


def remove_stale_scratch(out_dir: Path) -> list[Path]:
    """Remove the scratch folders (``.<out>.tmp-*`` / ``.<out>.old-*``) that killed runs of a
    stage (``prepare``'s data, the report's files) left beside ``out_dir``; return them. Only
    this project's naming pattern, only real folders owned by this user, and only when their
    run is gone: a dead process of this host, or (another host, or the old naming without a
    pid) older than a day."""
    import time

    pattern = re.compile(
        rf"\.{re.escape(out_dir.name)}\.(?:tmp|old)-(?:([0-9a-f]{{6}})-(\d+)-)?[0-9a-f]{{8}}"
    )
    removed: list[Path] = []
    try:
        siblings = list(out_dir.parent.iterdir()) if out_dir.parent.is_dir() else []
    except OSError:
        return removed
    for entry in siblings:
        m = pattern.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        host, pid = m.group(1), m.group(2)
        if host == host_tag() and pid is not None:
            if int(pid) == os.getpid() or _pid_alive(int(pid)):
                continue
        elif time.time() - st.st_mtime < STALE_SCRATCH_S:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process (or unknowable): leave its folder alone
    return True
