"""The ``rjfb`` console script and the error handling shared by every stage CLI.

User mistakes (:class:`~pipeline.util.errors.UserError`) print one line to stderr and exit 2
without a traceback; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.util.cli import positive_int, run_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rjfb",
        description=(
            "rjfb-pipeline: learn solver hyperparameters at equilibrium and compare restarted "
            "JFB with deep-equilibrium training. The study itself runs with `dvc repro`."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser(
        "check",
        help="validate params.yaml and list the sweep's trials (by phase when priors chain sigma)",
    )
    check.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    profile = sub.add_parser(
        "profile",
        help="validate a study profile (profiles/NAME.yaml) and copy it over params.yaml",
        description=(
            "Replace params.yaml by a complete study profile after validating it: `paper` (the "
            "authors' scale, for GPUs) or `gpu-smoke` (a few minutes of device time). The "
            "previous params.yaml is kept as params.yaml.bak; `git checkout params.yaml` "
            "restores the default 2-core study."
        ),
    )
    profile.add_argument("name", nargs="?", help="a profile name (see --list) or a YAML file")
    profile.add_argument("--list", action="store_true", help="list the profiles and exit")
    profile.add_argument(
        "--params", default="params.yaml", help="the file to write (default: %(default)s)"
    )
    bench = sub.add_parser(
        "bench",
        help="time every gradient estimator against deepinv and a bare-PyTorch floor",
        description=(
            "One training step (forward, loss, backward) of each configuration, in one process: "
            "this project, deepinv's PGD (DEQ, JFB, unfolded) and a plain-PyTorch floor. Prints a "
            "markdown table (see docs/benchmarks.md)."
        ),
    )
    bench.add_argument(
        "--suite",
        choices=("cpu", "gpu", "trial", "zoo"),
        default="cpu",
        help="cpu: Haar-l1 FB denoising, B=8 gray 64x64; gpu: DRUNet PnP-FB deblurring, "
        "B=8 RGB 256x256; trial: one whole trial of the study per prior family, its wall "
        "time split into phases; zoo: every estimator (phantom gradients, SHINE, Broyden DEQ, "
        "...) on params.yaml's wl12 problem, see docs/bench-zoo.md (default: %(default)s)",
    )
    bench.add_argument("--quick", action="store_true", help="fewer repetitions, same rows")
    bench.add_argument(
        "--json", metavar="PATH", help='also write {"rows": [...], "machine": {...}}'
    )
    bench.add_argument("--device", help="torch device (default: cpu for cpu, cuda if any for gpu)")
    bench.add_argument("--batch", type=positive_int, help="batch size override")
    bench.add_argument("--size", type=positive_int, help="patch side override")
    bench.add_argument("--width", type=positive_int, help="gpu suite: DRUNet base channels (64)")
    bench.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch intra-op threads (default: %(default)s; see docs/benchmarks.md)",
    )
    bench.add_argument("--repeats", type=positive_int, help="timed repetitions (15; quick: 5)")
    bench.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    bench.add_argument(
        "--deepinv-prior",
        choices=("auto", "wavelet", "haar"),
        default="auto",
        help="cpu suite: deepinv's WaveletPrior (needs ptwt) or a Prior with the floor's Haar "
        "prox; auto: WaveletPrior when ptwt is installed (default: %(default)s)",
    )
    trial = bench.add_argument_group("--suite trial")
    trial.add_argument("--params", default="params.yaml", help="the study (%(default)s)")
    trial.add_argument("--prepared", default="data/prepared", help="its data (%(default)s)")
    trial.add_argument(
        "--trial",
        action="append",
        metavar="NAME",
        help="a trial of the study (repeatable; default: one per prior family, "
        "pipeline.tools.bench_trial.DEFAULT_TRIALS)",
    )
    trial.add_argument("--epochs", type=positive_int, help="every prior's epochs override")
    trial.add_argument(
        "--exhaustive",
        action="store_true",
        help="recompute what a trial reuses (test depths, the probes' x*, a DEQ trial's probe "
        "reference): the reference the default is measured against",
    )
    return parser


def _main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        from pipeline.study.chain import chains, phases
        from pipeline.study.config import load_params

        cfg = load_params(args.params)
        trials = cfg.trials()
        first, second = phases(cfg)
        if not (first and second):  # one phase (the sweep runs it as one Tune experiment)
            print(f"{args.params}: valid; {len(trials)} trials")
            for t in trials:
                print(f"  {t.name}")
            return 0
        print(f"{args.params}: valid; {len(trials)} trials in 2 phases")
        print(f"  phase 1 ({len(first)} trials):")
        for t in first:
            print(f"    {t.name}")
        print(f"  phase 2 ({len(second)} trials, sigma from phase 1's results):")
        for t in second:
            print(f"    {t.name}  (sigma_init_from {chains(cfg, t.prior)})")
        return 0
    if args.command == "profile":
        from pipeline.study import profiles

        if args.list or args.name is None:
            for name, path in profiles.available().items():
                print(f"{name}: {path}")
            return 0
        source, cfg, backup = profiles.apply_profile(args.name, args.params)
        print(f"{args.params}: profile {args.name!r} ({source}), valid; {len(cfg.trials())} trials")
        if backup is not None:
            print(f"  the previous {args.params} is kept as {backup}")
        print("  run it with `dvc repro`; `git checkout params.yaml` restores the default study")
        return 0
    if args.command == "bench" and args.suite == "zoo":
        from pipeline.tools import bench_zoo

        bench_zoo.main(args.quick, args.repeats, args.threads, args.batch, json_path=args.json)
    if args.command == "bench" and args.suite == "trial":
        from pipeline.tools import bench_trial

        bench_trial.main(
            Path(args.params),
            Path(args.prepared),
            tuple(args.trial) if args.trial else None,
            threads=args.threads,
            epochs=args.epochs,
            json_path=Path(args.json) if args.json else None,
            exhaustive=args.exhaustive,
        )
        return 0
    if args.command == "bench":
        from pipeline.tools import bench

        settings = bench.Settings(
            suite=args.suite,
            quick=args.quick,
            device=args.device,
            batch=args.batch,
            size=args.size,
            width=args.width,
            threads=args.threads,
            repeats=args.repeats,
            seed=args.seed,
            deepinv_prior=args.deepinv_prior,
        )
        bench.main(settings, json_path=args.json)
        return 0
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rjfb`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
