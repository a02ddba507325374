"""Shipping prepared data and weights files to the nodes through Ray's object store.

Each node unpacks one copy into a local cache keyed by content, so no node but the driver's needs
the files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.study.config import StudyConfig
from pipeline.sweep.cluster import in_ray_job
from pipeline.util.errors import ConfigError, DataError
from pipeline.util.hashing import sha256_hex

DATA_CACHE_ENV = "RJFB_DATA_CACHE"


@dataclass(frozen=True)
class PreparedBundle:
    """A prepared-data folder as bytes, shipped to trials through Ray's object store."""

    digest: str
    files: dict[str, bytes] = field(repr=False)


@dataclass(frozen=True)
class WeightsBundle:
    """The sweep's PnP weights files as bytes, shipped to trials like the prepared data.

    ``priors``: each PnP prior with a weights file -> the sha256 of that file; ``files``: each
    distinct file once, by sha256 -> (file name, content).
    """

    priors: dict[str, str]
    files: dict[str, tuple[str, bytes]] = field(repr=False)


def pack_prepared(prepared: Path) -> PreparedBundle:
    """The manifest and the files it lists that trials read, as bytes (checked again where
    they are unpacked). The pretraining crops stay behind: only the pretrain stage reads them,
    and at paper scale they are hundreds of MB per node."""
    from pipeline.study.data import MANIFEST, PRETRAIN, read_manifest

    manifest = read_manifest(prepared)
    names = [MANIFEST, *sorted(n for n in manifest.get("files", {}) if n != PRETRAIN)]
    files = {}
    for name in names:
        path = prepared / name
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in the manifest); rerun `dvc repro prepare`")
        files[name] = path.read_bytes()
    digest = sha256_hex(files[MANIFEST], 16)
    return PreparedBundle(digest, files)


def data_cache_dir() -> Path:
    """Where nodes unpack shipped data: ``$RJFB_DATA_CACHE``, else the system temp folder."""
    base = os.environ.get(DATA_CACHE_ENV) or tempfile.gettempdir()
    return Path(base) / "rjfb-prepared"


def materialize(bundle: PreparedBundle, cache: Path | None = None) -> Path:
    """Unpack a bundle once per node (atomic rename; concurrent trials agree on one copy)."""
    return _unpack(cache or data_cache_dir(), bundle.digest, bundle.files)


def _unpack(cache: Path, digest: str, files: Mapping[str, bytes]) -> Path:
    """``files`` in ``cache/digest``, written once: a folder appears there only complete."""
    from pipeline.study.data import plain_name

    for name in (digest, *files):  # read_manifest confines the names; never trust a bundle blindly
        if not plain_name(name):
            raise DataError(f"{str(name)[:80]!r}: not a plain file name; refusing to unpack it")
    dest = cache / digest
    if all((dest / name).is_file() for name in files):
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=cache))
    try:
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
        try:
            tmp.rename(dest)
        except OSError:  # another trial on this node unpacked it first
            if not all((dest / name).is_file() for name in files):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _weights_priors(cfg: StudyConfig) -> list[str]:
    """The sweep's PnP priors that load a weights file."""
    from pipeline.study.config import PnPPrior

    names = sorted({t.prior for t in cfg.trials()})
    return [n for n in names if isinstance(cfg.priors[n], PnPPrior) and cfg.priors[n].weights]


def check_weights(cfg: StudyConfig, prepared: Path) -> None:
    """Build every PnP prior's denoiser of the sweep and load its weights on the driver, for the
    channel count of the prepared data: a missing or mismatched file fails here, in one line
    naming the prior and the file, before Ray or MLflow start."""
    from pipeline.study.config import PnPPrior
    from pipeline.study.data import MANIFEST, read_manifest

    priors = sorted({t.prior for t in cfg.trials()})
    pnp = [n for n in priors if isinstance(cfg.priors[n], PnPPrior)]
    if not pnp:
        return  # no torch / deepinv import for a wavelet-only sweep
    try:
        channels = int(read_manifest(prepared)["channels"])
    except (KeyError, TypeError, ValueError):
        raise DataError(
            f"{Path(prepared) / MANIFEST}: incomplete manifest (no channels); rerun "
            "`dvc repro prepare`"
        ) from None
    from pipeline.study.build import check_denoisers

    try:
        check_denoisers(cfg, channels=channels, priors=pnp)
    except ConfigError as err:
        if "does not exist" not in str(err):
            raise
        if in_ray_job():
            hint = (
                "Ray does not upload .gitignore'd paths such as models/ with a job: point the "
                "prior's weights at shared storage, or see docs/cluster.md"
            )
        else:
            hint = "run `dvc repro pretrain`, or point the prior's weights at an existing file"
        raise ConfigError(f"{err} ({hint})") from None


def pack_weights(cfg: StudyConfig) -> WeightsBundle | None:
    """The sweep's PnP weights files as bytes (None: no prior loads one). A file that cannot be
    read is left out: its trials then fail with the loader's own message."""
    priors: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for name in _weights_priors(cfg):
        path = cfg.resolve(cfg.priors[name].weights)  # type: ignore[union-attr,arg-type]
        try:
            blob = path.read_bytes()
        except OSError:
            continue
        sha = sha256_hex(blob)
        files.setdefault(sha, (path.name or "weights", blob))
        priors[name] = sha
    return WeightsBundle(priors, files) if priors else None


def weights_cache_dir() -> Path:
    """Where nodes unpack shipped weights: beside the shipped data (``$RJFB_DATA_CACHE``)."""
    return data_cache_dir().with_name("rjfb-weights")


def materialize_weights(bundle: WeightsBundle, cache: Path | None = None) -> dict[str, Path]:
    """Unpack each shipped weights file once per node; each prior -> its local copy.

    A cached copy whose content no longer matches its sha256 is refused (DataError)."""
    cache = cache or weights_cache_dir()
    local: dict[str, Path] = {}
    for sha, (name, blob) in bundle.files.items():
        path = _unpack(cache, sha[:32], {name: blob}) / name
        if sha256_hex(path.read_bytes()) != sha:
            raise DataError(
                f"{path}: cached weights differ from the shipped file (delete {path.parent})"
            )
        local[sha] = path
    return {prior: local[sha] for prior, sha in bundle.priors.items()}


def localize_weights(
    study: StudyConfig, bundle: WeightsBundle | None, cache: Path | None = None
) -> StudyConfig:
    """``study`` with each shipped prior's ``weights`` pointing at this node's copy."""
    if bundle is None:
        return study
    local = materialize_weights(bundle, cache)
    priors = dict(study.priors)
    for name, path in local.items():
        priors[name] = priors[name].model_copy(update={"weights": str(path)})
    return study.model_copy(update={"priors": priors})  # keeps the root
