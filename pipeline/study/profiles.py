"""Study profiles: complete params files kept in ``profiles/`` (``paper``, ``gpu-smoke``).

    rjfb profile --list              # the profiles and their trial counts
    rjfb profile paper               # validate profiles/paper.yaml, then copy it over params.yaml

``params.yaml`` stays the default 2-core study; a profile replaces it as a whole (the previous
file is kept as ``params.yaml.bak``; ``git checkout params.yaml`` restores the default), so
``dvc repro`` and ``dvc exp run`` see one ordinary params file, tracked like any other.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.study.config import StudyConfig, load_params
from pipeline.util.errors import ConfigError, did_you_mean

# the repository's profiles (an editable install or a checkout)
PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def profile_dirs() -> list[Path]:
    """Where profiles are looked up: ``./profiles`` (the checkout dvc runs in), then the
    package's own."""
    dirs = [Path.cwd() / "profiles", PROFILES]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def available() -> dict[str, Path]:
    """Profile name -> file, the first found per name."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for path in sorted(d.glob("*.yaml")):
            found.setdefault(path.stem, path)
    return found


def find_profile(name: str) -> Path:
    """The file of profile ``name``, or ``name`` itself when it is a path to a YAML file."""
    known = available()
    if name in known:
        return known[name]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    raise ConfigError(did_you_mean("profile", name, known))


def apply_profile(
    name: str, dest: str | Path = "params.yaml"
) -> tuple[Path, StudyConfig, Path | None]:
    """Validate profile ``name`` and copy it over ``dest`` (a differing ``dest`` is kept as
    ``<dest>.bak``). Returns the profile's file, its config validated where it now lies, and
    the backup written (None if none was)."""
    source = find_profile(name)
    load_params(source)  # refuse an invalid profile before touching dest
    dest = Path(dest)
    if dest.is_dir():
        raise ConfigError(f"{dest}: is a folder (expected the params file to write)")
    backup = None
    same = dest.exists() and dest.resolve() == source.resolve()
    if dest.exists() and not same and dest.read_bytes() != source.read_bytes():
        backup = dest.with_name(dest.name + ".bak")
        shutil.copyfile(dest, backup)
    if not same:
        shutil.copyfile(source, dest)
    return source, load_params(dest), backup  # relative paths now resolve against dest's folder
