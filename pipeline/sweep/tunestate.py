"""Ray Tune's experiment state: signed by the driver that writes it, verified before Tune loads it.

Tune restores an experiment by unpickling files of its folder under ``ray.storage_path``:
``tuner.pkl``, ``experiment_state-*.json`` (whose trials hold cloudpickled parts), a search
algorithm's or callbacks' state, a trial's ``error.pkl``. That folder is shared storage, untrusted
(docs/threat-model.md): a planted ``tuner.pkl`` would run its code in the driver. So

* the checkout keeps a secret key, ``<repo>/.rjfb/state.key`` (made on first use, mode 0600,
  git-ignored; ``<repo>`` is the directory of params.yaml, never the storage; ``$RJFB_STATE_DIR``
  replaces ``<repo>/.rjfb`` where the checkout is temporary, as a Ray job's working dir is), and
  for each Tune experiment a record ``.rjfb/tune-state/<experiment>-<path digest>.json`` of the
  keyed digests (HMAC-SHA256 of name and bytes, :func:`pipeline.util.hashing.keyed_digest`) of
  every state file the driver wrote: ``tuner.pkl`` as soon as the Tuner wrote it
  (:func:`record_tuner`), the others from Tune's private staging folder on the driver each time
  Tune saves them, before they are copied to the storage (:class:`SignState`, a Tune callback)
  and once more when ``fit`` returns (:func:`sign_staged`);
* before ``Tuner.restore`` (:func:`verify`), every file Tune may load from the folder (each
  top-level file, each trial folder's ``*.pkl``) must match a digest recorded under its name.
  Anything else — a file the project did not write, a truncated or damaged one, a folder this
  checkout has no record of — is refused with one line (exit 2) naming the folder and how to
  start afresh, and Tune never reads it.

A writer who changes the storage *while* the driver runs (between Tune's save and the copy) is
out of scope: the promise is about state found in the folder, not about a concurrent attacker.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.util.errors import UserError
from pipeline.util.hashing import keyed_digest, same_digest, sha256_hex

STATE_DIR = ".rjfb"
STATE_DIR_ENV = "RJFB_STATE_DIR"
KEY_FILE = "state.key"
TUNER_PKL = "tuner.pkl"
# written by Ray to probe the storage; Ray only checks that it exists, never reads it
IGNORED = frozenset({".validate_storage_marker"})
KEEP = 8  # digests kept per file name: the storage may still hold an earlier save's copy


class TuneStateError(UserError):
    """A Tune experiment folder holds state this checkout did not write (or damaged state)."""


# --------------------------------------------------------------------------- key and record


def state_dir(root: Path) -> Path:
    """Where the key and the records live: ``$RJFB_STATE_DIR``, else ``<root>/.rjfb``."""
    configured = os.environ.get(STATE_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(root) / STATE_DIR


_KEYS: dict[Path, bytes] = {}  # state folder -> its key, read once per process


def _key(root: Path) -> bytes:
    """This checkout's secret key (made once: 32 random bytes, readable by its owner only)."""
    folder = state_dir(root)
    if folder in _KEYS:
        return _KEYS[folder]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / KEY_FILE
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    text = path.read_text().strip()
    if len(text) != 64:
        raise TuneStateError(
            f"{path}: not a key this project made (64 hex characters); remove it and the "
            f"Ray Tune folders of this checkout's sweeps to start afresh"
        )
    _KEYS[folder] = bytes.fromhex(text)
    return _KEYS[folder]


class StateBook:
    """The record of one Tune experiment's signed state files (``label -> [digest, …]``)."""

    def __init__(self, root: Path, experiment: str) -> None:
        self.root = Path(root)
        self.experiment = experiment.rstrip("/")
        name = self.experiment.rsplit("/", 1)[-1]
        tag = sha256_hex(self.experiment, 12)
        self.path = state_dir(self.root) / "tune-state" / f"{name}-{tag}.json"
        self._seen: dict[str, tuple[int, int]] = {}  # label -> (size, mtime_ns) signed last

    def load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("experiment") != self.experiment:
            return {}
        files = data.get("files")
        return files if isinstance(files, dict) else {}

    def add(self, digests: dict[str, str]) -> None:
        """Record ``digests`` (the newest last), atomically."""
        if not digests:
            return
        files = self.load()
        for label, digest in digests.items():
            kept = [d for d in files.get(label, []) if d != digest]
            files[label] = [*kept, digest][-KEEP:]
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"experiment": self.experiment, "files": files}, indent=1))
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------- sign


def _sign_local(book: StateBook, folder: Path) -> None:
    """Sign the state files in ``folder`` (Tune's staging copy, on this machine) that changed
    since they were last signed: each top-level file and each trial folder's ``*.pkl``."""
    key = _key(book.root)
    new: dict[str, str] = {}
    for label, path in _local_state_files(folder):
        try:
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if book._seen.get(label) == stamp:
                continue
            with open(path, "rb") as f:
                new[label] = keyed_digest(key, label, f)
            book._seen[label] = stamp
        except OSError:  # Tune replaced it meanwhile: the next save signs the new one
            continue
    book.add(new)


def _local_state_files(folder: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        if e.name in IGNORED or e.name.startswith("tmp-"):  # tmp-: Tune's own atomic writes
            continue
        if e.is_file(follow_symlinks=False):
            out.append((e.name, Path(e.path)))
        elif e.is_dir(follow_symlinks=False):
            with contextlib.suppress(OSError):
                for f in os.scandir(e.path):
                    if f.name.endswith(".pkl") and f.is_file(follow_symlinks=False):
                        out.append((f"{e.name}/{f.name}", Path(f.path)))
    return out


# experiment name -> (its book, Tune's staging folder once known), for the running driver
_ACTIVE: dict[str, list[Any]] = {}


def activate(root: Path, experiment: str) -> None:
    """Sign what Tune saves for ``experiment`` (its storage path) from now on in this driver."""
    name = experiment.rstrip("/").rsplit("/", 1)[-1]
    _ACTIVE[name] = [StateBook(root, experiment), None]


class SignState(Callback):
    """Tune callback (on the driver): after each step, when Tune has just saved its state to
    its staging folder, sign what changed there. Pickled into ``tuner.pkl`` by Tune, so it holds
    the experiment's name only (never the key, never a path to it)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _sign(self, trials: list[Any]) -> None:
        entry = _ACTIVE.get(self.name)
        if entry is None or not trials:
            return
        entry[1] = trials[0].storage.experiment_driver_staging_path
        _sign_local(entry[0], Path(entry[1]))

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._sign(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._sign(trials)


def sign_staged(experiment: str) -> None:
    """Sign the staging folder once more after ``fit`` returned (its last save)."""
    entry = _ACTIVE.get(experiment.rstrip("/").rsplit("/", 1)[-1])
    if entry is not None and entry[1] is not None:
        _sign_local(entry[0], Path(entry[1]))


def record_tuner(root: Path, experiment: str) -> None:
    """Sign ``tuner.pkl``, which the Tuner (re)wrote straight to the storage a moment ago."""
    fs, base = _fs(experiment)
    with fs.open_input_stream(f"{base}/{TUNER_PKL}") as f:
        digest = keyed_digest(_key(root), TUNER_PKL, f)
    StateBook(root, experiment).add({TUNER_PKL: digest})


# --------------------------------------------------------------------------- verify


def _fs(experiment: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if "://" in experiment and not experiment.startswith("file://"):
        fs, base = pafs.FileSystem.from_uri(experiment)
        return fs, base.rstrip("/")
    return pafs.LocalFileSystem(), experiment.removeprefix("file://").rstrip("/")


def exists(experiment: str) -> bool:
    """Whether the Tune experiment folder (local or a URI) exists."""
    import pyarrow.fs as pafs

    fs, base = _fs(experiment)
    return fs.get_file_info(base).type != pafs.FileType.NotFound


def _stored_state_files(experiment: str) -> tuple[Any, list[tuple[str, str]]]:
    import pyarrow.fs as pafs

    fs, base = _fs(experiment)
    out = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=False)):
        if info.base_name in IGNORED:
            continue
        if info.type == pafs.FileType.Directory:
            for sub in fs.get_file_info(pafs.FileSelector(info.path, recursive=False)):
                if sub.base_name.endswith(".pkl") and sub.type != pafs.FileType.Directory:
                    out.append((f"{info.base_name}/{sub.base_name}", sub.path))
        else:
            out.append((info.base_name, info.path))
    return fs, out


def verify(root: Path, experiment: str) -> None:
    """Refuse (:class:`TuneStateError`) unless every state file Tune may load from
    ``experiment`` matches a digest this checkout recorded under its name."""
    files = StateBook(root, experiment).load()
    fs, stored = _stored_state_files(experiment)
    labels = {label for label, _ in stored}
    if not files:
        _refuse(experiment, "this checkout has no record of writing it")
    if TUNER_PKL not in labels:
        _refuse(experiment, f"{TUNER_PKL} is missing")
    key = _key(root)
    for label, path in sorted(stored):
        if label not in files:
            _refuse(experiment, f"{label} was not written by this checkout's sweeps")
        try:
            with fs.open_input_stream(path) as f:
                digest = keyed_digest(key, label, f)
        except OSError as err:
            _refuse(experiment, f"{label} cannot be read ({err})")
        if not any(same_digest(digest, d) for d in files[label] if isinstance(d, str)):
            _refuse(
                experiment, f"{label} differs from what this checkout wrote (changed or damaged)"
            )


def _refuse(experiment: str, why: str) -> None:
    local = "://" not in experiment or experiment.startswith("file://")
    how = (
        f"rm -r {shlex.quote(experiment.removeprefix('file://'))}"
        if local
        else f"delete {experiment}"
    )
    raise TuneStateError(
        f"{experiment}: Ray Tune state not loaded: {why}; {how} to start this sweep afresh "
        "(its trials run again, under a new MLflow parent run)"
    )
