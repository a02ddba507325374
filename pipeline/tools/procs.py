"""Processes a tool or a test starts and must stop itself: by their own process group.

A :class:`ProcessGroup` runs a command in its own session, so stopping it (SIGTERM, a grace
period, then SIGKILL to the group) also stops everything it spawned: a Ray node's raylet and
workers, an MLflow server's gunicorn workers. Nothing here ever stops processes it did not
start (no machine-wide ``ray stop``); :func:`kill_strays` only matches processes whose working
directory or command line lies in a fresh temporary folder of the caller.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class ProcessGroup:
    """A command started in its own session, stopped (with all it spawned) by its group id."""

    def __init__(
        self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.cmd = cmd
        self.log = log
        self._fh = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the group, wait up to ``grace_s`` for all of it to exit, then SIGKILL."""
        self.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and group_alive(self.proc.pid):
            time.sleep(0.2)
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._fh.close()

    def tail(self, n: int = 4000) -> str:
        """The last ``n`` characters of the command's output so far."""
        self._fh.flush()
        return self.log.read_text(errors="replace")[-n:]


def stop_all(groups: list[ProcessGroup], grace_s: float = 5.0) -> None:
    """SIGTERM every group, give them ``grace_s`` together, then SIGKILL what is left."""
    for g in groups:
        g.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(group_alive(g.pid) for g in groups):
        time.sleep(0.2)
    for g in groups:
        g.stop(grace_s=0)


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists (Linux ``/proc``)."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    return True
            except (ProcessLookupError, PermissionError):
                continue
    return False


def kill_strays(folder: Path) -> list[int]:
    """SIGKILL processes whose working dir or command line lies in ``folder`` (a fresh temporary
    folder of the caller: a Ray job's driver runs in its own session, in a working dir under
    the node's temp folder). Never this process or its parent. Returns the PIDs killed."""
    mine = {os.getpid(), os.getppid()}
    mark = str(folder)
    killed = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in mine:
            continue
        try:
            cwd = os.readlink(d / "cwd")
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(mark) or mark in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(d.name), signal.SIGKILL)
                killed.append(int(d.name))
    return killed


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
