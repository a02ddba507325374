"""The names ``params.yaml`` may use for things the core implements, in one torch-free place.

    from pipeline.util.names import SOLVER_NAMES, WAVELET_NAMES
    "anderson" in SOLVER_NAMES          # True

The params schema (``pipeline.study.config``) validates these names before any heavy import (a
typo costs nothing, and the report stage, which loads the schema, does not depend on the math),
so they cannot live in the torch modules that implement them. Those modules build their tables
from these names and refuse any other: ``core.solvers.register_solver``, ``core.wavelets``,
``core.denoisers``, ``core.precision.AUTOCAST_DTYPES``.
"""

from __future__ import annotations

# fixed-point solvers of ``core.solvers`` (each registered there under this name)
SOLVER_NAMES: tuple[str, ...] = ("fixed_point", "anderson", "broyden")

# orthonormal wavelets of ``core.wavelets``: Haar and pywt's Daubechies db1 ... db38
WAVELET_NAMES: tuple[str, ...] = ("haar", *(f"db{i}" for i in range(1, 39)))

# denoiser -> the architecture keys a params file may set (PnP priors, the pretrain section);
# ``core.denoisers`` accepts these and a few more deepinv options. DRUNet's ``residual``: the
# network predicts the noise, D(y, σ) = y − N(y, σ) (deepinv's and the official weights: false)
DENOISER_ARCH: dict[str, tuple[str, ...]] = {
    "drunet": ("nc", "nb", "residual"),
    "dncnn": ("depth", "nf"),
}

# torch dtypes autocast may run the untracked applications in (``core.precision``)
AUTOCAST_NAMES: tuple[str, ...] = ("bfloat16", "float16")
