"""Tune state the project did not write is never unpickled (issue 23, root cause 1).

Before: the driver called ``tune.Tuner.restore(path)`` whenever ``Tuner.can_restore`` was true,
also after a finished sweep, and Ray unpickled ``ray_results/sweep-*/tuner.pkl``: a ``tuner.pkl``
whose ``__reduce__`` is ``os.system("touch marker")`` ran on ``python -m stages.sweep``; a
truncated ``tuner.pkl`` (``UnpicklingError``) or ``experiment_state-*.json`` (``KeyError:
'point'``) was a traceback on every rerun.

Now (one in-process sweep on a local Ray, two one-epoch trials): a finished sweep is not restored
at all (its tables come from its parent run); an interrupted one is restored only when every
state file matches the keyed digest its driver recorded in ``.rjfb/``; anything else is one line,
exit 2, naming the folder and how to start afresh, before Ray starts.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import assert_one_line_error, run_module, tiny_rjfb_sweep

STUDY: dict[str, Any] = tiny_rjfb_sweep("state", epochs=1)


class Payload:
    """Unpickles to ``os.system("touch <marker>")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, ray_session) -> dict[str, Any]:
    from pipeline.study.config import load_params
    from pipeline.study.data import prepare
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.grid import build_grid

    root = tmp_path_factory.mktemp("state")
    (root / "params.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    cfg = load_params(root / "params.yaml")
    prepare(cfg, root / "data" / "prepared", progress=False)
    trials, _ = run_sweep(cfg, root / "data" / "prepared")
    folder = Path(cfg.storage_path) / build_grid(cfg).name
    backup = root / "state-backup"
    shutil.copytree(folder, backup)
    return {"root": root, "cfg": cfg, "trials": trials, "folder": folder, "backup": backup}


def _parent(cfg: Any) -> tuple[Any, str]:
    from pipeline.sweep import tracking

    c = tracking.client(cfg.tracking_uri)
    exp = c.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    runs = c.search_runs([exp], max_results=100)
    (parent,) = [r for r in runs if tracking.PARENT not in r.data.tags]
    return c, parent.info.run_id


@pytest.fixture
def interrupted(swept: dict[str, Any]) -> Any:
    """The sweep as a killed driver leaves it: its parent run not FINISHED, its state as saved."""
    c, parent = _parent(swept["cfg"])
    c.set_terminated(parent, "KILLED")
    shutil.rmtree(swept["folder"])
    shutil.copytree(swept["backup"], swept["folder"])
    yield swept
    shutil.rmtree(swept["folder"])
    shutil.copytree(swept["backup"], swept["folder"])


def _plant(folder: Path, marker: Path) -> None:
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))


def test_the_checkout_keeps_a_private_key_and_records_the_state(swept: dict[str, Any]) -> None:
    key = swept["root"] / ".rjfb" / "state.key"
    assert key.stat().st_mode & 0o077 == 0  # the owner's only
    records = list((swept["root"] / ".rjfb" / "tune-state").glob("sweep-*.json"))
    assert len(records) == 1
    text = records[0].read_text()
    assert "tuner.pkl" in text and "experiment_state-" in text


def test_a_finished_sweep_is_not_restored(swept: dict[str, Any], tmp_path: Path) -> None:
    import pandas as pd

    from pipeline.sweep.driver import run_sweep

    marker = tmp_path / "PWNED"
    _plant(swept["folder"], marker)
    try:
        again, _ = run_sweep(swept["cfg"], swept["root"] / "data" / "prepared")
    finally:
        shutil.copy2(swept["backup"] / "tuner.pkl", swept["folder"] / "tuner.pkl")
    assert not marker.exists()
    pd.testing.assert_frame_equal(again, swept["trials"])


def test_an_interrupted_sweep_restores_its_own_state(interrupted: dict[str, Any]) -> None:
    import pandas as pd

    from pipeline.sweep.driver import run_sweep

    cfg = interrupted["cfg"]
    again, _ = run_sweep(cfg, interrupted["root"] / "data" / "prepared")
    cols = ["name", "status", "test_psnr", "mlflow_run_id"]
    pd.testing.assert_frame_equal(again[cols], interrupted["trials"][cols])
    c, parent = _parent(cfg)
    assert c.get_run(parent).info.status == "FINISHED"


def test_a_planted_tuner_pkl_is_refused_by_the_stage(
    interrupted: dict[str, Any], tmp_path: Path
) -> None:
    marker = tmp_path / "PWNED"
    _plant(interrupted["folder"], marker)
    res = run_module(
        "stages.sweep", "--params", "params.yaml", cwd=interrupted["root"], env={"RAY_ADDRESS": ""}
    )
    folder = str(interrupted["folder"])
    line = assert_one_line_error(res, "tuner.pkl differs from what this checkout wrote")
    assert folder in line and f"rm -r {folder}" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated tuner.pkl", "truncated state", "foreign file"])
def test_damaged_or_foreign_state_is_one_clean_refusal(
    interrupted: dict[str, Any], damage: str
) -> None:
    from pipeline.sweep.driver import run_sweep
    from pipeline.sweep.tunestate import TuneStateError

    folder: Path = interrupted["folder"]
    if damage == "truncated tuner.pkl":
        data = (folder / "tuner.pkl").read_bytes()
        (folder / "tuner.pkl").write_bytes(data[: len(data) // 2])
    elif damage == "truncated state":
        (state,) = folder.glob("experiment_state-*.json")
        state.write_text(state.read_text()[:200])
    else:
        (folder / "searcher-state-x.pkl").write_bytes(b"not ours")
    with pytest.raises(TuneStateError) as err:
        run_sweep(interrupted["cfg"], interrupted["root"] / "data" / "prepared")
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and "rm -r" in message, message


def test_a_folder_from_another_checkout_is_refused(
    interrupted: dict[str, Any], tmp_path: Path
) -> None:
    """The same bytes, but this checkout has no record (another key): refused."""
    from pipeline.sweep import tunestate

    other = tmp_path / "other-checkout"
    other.mkdir()
    with pytest.raises(tunestate.TuneStateError, match="no record of writing it"):
        tunestate.verify(other, str(interrupted["folder"]))


def test_rjfb_state_dir_moves_the_key_and_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary checkout (a Ray job's working dir) keeps them in ``$RJFB_STATE_DIR``."""
    from pipeline.sweep import tunestate

    monkeypatch.setenv("RJFB_STATE_DIR", str(tmp_path / "private"))
    assert tunestate.state_dir(tmp_path / "checkout") == tmp_path / "private"
    book = tunestate.StateBook(tmp_path / "checkout", "/storage/sweep-k")
    book.add({"tuner.pkl": "00"})
    assert book.path.parent == tmp_path / "private" / "tune-state"
    assert not (tmp_path / "checkout").exists()
