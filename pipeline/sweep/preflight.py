"""Checks the sweep runs before Ray starts: the tracking store, the storage path, the prepared
data against ``params.yaml`` (stale data), and the verdict on a sweep whose trials all failed.

Each failure is one line (:class:`~pipeline.util.errors.UserError`, exit 2) naming the key or
file; nothing is written before these pass.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline.study.config import StudyConfig
from pipeline.util.errors import ConfigError, DataError

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_services(cfg: StudyConfig) -> None:
    """The tracking store and the storage path are usable (the driver calls this before Ray)."""
    check_tracking_store(cfg.tracking_uri)
    check_storage_path(cfg.storage_path)


def check_tracking_store(uri: str) -> None:
    """A local MLflow store (``sqlite:`` or a file store) can be opened and written as one.

    HTTP servers are checked by :func:`pipeline.sweep.tracking.check_reachable`."""
    key = "mlflow.tracking_uri"
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"{key}: {uri!r} is not a sqlite:///<path> URI")
        _check_sqlite(sqlite_path(uri, key), key)
    elif uri.startswith("file:") or "://" not in uri:
        path = Path(unquote(urlsplit(uri).path)) if uri.startswith("file:") else Path(uri)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{key}: {path} is not a folder (an MLflow file store is a folder)")
        _check_writable(path, key)


def sqlite_path(uri: str, key: str = "mlflow.tracking_uri") -> Path:
    """The database file an ``sqlite:///`` URI opens, parsed by SQLAlchemy itself (which MLflow
    uses): the path checked is the path written, whatever ``?``, ``#`` or ``%XX`` it holds."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(uri).database
    except (ArgumentError, ValueError) as err:
        raise ConfigError(f"{key}: {uri!r} is not a valid SQLite URI ({err})") from None
    if not database or database == ":memory:":
        raise ConfigError(f"{key}: {uri!r} names no database file")
    return Path(database)


def _check_sqlite(path: Path, key: str) -> None:
    if path.is_dir():
        raise ConfigError(f"{key}: {path} is a folder, not an MLflow SQLite database")
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{key}: {path} is not a regular file (expected an SQLite database)")
        try:
            with open(path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as err:
            raise ConfigError(f"{key}: {path}: cannot be read ({err.strerror or err})") from None
        if head and head != SQLITE_MAGIC:
            raise ConfigError(
                f"{key}: {path} is not an SQLite database (move it away, or point "
                "mlflow.tracking_uri elsewhere)"
            )
        if head:
            tables = _sqlite_tables(path, key)
            if tables and "experiments" not in tables:
                raise ConfigError(
                    f"{key}: {path} is an SQLite database but not an MLflow store (it has no "
                    "experiments table); point mlflow.tracking_uri elsewhere"
                )
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{key}: {path} is read-only (MLflow writes the database and its journal beside it)"
            )
        return
    _check_writable(path, key)


def _sqlite_tables(path: Path, key: str) -> set[str]:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("select name from sqlite_master where type = 'table'").fetchall()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ConfigError(f"{key}: {path} is not a usable SQLite database ({err})") from None
    return {r[0] for r in rows}


def _check_writable(path: Path, key: str) -> None:
    probe = path if path.exists() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: {path} cannot be created ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {path} cannot be written (no write permission in {probe})")


def check_storage_path(storage_path: str) -> None:
    """A local ``ray.storage_path`` is a folder, or can be created as one."""
    if "://" in storage_path and not storage_path.startswith("file://"):
        return  # s3://, gs://: Ray checks it
    path = Path(storage_path.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"ray.storage_path: {path} exists and is not a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"ray.storage_path: {path} cannot be created ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"ray.storage_path: {path} cannot be written (no write permission in {probe})"
        )


# --------------------------------------------------------------------------- stale data


def manifest_data(manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` section the prepared data was made with, from its (checked) manifest."""
    splits = manifest["splits"]
    pool = manifest.get("pretrain") or {}  # absent: prepared before the pretraining crops
    return {
        "source": manifest.get("source"),
        "seed": manifest.get("seed"),
        "color": manifest.get("color"),
        "patch_size": manifest["patch_size"],
        "patches_per_image": manifest.get("patches_per_image"),
        "train_images": len(splits["train"].get("images", [])),
        "val_images": len(splits["val"].get("images", [])),
        "test_images": len(splits["test"].get("images", [])),
        "pretrain_patches": pool.get("patches"),
        "pretrain_patch_size": pool.get("patch_size"),
        "degradation": manifest["degradation"],
    }


def _flat(tree: dict[str, Any], prefix: str = "data.") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def data_differences(cfg: StudyConfig, manifest: dict[str, Any]) -> list[str]:
    """``key: <prepared> prepared, <params> in params.yaml`` for each data key that differs."""
    from pipeline.study.config import Degradation

    want = cfg.data.model_dump(mode="json")
    if want["source"] != "bundled":
        want["source"] = str(cfg.resolve(want["source"]))
    have = manifest_data(manifest)
    # read_manifest validated it; normalised, it compares like with like
    have["degradation"] = Degradation.model_validate(have["degradation"]).model_dump(mode="json")
    a, b = _flat(have), _flat(want)
    return [
        f"{k}: {a.get(k)!r} prepared, {b.get(k)!r} in params.yaml" for k in b if a.get(k) != b[k]
    ]


def stale_checked(cfg: StudyConfig, prepared: Path, *, allow_stale: bool = False) -> StudyConfig:
    """:func:`check_data_matches` against ``prepared``'s manifest; ``cfg`` unchanged when there
    is no manifest yet (the driver's own check says what is missing)."""
    from pipeline.study.data import MANIFEST, read_manifest

    if not (Path(prepared) / MANIFEST).exists():
        return cfg
    manifest = read_manifest(prepared)
    return check_data_matches(cfg, prepared, manifest, allow_stale=allow_stale)


def check_data_matches(
    cfg: StudyConfig, prepared: Path, manifest: dict[str, Any], *, allow_stale: bool = False
) -> StudyConfig:
    """The study config the sweep runs with: ``cfg`` when its ``data`` section is what the
    prepared data was made from. Otherwise refused (DataError), unless ``allow_stale``: then
    ``cfg`` with the prepared data's own ``data`` section, so every trial, its MLflow parameters
    and the sweep's key record the data that was actually used."""
    diffs = data_differences(cfg, manifest)
    if not diffs:
        return cfg
    if not allow_stale:
        more = f" (+{len(diffs) - 2} more)" if len(diffs) > 2 else ""
        raise DataError(
            f"{prepared}: made with a different data section than params.yaml "
            f"({'; '.join(diffs[:2])}{more}): rerun `dvc repro prepare`, or pass "
            "--allow-stale-data to sweep the prepared data as it is (its own data parameters are "
            "then recorded)"
        )
    from pipeline.study.config import parse_params

    raw = cfg.model_dump(mode="json")
    raw["data"] = {k: v for k, v in manifest_data(manifest).items() if v is not None}
    try:
        return parse_params(raw, label=f"{prepared}/manifest.json").with_root(cfg.root)
    except ConfigError as err:
        raise DataError(f"the prepared data does not fit params.yaml: {err}") from None


# --------------------------------------------------------------------------- verdict


def all_failed(trials: Any) -> str | None:
    """A one-line verdict when no trial of the sweep ran to its end (every one ``failed``: an
    error, not a divergence), else None."""
    if len(trials) == 0:
        return "the sweep ran no trials"
    status = trials["status"]
    if (status == "failed").all():
        first = str(trials["status_reason"].iloc[0]).strip().splitlines()
        why = (first[0] if first else "unknown")[:300]
        return (
            f"all {len(trials)} trials failed (first: {trials['name'].iloc[0]}: {why}); see the "
            "sweep's MLflow runs or Ray's trial logs"
        )
    return None
