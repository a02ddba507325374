"""``stages.report``: the report stage's command line and its interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from builders import assert_plot_files

PARAMS = """\
priors:
  l1: {type: wavelet}
sweep:
  priors: [l1]
  estimators: [deq, rjfb]
report:
  quality_margin_db: 0.05
"""


def test_cli_writes_the_report_from_parquet(tables, tmp_path, capsys):
    from stages.report import main

    trials, history = (t[t["name"].str.startswith("l1-")] for t in tables)
    (tmp_path / "params.yaml").write_text(PARAMS)
    trials.to_parquet(tmp_path / "trials.parquet")
    history.to_parquet(tmp_path / "history.parquet")
    out = tmp_path / "reports"
    argv = [
        f"--params={tmp_path / 'params.yaml'}",
        f"--trials={tmp_path / 'trials.parquet'}",
        f"--history={tmp_path / 'history.parquet'}",
        f"--out={out}",
    ]
    # an absent denoiser metrics file says nothing (no pretrain stage ran)
    assert main([*argv, f"--denoiser-metrics={tmp_path / 'none.json'}"]) == 0
    assert str(out / "ablation.md") in capsys.readouterr().out
    assert_plot_files(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["priors"]["l1"]["rjfb_k5_t5_verdict"] == "equivalent"
    assert metrics["deq_unreliable_frac"] == 0.1
    assert metrics["denoiser_allow_weak"] is None
    assert len(pd.read_parquet(out / "configs.parquet")) == len(trials)
    # a denoiser accepted although worse than its input is said in the report's first lines
    (tmp_path / "denoiser.json").write_text(json.dumps({"allow_weak": True}))
    assert main([*argv, f"--denoiser-metrics={tmp_path / 'denoiser.json'}"]) == 0
    head = (out / "ablation.md").read_text().split("## Summary")[0]
    assert "**The PnP denoiser is weak**" in head
    assert json.loads((out / "metrics.json").read_text())["denoiser_allow_weak"] is True


@pytest.mark.parametrize("missing", ["trials", "history"])
def test_cli_missing_input_is_one_line_exit_2_and_writes_nothing(tables, tmp_path, capsys, missing):
    from stages.report import main

    (tmp_path / "params.yaml").write_text(PARAMS)
    files = {k: tmp_path / f"{k}.parquet" for k in ("trials", "history")}
    tables[0].to_parquet(files["trials"])
    tables[1].to_parquet(files["history"])
    files[missing].unlink()
    out = tmp_path / "reports"
    argv = [f"--params={tmp_path / 'params.yaml'}", f"--out={out}"]
    argv += [f"--{k}={v}" for k, v in files.items()]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert str(files[missing]) in err and "not found" in err
    assert not out.exists()


def test_cli_corrupt_parquet_is_a_data_error(tmp_path, capsys):
    from stages.report import main

    (tmp_path / "params.yaml").write_text(PARAMS)
    bad = tmp_path / "trials.parquet"
    bad.write_text("not parquet")
    argv = [f"--params={tmp_path / 'params.yaml'}", f"--trials={bad}", f"--out={tmp_path / 'o'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable parquet file" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_report_leaves_no_scratch(tables, tmp_path: Path, sig: int) -> None:
    """Issue 23, root cause 2. Before: ``stages.report`` had no SIGTERM handling, so each kill
    left a ``reports/.report-tmp-*`` folder of half-written plots that nothing removed. Now it
    prints ``interrupted``, exits 143 (130 for SIGINT) and its scratch folder is gone; one that
    a SIGKILLed run left is removed by the next run."""
    import yaml
    from helpers import REPO, TINY, ProcessGroup, base_env

    trials, history = tables
    out = tmp_path / "reports"
    out.mkdir()
    trials.to_parquet(out / "trials.parquet", index=False)
    history.to_parquet(out / "history.parquet", index=False)
    params = {**TINY, "priors": {**TINY["priors"], "pnp": {"type": "pnp"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid whose process is gone: its scratch folder is a SIGKILLed run's
    from pipeline.util.scratch import host_tag

    leftover = out / f".report.tmp-{host_tag()}-{dead.pid}-0123abcd"
    (leftover / "plots").mkdir(parents=True)
    env = base_env(PYTHONPATH=str(REPO))
    proc = ProcessGroup(
        [sys.executable, "-m", "stages.report", "--params", "params.yaml"],
        env,
        tmp_path / "log",
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not [p for p in out.glob(".report.tmp-*") if p != leftover]:
            assert proc.alive(), proc.tail()
            assert time.monotonic() < deadline, proc.tail()
            time.sleep(0.01)
        assert not leftover.exists()  # removed before this run wrote anything
        os.kill(proc.pid, sig)
        code = proc.proc.wait(timeout=60)
        output = proc.tail()
    finally:
        proc.stop(grace_s=2)
    assert code == 128 + sig, output
    assert output.strip().splitlines()[-1] == "interrupted", output
    assert "Traceback" not in output, output
    assert list(out.glob(".report*")) == []
