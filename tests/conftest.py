"""Fixtures shared by the whole suite. Helpers that are plain functions (the tiny study, a stage
run as a user runs it, services a test starts) live in ``tests/helpers.py``; this folder is put
on ``sys.path`` by pytest because it holds this file, so ``from helpers import ...`` works from
every subfolder."""

from __future__ import annotations

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
