"""The trial's reconstruction grid (``reconstructions.png``): what it draws, read back from the
figure, not only that a PNG exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.study.trial import reconstruction_figure


def test_the_grid_shows_each_row_clamped_with_its_psnr(tmp_path: Path) -> None:
    clean = torch.full((3, 1, 8, 8), 0.5)
    clean[1] = 0.25
    rows = [
        ("ground truth", clean),
        ("noisy", clean + 0.1),  # mse 0.01: 20 dB
        ("too bright", clean + 0.7),  # 1.2 clamped to 1: 0.5 off (6.02 dB); image 1: 0.95, 0.7 off
    ]
    fig = reconstruction_figure(rows, clean, "wl12-rjfb-K5-T5-s0")
    axes = np.array(fig.axes).reshape(3, 3)
    titles = [[ax.get_title() for ax in row] for row in axes]
    # PSNR of the clamped images: -10 log10(mse), the ground truth's mse floored at 1e-12
    assert titles[0] == ["120.00 dB"] * 3
    assert titles[1] == ["20.00 dB"] * 3
    assert titles[2] == ["6.02 dB", "3.10 dB", "6.02 dB"]
    assert [row[0].get_ylabel() for row in axes] == ["ground truth", "noisy", "too bright"]
    assert all(ax.get_ylabel() == "" for row in axes for ax in row[1:])
    # what is drawn is the clamped image, gray on a fixed [0, 1] scale
    drawn = axes[2][0].get_images()[0]
    assert np.array_equal(np.asarray(drawn.get_array()), np.ones((8, 8), dtype=np.float32))
    assert drawn.get_clim() == (0, 1)
    assert fig._suptitle.get_text() == "wl12-rjfb-K5-T5-s0"
    fig.savefig(tmp_path / "grid.png", dpi=40)
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_color_image_is_drawn_in_color() -> None:
    clean = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    fig = reconstruction_figure([("truth", clean)], clean, "rgb")
    image = np.asarray(fig.axes[1].get_images()[0].get_array())
    assert image.shape == (6, 6, 3)
    assert np.allclose(image, clean[1].permute(1, 2, 0).numpy())
