"""The pretrain stage: it learns to denoise held-out patches, writes weights only (atomically),
is seeded, and its parameters are validated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.core.denoisers import build_denoiser
from pipeline.study.config import StudyConfig, parse_params
from pipeline.study.data import load_split, prepare
from pipeline.study.pretrain import evaluate_denoiser, metrics_path, pretrain
from pipeline.util.errors import ConfigError

TINY_DATA = {
    "patch_size": 32,
    "patches_per_image": 4,
    "train_images": 3,
    "val_images": 1,
    "test_images": 1,
}
TINY_PRETRAIN = {
    "nc": 4,
    "nb": 1,
    "sigma_min": 0.1,
    "sigma_max": 0.2,
    "steps": 120,
    "lr": 2e-3,
    "batch_size": 8,
    "val_sigmas": [0.1, 0.2],
}

pytestmark = pytest.mark.usefixtures("one_thread")


def study(root: Path, **pretrain: object) -> StudyConfig:
    raw = {
        "data": TINY_DATA,
        "pretrain": {**TINY_PRETRAIN, **pretrain},
        "priors": {"l1": {"type": "wavelet", "levels": 2}},
        "sweep": {"priors": ["l1"], "estimators": ["deq"]},
    }
    return parse_params(raw).with_root(root)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    return prepare(study(root), root / "prepared", progress=False)


@pytest.fixture(scope="module")
def trained(prepared: Path) -> tuple[Path, dict]:
    out = prepared.parent / "models" / "denoiser.pt"
    metrics = pretrain(study(prepared.parent), prepared, out, progress=False)
    return out, metrics


def test_pretrained_denoiser_beats_the_noisy_input_on_held_out_patches(
    prepared: Path, trained: tuple[Path, dict]
) -> None:
    out, metrics = trained
    model = build_denoiser("drunet", 1, weights=out, nc=4, nb=1)
    val = load_split(prepared, "val").clean  # images the denoiser never saw
    untrained = evaluate_denoiser(build_denoiser("drunet", 1, nc=4, nb=1), val, [0.15], seed=3)
    after = evaluate_denoiser(model, val, [0.15], seed=3)["0.15"]
    assert after["denoised_psnr"] > after["input_psnr"] + 1.0, after
    assert after["denoised_psnr"] > untrained["0.15"]["denoised_psnr"] + 3.0
    # the metrics file is what the stage measured on the same held-out split
    written = json.loads(metrics_path(out).read_text())
    assert written == json.loads(json.dumps(metrics))
    assert set(written["val"]) == {"0.1", "0.2"}
    for v in written["val"].values():
        assert v["denoised_psnr"] > v["input_psnr"]
    assert written["arch"] == {"nc": 4, "nb": 1} and written["channels"] == 1
    assert written["parameters"] == sum(p.numel() for p in model.parameters())


def test_weights_file_is_a_plain_state_dict_written_atomically(
    trained: tuple[Path, dict],
) -> None:
    out, _ = trained
    state = torch.load(out, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert all(v.device.type == "cpu" for v in state.values())
    assert sorted(p.name for p in out.parent.iterdir()) == ["denoiser.json", "denoiser.pt"]


def test_pretrain_is_seeded(prepared: Path, tmp_path: Path) -> None:
    cfg = study(prepared.parent, steps=5)
    a = pretrain(cfg, prepared, tmp_path / "a.pt", progress=False)
    b = pretrain(cfg, prepared, tmp_path / "b.pt", progress=False)
    sa = torch.load(tmp_path / "a.pt", weights_only=True)
    sb = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["val"] == b["val"]
    pretrain(study(prepared.parent, steps=5, seed=1), prepared, tmp_path / "c.pt", progress=False)
    sc = torch.load(tmp_path / "c.pt", weights_only=True)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_pretrain_dncnn_option_and_crops(prepared: Path, tmp_path: Path) -> None:
    cfg = study(prepared.parent, denoiser="dncnn", depth=3, nf=8, steps=3, crop=16)
    metrics = pretrain(cfg, prepared, tmp_path / "d.pt", progress=False)
    assert metrics["arch"] == {"depth": 3, "nf": 8}
    build_denoiser("dncnn", 1, weights=tmp_path / "d.pt", depth=3, nf=8)


def test_stage_cli(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    from stages.pretrain import main

    params = tmp_path / "params.yaml"
    raw = {
        "data": TINY_DATA,
        "pretrain": {**TINY_PRETRAIN, "steps": 2},
        "priors": {"l1": {"type": "wavelet", "levels": 2}},
        "sweep": {"priors": ["l1"], "estimators": ["deq"]},
    }
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "models" / "denoiser.pt"
    argv = ["--params", str(params), "--prepared", str(prepared), "--out", str(out), "--quiet"]
    torch.set_num_threads(2)
    assert main([*argv, "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1  # --threads applies
    assert out.is_file() and metrics_path(out).is_file()
    assert "pretrain: drunet" in capsys.readouterr().out
    argv[3] = str(tmp_path / "nowhere")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("pretrain_", "message"),
    [
        ({"sigma_min": 0.3, "sigma_max": 0.2}, r"pretrain\.sigma_min: must be <= sigma_max"),
        ({"crop": 12}, r"pretrain\.crop: must be divisible by 8"),
        ({"crop": 64}, r"pretrain\.crop: must be <= data\.patch_size 32"),
        ({"stpes": 3}, r"pretrain\.stpes: unknown key \(did you mean 'steps'\?\)"),
        ({"val_sigmas": []}, r"pretrain\.val_sigmas"),
        ({"denoiser": "unet"}, r"pretrain\.denoiser"),
    ],
)
def test_pretrain_params_are_validated(pretrain_: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        study(Path("."), **pretrain_)
