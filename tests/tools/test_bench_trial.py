"""``rjfb bench --suite trial``: whole trials of a small study, their wall time split into phases.

Checks what the suite prints and writes (every phase, a total they fit in, the trial's
metrics), never how long anything took.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.study.config import load_params
from pipeline.study.data import prepare
from pipeline.study.phases import PHASES

STUDY = {
    "data": {
        "patch_size": 32,
        "patches_per_image": 2,
        "train_images": 2,
        "val_images": 1,
        "test_images": 1,
        "degradation": {"kind": "blur", "blur_size": 5, "blur_sigma": 1.0},
    },
    "priors": {"wl": {"type": "wavelet", "norm": "l1", "levels": 2}},
    "train": {"batch_size": 2, "probe_batch_size": 2, "epochs": 2},
    "sweep": {"priors": ["wl"], "estimators": ["deq", "rjfb"], "depths": [2], "restarts": [1]},
}


@pytest.mark.usefixtures("one_thread")
def test_the_trial_suite_prints_and_writes_each_trials_phases(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(STUDY))
    prepare(load_params(params), tmp_path / "prepared", progress=False)
    out = tmp_path / "bench.json"
    argv = ["bench", "--suite", "trial", "--params", str(params)]
    argv += ["--prepared", str(tmp_path / "prepared"), "--json", str(out), "--epochs", "1"]
    argv += ["--trial", "wl-deq-s0", "--trial", "wl-rjfb-K2-T1-s0"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| wl-deq-s0 |" in printed and "| wl-rjfb-K2-T1-s0 |" in printed
    assert "in training steps" in printed
    result = json.loads(out.read_text())
    assert [t["name"] for t in result["trials"]] == ["wl-deq-s0", "wl-rjfb-K2-T1-s0"]
    for t in result["trials"]:
        seconds = t["seconds"]
        assert set(seconds) == {*PHASES, "total"}
        assert sum(seconds[p] for p in PHASES) <= seconds["total"]
        assert seconds["train"] > 0 and seconds["test"] > 0
        assert 10 < t["metrics"]["test_psnr"] < 60  # a reconstruction, in dB


def test_an_unknown_trial_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(STUDY))
    argv = ["bench", "--suite", "trial", "--params", str(params), "--trial", "wl-jfb-s0"]
    argv += ["--prepared", str(tmp_path / "nowhere")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "wl-jfb-s0" in err and "not in the study's trials" in err
