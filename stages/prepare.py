"""Stage ``prepare``: cut the image source into degraded train/val/test patch sets.

python -m stages.prepare [--params params.yaml] [--out data/prepared]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.util.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.prepare",
        description="Split the images by image, cut patches and make their observations.",
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="data/prepared", help="output folder (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from pipeline.study.config import load_params
    from pipeline.study.data import SPLITS, prepare, read_manifest

    cfg = load_params(args.params)
    out = prepare(cfg, Path(args.out), progress=not args.quiet)
    manifest = read_manifest(out)
    parts = []
    for split in SPLITS:
        info = manifest["splits"][split]
        parts.append(
            f"{split} {len(info['images'])} images / {info['patches']} patches "
            f"(observed PSNR {info['observed_psnr']:.2f} dB)"
        )
    d = manifest["degradation"]
    print(f"{out}: {d['kind']} sigma={d['noise_sigma']:g}; " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
