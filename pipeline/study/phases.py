"""Where a trial's wall time goes: one timer per phase.

A trial's time splits into six phases (the ``seconds_<phase>`` columns of the trials table and
MLflow metrics of each trial) and their total:

``startup``    from the trial's entry (the Tune trainable's, or ``run_trial``'s when called
               directly) to the scheme built and ready for the first training step: the MLflow
               run opened, the data loaded, the scheme and the estimator built
``train``      the training steps (forward, loss, backward, optimiser step): ``train_seconds``
``val``        the validation PSNR at equilibrium: before training (epoch 0) and after each epoch
``probe``      the gradient-fidelity probes against DEQ, γ̂ and the training-memory count
``test``       the test PSNR at equilibrium and at the reported depths
``artifacts``  reporting: epoch rows and checkpoints (MLflow, Tune), the reconstruction grid,
               θ and the exported model, logged as artifacts
``total``      from the entry to the end of the artifacts (what the other six add up to, plus
               the little that no phase holds: the θ read-out and plain bookkeeping)

Times are ``time.perf_counter`` seconds of the attempt that produced the result: a trial resumed
from a checkpoint reports the phases of its last attempt (``train_seconds`` keeps adding up every
attempt's training time).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator

PHASES = ("startup", "train", "val", "probe", "test", "artifacts")
# the trials-table / MLflow names of the phases and of their total
PHASE_COLUMNS = (*(f"seconds_{p}" for p in PHASES), "seconds_total")


class PhaseTimer:
    """Seconds spent per phase since ``origin`` (a ``time.perf_counter()`` value, default now).

    ``with timer.phase("val"): ...`` adds the block's wall time to ``val``; phases do not nest
    (an inner phase would be counted twice)."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.perf_counter() if origin is None else float(origin)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.first_step: float | None = None  # perf_counter() at the first training step
        self._open: str | None = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r} (one of {', '.join(PHASES)})")
        if self._open is not None:
            raise RuntimeError(f"phase {name!r} inside phase {self._open!r}: phases do not nest")
        self._open = name
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self._open = None

    def add(self, name: str, seconds: float) -> None:
        """Add time measured elsewhere to a phase."""
        if name not in self.seconds:
            raise ValueError(f"unknown phase {name!r} (one of {', '.join(PHASES)})")
        self.seconds[name] += float(seconds)

    def started_training(self) -> None:
        """Mark the first training step: the start-up phase is the time from ``origin`` to here
        less what other phases (the epoch-0 validation) took in between."""
        if self.first_step is None:
            self.first_step = time.perf_counter()
            others = sum(v for k, v in self.seconds.items() if k != "startup")
            self.seconds["startup"] = max(0.0, self.first_step - self.origin - others)

    def total(self) -> float:
        return time.perf_counter() - self.origin

    def metrics(self) -> dict[str, float]:
        """``seconds_<phase>`` for every phase and ``seconds_total`` (now minus ``origin``)."""
        return {
            **{f"seconds_{k}": float(v) for k, v in self.seconds.items()},
            "seconds_total": self.total(),
        }


def train_fraction(seconds_train: float, seconds_total: float) -> float:
    """The share of a trial's (or of summed trials') wall time spent in training steps."""
    return seconds_train / seconds_total if seconds_total > 0 else float("nan")


def sweep_overhead(
    first_steps: Iterable[float], ends: Iterable[float], start_unix: float, end_unix: float
) -> dict[str, float]:
    """The sweep stage's own overhead from its trials' wall clocks (Unix seconds): from the
    stage's start to the first training step of any trial, and from the last trial's end to
    the stage's end. Trials that ran before ``start_unix`` (kept from an earlier attempt, or a
    finished sweep's tables read back) are left out; NaN when none ran in this stage."""
    firsts = [f for f in first_steps if math.isfinite(f) and f >= start_unix]
    lasts = [e for e in ends if math.isfinite(e) and e >= start_unix]
    return {
        "stage_seconds": end_unix - start_unix,
        "before_first_step_s": min(firsts) - start_unix if firsts else math.nan,
        "after_last_trial_s": end_unix - max(lasts) if lasts else math.nan,
        "trials_in_stage": float(len(lasts)),
    }
