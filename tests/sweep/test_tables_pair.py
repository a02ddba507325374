"""The results tables appear as a pair or not at all, and the parent run is FINISHED only once
they exist (issue 23, root cause 4).

Before: ``write_tables`` renamed ``trials.parquet`` into place before ``history.parquet`` was
written; on a full disk a truncated ``.history.parquet.tmp`` stayed, the error was a traceback,
and the sweep's MLflow parent run had already ended FINISHED. Reproduced here on a real small
filesystem (a 512 KiB tmpfs) and under a real file-size limit (``RLIMIT_FSIZE``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO, small_filesystem


def _tables(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)  # random floats: parquet cannot compress them away
    trials = pd.DataFrame({"name": ["a", "b"], "status": ["finished", "finished"]})
    history = pd.DataFrame({"name": ["a"] * rows, "val_psnr": rng.random(rows)})
    return trials, history


def _old_pair(out: Path) -> dict[str, bytes]:
    from pipeline.sweep.results import write_tables

    old_trials, old_history = _tables(3)
    write_tables(old_trials, old_history, out)
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_full_disk_leaves_the_old_pair_no_temp_files_and_a_failed_parent(
    tmp_path: Path,
) -> None:
    from pipeline.sweep import tracking
    from pipeline.sweep.driver import Attempt, finish_attempt
    from pipeline.util.errors import DataError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = tracking.ensure_experiment(uri, "pair", (tmp_path / "mlartifacts").as_uri())
    parent = tracking.parent_run(uri, exp, "k", "sweep-k", {}, resume=False)
    attempt = Attempt(uri, tracking.client(uri), exp, parent, False, {})
    trials, history = _tables(200_000)  # ~1.6 MB of history: cannot fit
    with small_filesystem("512k", tmp_path) as disk:
        out = disk / "reports"
        before = _old_pair(out)
        with pytest.raises(DataError) as err:
            finish_attempt(attempt, trials, history, out)
        after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # the previous pair, byte for byte; no temporary file
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message, message
    run = tracking.client(uri).get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags[tracking.STATUS] == "failed"
    assert "No space left" in run.data.tags[tracking.REASON]


def test_the_pair_is_replaced_together_when_it_fits(tmp_path: Path) -> None:
    from pipeline.sweep.results import write_tables

    out = tmp_path / "reports"
    _old_pair(out)
    (out / ".history.parquet.tmp").write_bytes(b"a killed writer's leftover")
    trials, history = _tables(50)
    write_tables(trials, history, out)
    assert sorted(p.name for p in out.iterdir()) == ["history.parquet", "trials.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "history.parquet"), history)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "trials.parquet"), trials)


def test_a_file_size_limit_gives_one_line_and_leaves_the_old_pair(tmp_path: Path) -> None:
    """The same under ``ulimit -f`` (no root needed): a process whose writes stop at 256 KiB."""
    out = tmp_path / "reports"
    before = _old_pair(out)
    script = textwrap.dedent(
        f"""
        import resource, sys
        import numpy as np, pandas as pd
        from pathlib import Path
        from pipeline.sweep.results import write_tables
        from pipeline.util.cli import run_cli
        rng = np.random.default_rng(0)
        trials = pd.DataFrame({{"name": ["a"], "status": ["finished"]}})
        history = pd.DataFrame({{"val_psnr": rng.random(200_000)}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, 1 << 18))
        sys.exit(run_cli(lambda argv: write_tables(trials, history, Path({str(out)!r}))))
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert "File too large" in lines[0], lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
