"""Stage ``pretrain``: train the PnP denoiser on crops of the training images, score it.

python -m stages.pretrain [--params params.yaml] [--prepared data/prepared]
                          [--out models/denoiser.pt] [--quiet] [--threads N]

Writes the weights only (a state dict, loadable with ``torch.load(weights_only=True)``) to
``--out`` and its scores (val and test PSNR per noise level beside the noisy input's and the
classical denoisers') to the same path with a ``.json`` suffix. A denoiser worse than its noisy
input at some evaluated σ fails the stage (exit 2, nothing written) unless
``pretrain.allow_weak``.
The device follows ``train.device`` (``auto``: CUDA when present).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.util.cli import positive_int, run_cli


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.pretrain",
        description="Train the PnP denoiser (params: pretrain) on crops of the training images.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (%(default)s)")
    parser.add_argument("--prepared", default="data/prepared", help="(%(default)s)")
    parser.add_argument("--out", default="models/denoiser.pt", help="weights file (%(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: torch's choice)",
    )
    args = parser.parse_args(argv)

    from pipeline.study.config import load_params

    cfg = load_params(args.params)  # before torch is imported: a typo costs a second
    from pipeline.util.paths import check_output_file

    out = Path(args.out)
    metrics_file = out.with_suffix(".json")  # pretrain.metrics_path (imports torch)
    check_output_file(out, "--out", not_same_as={"metrics file (--out with .json)": metrics_file})
    check_output_file(metrics_file, "metrics file of --out")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from pipeline.study.build import resolve_device
    from pipeline.study.pretrain import metrics_path, pretrain

    device = resolve_device(cfg.train.device)
    assert metrics_path(out) == metrics_file
    metrics = pretrain(cfg, Path(args.prepared), out, progress=not args.quiet, device=device)
    rows = metrics["test"]
    gains = ", ".join(
        f"σ={k}: {v['input_psnr']:.2f} -> {v['denoised_psnr']:.2f} dB" for k, v in rows.items()
    )
    weak = f"; WEAK at {len(metrics['weak'])} (split, σ) (allow_weak)" if metrics["weak"] else ""
    print(
        f"pretrain: {metrics['denoiser']} {metrics['arch']} ({metrics['parameters']} weights, "
        f"{metrics['steps']} steps, {metrics['train_seconds']:.0f} s) -> {out}; "
        f"test {gains}{weak}; metrics in {metrics_path(out)}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
