"""The pretrain stage: it learns to denoise held-out patches from crops of the train images only,
is scored against its input and classical denoisers, refuses a denoiser worse than its input,
writes weights only (atomically), is seeded, and its parameters are validated."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
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
    "pretrain_patches": 64,
    "pretrain_patch_size": 32,
}
TINY_PRETRAIN = {
    "nc": 4,
    "nb": 1,
    "sigma_min": 0.1,
    "sigma_max": 0.2,
    "steps": 120,
    "lr": 2e-3,
    "batch_size": 8,
    "crop": 24,
    "eval_sigmas": [0.1, 0.2],
}
# a deliberately bad setting: deepinv's image-predicting DRUNet after 3 steps outputs nearly
# nothing of its input, far below the noisy input's PSNR
WEAK = {"residual": False, "steps": 3}

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
    model = build_denoiser("drunet", 1, weights=out, **metrics["arch"])
    val = load_split(prepared, "val").clean  # images the denoiser never saw
    # deepinv's image-predicting form, untrained: what training had to improve on
    untrained = evaluate_denoiser(build_denoiser("drunet", 1, nc=4, nb=1), val, [0.15], seed=3)
    after = evaluate_denoiser(model, val, [0.15], seed=3)["0.15"]
    assert after["denoised_psnr"] > after["input_psnr"] + 1.0, after
    assert after["denoised_psnr"] > untrained["0.15"]["denoised_psnr"] + 3.0
    # the metrics file is what the stage measured on the same held-out split
    written = json.loads(metrics_path(out).read_text())
    assert written == json.loads(json.dumps(metrics))
    for split in ("val", "test"):
        assert set(written[split]) == {"0.1", "0.2"}
        for v in written[split].values():
            assert v["denoised_psnr"] > v["input_psnr"]
            # the classical baselines, scored on the same noisy patches, beat the input too
            assert v["tv_psnr"] > v["input_psnr"] and v["bayes_psnr"] > v["input_psnr"]
            assert v["tv_weight"] > 0
    assert written["weak"] == [] and written["allow_weak"] is False
    assert written["arch"] == {"nc": 4, "nb": 1, "residual": True} and written["channels"] == 1
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
    cfg = study(prepared.parent, steps=5, allow_weak=True)
    a = pretrain(cfg, prepared, tmp_path / "a.pt", progress=False)
    b = pretrain(cfg, prepared, tmp_path / "b.pt", progress=False)
    sa = torch.load(tmp_path / "a.pt", weights_only=True)
    sb = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["val"] == b["val"]
    cfg_c = study(prepared.parent, steps=5, seed=1, allow_weak=True)
    pretrain(cfg_c, prepared, tmp_path / "c.pt", progress=False)
    sc = torch.load(tmp_path / "c.pt", weights_only=True)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_pretrain_dncnn_option_and_crops(prepared: Path, tmp_path: Path) -> None:
    cfg = study(prepared.parent, denoiser="dncnn", depth=3, nf=8, steps=3, crop=16, allow_weak=True)
    metrics = pretrain(cfg, prepared, tmp_path / "d.pt", progress=False)
    assert metrics["arch"] == {"depth": 3, "nf": 8}
    build_denoiser("dncnn", 1, weights=tmp_path / "d.pt", depth=3, nf=8)


def test_stage_cli(prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import yaml

    from stages.pretrain import main

    params = tmp_path / "params.yaml"
    raw = {
        "data": TINY_DATA,
        "pretrain": {**TINY_PRETRAIN, "steps": 2, "allow_weak": True},
        "priors": {"l1": {"type": "wavelet", "levels": 2}},
        "sweep": {"priors": ["l1"], "estimators": ["deq"]},
    }
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "models" / "denoiser.pt"
    argv = ["--params", str(params), "--prepared", str(prepared), "--out", str(out), "--quiet"]
    torch.set_num_threads(2)
    assert main([*argv, "--threads", "1"]) == 0  # two steps: weak, kept (allow_weak)
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
        ({"crop": 40}, r"pretrain\.crop: must be <= data\.pretrain_patch_size 32"),
        ({"stpes": 3}, r"pretrain\.stpes: unknown key \(did you mean 'steps'\?\)"),
        ({"eval_sigmas": []}, r"pretrain\.eval_sigmas"),
        ({"sigma_log_fraction": 1.5}, r"pretrain\.sigma_log_fraction"),
        ({"denoiser": "unet"}, r"pretrain\.denoiser"),
    ],
)
def test_pretrain_params_are_validated(pretrain_: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        study(Path("."), **pretrain_)


def test_a_denoiser_worse_than_its_input_is_refused(prepared: Path, tmp_path: Path) -> None:
    from pipeline.study.pretrain import WeakDenoiser

    out = tmp_path / "models" / "denoiser.pt"
    with pytest.raises(WeakDenoiser, match=r"worse than its noisy input at σ=0\.1 on the val") as e:
        pretrain(study(prepared.parent, **WEAK), prepared, out, progress=False)
    # both numbers are named, the denoised one below the input's
    nums = [float(v) for v in re.findall(r"([0-9]+\.[0-9]+) dB", str(e.value))]
    assert len(nums) == 2 and nums[0] < nums[1]
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing written


def test_allow_weak_keeps_it_and_says_where_it_lost(prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "denoiser.pt"
    metrics = pretrain(
        study(prepared.parent, **WEAK, allow_weak=True), prepared, out, progress=False
    )
    assert out.is_file() and metrics["allow_weak"] is True
    lost = {(w["split"], w["sigma"]) for w in metrics["weak"]}
    assert ("val", 0.1) in lost and lost <= {(s, g) for s in ("val", "test") for g in (0.1, 0.2)}
    for w in metrics["weak"]:
        assert w["denoised_psnr"] < w["input_psnr"]


def test_stage_refuses_a_weak_denoiser_in_one_line(
    prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    from stages.pretrain import main

    params = tmp_path / "params.yaml"
    raw = {
        "data": TINY_DATA,
        "pretrain": {**TINY_PRETRAIN, **WEAK},
        "priors": {"l1": {"type": "wavelet", "levels": 2}},
        "sweep": {"priors": ["l1"], "estimators": ["deq"]},
    }
    params.write_text(yaml.safe_dump(raw))
    out = tmp_path / "models" / "denoiser.pt"
    argv = ["--params", str(params), "--prepared", str(prepared), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "σ=0.1" in err[0] and "allow_weak" in err[0]
    assert not out.exists() and not metrics_path(out).exists()


def test_pretraining_crops_come_from_the_train_images_only(prepared: Path) -> None:
    from pipeline.study.data import load_images, load_pretrain_pool, read_manifest

    manifest = read_manifest(prepared)
    assert manifest["pretrain"]["images"] == manifest["splits"]["train"]["images"]
    pool = load_pretrain_pool(prepared).numpy()
    assert pool.shape == (64, 1, 32, 32)
    images = {im.name: im.pixels for im in load_images("bundled", "gray")}
    train = [images[n] for n in manifest["splits"]["train"]["images"]]
    others = [images[n] for s in ("val", "test") for n in manifest["splits"][s]["images"]]

    def found_in(crop: np.ndarray, image: np.ndarray) -> bool:
        # exact search of the crop's first row in the image, then the whole crop
        q = crop.shape[-1]
        rows, cols = np.nonzero(image[0] == crop[0, 0, 0])
        return any(
            r + q <= image.shape[1]
            and c + q <= image.shape[2]
            and np.array_equal(image[:, r : r + q, c : c + q], crop)
            for r, c in zip(rows, cols, strict=True)
        )

    for crop in pool[:8]:  # a sample: each search scans whole photographs
        assert any(found_in(crop, im) for im in train)
        assert not any(found_in(crop, im) for im in others)


def test_test_images_never_reach_pretraining(tmp_path: Path) -> None:
    # Two image folders that differ only in the images the split puts in test: the same seed
    # trains bit-identical weights (their scores differ, so the test images did change).
    import skimage.io

    from pipeline.study.data import read_manifest

    rng = np.random.default_rng(0)
    base = tmp_path / "a"
    base.mkdir()
    for i in range(5):
        img = (rng.random((40, 40)) * 255).astype(np.uint8)
        img = np.clip(np.cumsum(img, axis=1) // 40, 0, 255).astype(np.uint8)  # smooth-ish
        skimage.io.imsave(base / f"im{i}.png", img, check_contrast=False)
    raw = {
        "data": {**TINY_DATA, "source": str(base), "pretrain_patch_size": 32},
        "pretrain": {**TINY_PRETRAIN, "steps": 4, "allow_weak": True},
        "priors": {"l1": {"type": "wavelet", "levels": 2}},
        "sweep": {"priors": ["l1"], "estimators": ["deq"]},
    }
    cfg_a = parse_params(raw).with_root(tmp_path)
    prep_a = prepare(cfg_a, tmp_path / "prep_a", progress=False)
    test_names = read_manifest(prep_a)["splits"]["test"]["images"]
    other = tmp_path / "b"
    other.mkdir()
    for f in base.iterdir():
        data = skimage.io.imread(f)
        if f.name in test_names:
            data = (255 - data).astype(np.uint8)  # another test image under the same name
        skimage.io.imsave(other / f.name, data, check_contrast=False)
    raw_b = {**raw, "data": {**raw["data"], "source": str(other)}}
    prep_b = prepare(parse_params(raw_b).with_root(tmp_path), tmp_path / "prep_b", progress=False)
    ma = pretrain(cfg_a, prep_a, tmp_path / "a.pt", progress=False)
    mb = pretrain(
        parse_params(raw_b).with_root(tmp_path), prep_b, tmp_path / "b.pt", progress=False
    )
    sa = torch.load(tmp_path / "a.pt", weights_only=True)
    sb = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ma["val"] == mb["val"]  # val untouched too
    assert ma["test"] != mb["test"]  # the test images did change


def test_bm3d_baseline_when_asked_for(prepared: Path, tmp_path: Path) -> None:
    pytest.importorskip("bm3d", reason="the bm3d extra (in .[dev]) is not installed")
    cfg = study(prepared.parent, steps=2, allow_weak=True, bm3d=True, eval_sigmas=[0.1])
    metrics = pretrain(cfg, prepared, tmp_path / "d.pt", progress=False)
    for split in ("val", "test"):
        row = metrics[split]["0.1"]
        # BM3D is the strongest classical denoiser at σ = 0.1: above the input and BayesShrink
        assert row["bm3d_psnr"] > row["bayes_psnr"] > row["input_psnr"]
    assert (
        "bm3d_psnr"
        not in pretrain(
            study(prepared.parent, steps=2, allow_weak=True, eval_sigmas=[0.1]),
            prepared,
            tmp_path / "e.pt",
            progress=False,
        )["test"]["0.1"]
    )
