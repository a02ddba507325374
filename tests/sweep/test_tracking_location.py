"""MLflow data lands inside the project, whatever its path holds and wherever the sweep starts
(issue 23, root cause 3).

Before: ``StudyConfig.tracking_uri`` was ``sqlite:///{root}/mlflow.db`` unescaped, so in a clone
at ``<dir>/p?x`` SQLAlchemy opened ``<dir>/p`` (``?`` starts a query, ``%41`` decodes to ``A``)
and the preflight check parsed it the same way; the experiment had no artifact location, so
artifacts went to ``./mlruns`` of the working directory, recorded in the experiment for good.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from helpers import TINY

# every character that changes how a URI is read: a query, a fragment, an escape, a space, unicode
ODD = ("p?x", "q#y", "r%41 s ü")


def test_a_checkout_at_an_odd_path_keeps_mlflow_inside_it(tmp_path: Path) -> None:
    from pipeline.study.config import load_params
    from pipeline.sweep import preflight, tracking

    root = tmp_path.joinpath(*ODD)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    cfg = load_params(root / "params.yaml")
    assert preflight.sqlite_path(cfg.tracking_uri) == root / "mlflow.db"  # what preflight checks
    preflight.check_services(cfg)

    here = Path.cwd()
    os.chdir(elsewhere)  # a sweep started from another directory
    try:
        exp = tracking.ensure_experiment(cfg.tracking_uri, "odd", cfg.artifact_location)
        c = tracking.client(cfg.tracking_uri)
        run = c.create_run(exp)
        note = tmp_path / "note.txt"
        note.write_text("hello")
        c.log_artifact(run.info.run_id, str(note))
    finally:
        os.chdir(here)

    assert (root / "mlflow.db").is_file()
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")}
    outside = {
        p
        for p in made
        if not p.startswith(("/".join(ODD), "note.txt")) and p not in ("p?x", "p?x/q#y")
    }
    assert outside == {"cwd"}, outside  # nothing beside the checkout, nothing under the cwd
    artifacts = root / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt"
    assert artifacts.read_text() == "hello"
    assert c.get_experiment(exp).artifact_location == (root / "mlartifacts").as_uri()


def test_relative_sqlite_and_folder_stores_resolve_inside_the_checkout(tmp_path: Path) -> None:
    from pipeline.study.config import load_params
    from pipeline.sweep import preflight

    root = tmp_path / "a?b #%41"
    root.mkdir()
    params = {**TINY, "mlflow": {"experiment": "x", "tracking_uri": "sqlite:///store/m.db"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_params(root / "params.yaml")
    assert preflight.sqlite_path(cfg.tracking_uri) == root / "store" / "m.db"
    assert cfg.artifact_location == (root / "store" / "mlartifacts").as_uri()
    params["mlflow"]["tracking_uri"] = "store/files"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cfg = load_params(root / "params.yaml")
    assert cfg.tracking_uri == (root / "store" / "files").as_uri()
    assert cfg.artifact_location is None  # a file store keeps artifacts in itself
