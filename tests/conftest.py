"""Fixtures shared by the whole suite. Helpers that are plain functions (the tiny study, a stage
run as a user runs it, services a test starts) live in ``tests/helpers.py``; this folder is put
on ``sys.path`` by pytest because it holds this file, so ``from helpers import ...`` works from
every subfolder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared 2-core machine two threads are many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """One small local Ray for a module that runs sweeps in-process (``run_sweep`` reuses an
    initialised Ray and leaves it up); shut down after the module if this fixture started it."""
    import ray

    from pipeline.sweep.cluster import start_local_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    started = not ray.is_initialized()
    if started:  # bound to loopback, as the sweep's own local Ray
        start_local_ray(2, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
