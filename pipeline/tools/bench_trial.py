"""``rjfb bench --suite trial``: where a trial's wall time goes, one trial per prior family.

Runs, one after another in this process, one trial of the study (``--params``, on the prepared
data ``--prepared``) for each of :data:`DEFAULT_TRIALS` (or the names given with ``--trial``):
the whole ``run_trial`` (training, validation, probes, test evaluation, artifacts in a
temporary folder), without Ray or MLflow, on ``--threads`` intra-op threads (the sweep's
``ray.cpus_per_trial``: 1). It prints the phase split of :mod:`pipeline.study.phases` per trial
and the share of training steps. Start-up here is the trial's own (data, scheme, estimator):
the Ray worker's imports and the MLflow run are the sweep's and show in its trials table.

A chained prior (``sigma_init_from``) runs from its own ``sigma_init``: the bench has no first
phase to read the σ from. Nothing here asserts a time.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.study.phases import PHASES, PhaseTimer, train_fraction

# one trial per family of the default study: wavelet FB trained by rJFB and by DEQ, PnP with
# the frozen denoiser, the denoiser trained inside FB (the authors' configuration K10 T25)
DEFAULT_TRIALS = (
    "wl12-rjfb-K5-T5-s0",
    "wl12-deq-s0",
    "pnp-rjfb-K10-T25-s0",
    "drunet_fb-rjfb-K10-T25-s0",
)


@dataclass(frozen=True)
class TrialBench:
    """One trial's phase split (seconds) and its metrics that the cheaper phases must keep."""

    name: str
    seconds: dict[str, float]
    metrics: dict[str, float]

    @property
    def train_fraction(self) -> float:
        return train_fraction(self.seconds["train"], self.seconds["total"])


def run_trials(
    params: Path,
    prepared: Path,
    names: tuple[str, ...] = DEFAULT_TRIALS,
    threads: int = 1,
    epochs: int | None = None,
    exhaustive: bool = False,
) -> list[TrialBench]:
    """Run the named trials of the study at ``params`` (``epochs`` overrides every prior's
    epochs; ``exhaustive``: nothing computed once is reused, ``run_trial``'s reference) and
    return their phase splits."""
    from pipeline.study.config import load_params
    from pipeline.study.trial import run_trial
    from pipeline.util.errors import ConfigError

    study = load_params(params)
    if epochs is not None:
        study = _with_epochs(study, epochs)
    specs = {t.name: t for t in study.trials()}
    missing = [n for n in names if n not in specs]
    if missing:
        raise ConfigError(
            f"bench --suite trial: {', '.join(missing)} not in the study's trials "
            f"(e.g. {', '.join(list(specs)[:4])})"
        )
    out = []
    for name in names:
        timer = PhaseTimer()
        with tempfile.TemporaryDirectory() as d:
            result = run_trial(
                study,
                specs[name],
                prepared,
                artifacts_dir=Path(d),
                threads=threads,
                timer=timer,
                exhaustive=exhaustive,
            )
        m = result.metrics
        seconds = {p: float(m[f"seconds_{p}"]) for p in PHASES}
        seconds["total"] = float(m["seconds_total"])
        keep = ("test_psnr", "test_psnr_at_depth", "test_psnr_1", "test_psnr_k", "final_val_psnr")
        out.append(TrialBench(name, seconds, {k: float(m[k]) for k in keep if k in m}))
    return out


def _with_epochs(study: Any, epochs: int) -> Any:
    from pipeline.study.config import StudyConfig

    raw = study.model_dump(mode="json")
    raw["train"]["epochs"] = epochs
    for prior in raw["priors"].values():
        if prior.get("train"):
            prior["train"].pop("epochs", None)
    return StudyConfig.model_validate(raw).with_root(study.root)


def table(rows: list[TrialBench]) -> str:
    """The phase split as a markdown table: seconds per phase, total, share of training."""
    head = ["trial", *PHASES, "total", "train share"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r.seconds[p]:.2f}" for p in (*PHASES, "total")]
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {r.train_fraction:.2f} |")
    train = sum(r.seconds["train"] for r in rows)
    total = sum(r.seconds["total"] for r in rows)
    lines.append(
        f"\nall: {train:.1f} s of {total:.1f} s in training steps "
        f"({train_fraction(train, total):.2f}); median trial share "
        f"{statistics.median(r.train_fraction for r in rows):.2f}"
    )
    return "\n".join(lines)


def main(
    params: Path,
    prepared: Path,
    names: tuple[str, ...] | None = None,
    threads: int = 1,
    epochs: int | None = None,
    json_path: Path | None = None,
    exhaustive: bool = False,
) -> list[TrialBench]:
    """Run the suite, print its table (and write it as JSON to ``json_path``)."""
    from pipeline.tools.machine import loadavg

    start = time.perf_counter()
    rows = run_trials(params, prepared, names or DEFAULT_TRIALS, threads, epochs, exhaustive)
    print(table(rows))
    print(f"({time.perf_counter() - start:.0f} s; load average {loadavg()})")
    if json_path is not None:
        from pipeline.util.jsonio import write as write_json

        write_json(
            json_path,
            {
                "suite": "trial",
                "threads": threads,
                "exhaustive": exhaustive,
                "load_average": loadavg(),
                "trials": [
                    {"name": r.name, "seconds": r.seconds, "metrics": r.metrics} for r in rows
                ],
            },
        )
    return rows


__all__ = ["DEFAULT_TRIALS", "TrialBench", "main", "run_trials", "table"]


if __name__ == "__main__":  # python -m pipeline.tools.bench_trial PARAMS PREPARED [NAME ...]
    import sys

    args = sys.argv[1:]
    main(Path(args[0]), Path(args[1]), tuple(args[2:]) or None)
