"""Image sources, patch data sets and their observations.

``prepare(cfg, out_dir)`` turns an image source into three patch data sets split *by image*
(``train.npz``, ``val.npz``, ``test.npz``), each holding clean patches, their degraded
observations ``y = A x + noise`` made with the deepinv physics of :mod:`pipeline.core.physics`,
the inpainting masks if any, and the index of the source image of every patch; plus
``kernel.npy`` (blur) and ``manifest.json`` (what was made, from what, and checksums).

``load_split(prepared_dir, split)`` reads one split back as tensors and rebuilds its physics.

``pretrain.npz`` holds ``data.pretrain_patches`` random crops (side ``data.pretrain_patch_size``)
of the *train* images only, clean: what the pretrain stage trains the denoiser on
(``load_pretrain_pool``). Val and test images never enter it.

Sources (``data.source``):

* ``"bundled"``: natural photographs that ship inside the scikit-image wheel (read from the
  installed package folder: nothing is ever downloaded);
* a folder of PNG / JPEG / TIFF images (non-recursive, sorted by name; hidden files are
  ignored, any other file is an error). Relative paths resolve against the params file.

Every random choice (the split, the crops, the masks, the noise) derives from ``data.seed``:
the same seed gives byte-identical files.

The work is in one module per concern, re-exported here: ``study/images.py`` (sources),
``study/degradations.py`` (kernels, observations), ``study/prepared.py`` (the folder's files,
manifest and checks), ``study/prepare_data.py`` (``prepare``); this module loads splits back.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.study.degradations import PSNR_CAP_DB, degrade, make_kernel, observation_psnr
from pipeline.study.images import (
    BUNDLED_IMAGES,
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS,
    SourceImage,
    list_image_files,
    load_images,
)
from pipeline.study.prepare_data import prepare, pretrain_crops
from pipeline.study.prepared import (
    FORMAT_VERSION,
    KERNEL,
    MANIFEST,
    MAX_ARRAY_BYTES,
    MAX_MANIFEST_BYTES,
    PREPARED_FILES,
    PRETRAIN,
    SPLITS,
    SplitName,
    check_arrays,
    check_file,
    check_kernel,
    expected_arrays,
    plain_name,
    pool_arrays,
    read_manifest,
    verify_prepared,
    write_npy,
    write_npz,
)
from pipeline.util.errors import DataError
from pipeline.util.scratch import (
    host_tag,
    remove_stale_scratch,
    scratch_name,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipeline.study.config import Degradation


@dataclass
class Split:
    """One prepared split as tensors: ``clean`` and ``observed`` are (N, C, P, P); ``mask`` is
    (N, 1, P, P) (1 = pixel kept, shared by all channels) for inpainting, else None; ``kernel``
    is the (1, 1, k, k) blur kernel for blur, else None."""

    name: str
    clean: torch.Tensor
    observed: torch.Tensor
    image_index: torch.Tensor
    degradation: dict[str, Any]
    mask: torch.Tensor | None = None
    kernel: torch.Tensor | None = None
    images: list[str] = field(default_factory=list)
    _shared_physics: Any = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def img_shape(self) -> tuple[int, int, int]:
        c, h, w = self.clean.shape[1:]
        return (int(c), int(h), int(w))

    def physics(
        self, index: torch.Tensor | slice | None = None, rng: torch.Generator | None = None
    ) -> Any:
        """The deepinv physics of the patches ``index`` (all if None): for inpainting it carries
        their mask rows, so it applies to ``self.clean[index]`` batch-wise."""
        from pipeline.core.physics import build_physics

        shareable = self.mask is None and rng is None  # same operator for every batch
        if shareable and self._shared_physics is not None:
            return self._shared_physics
        mask = None
        if self.mask is not None:
            mask = self.mask if index is None else self.mask[index]
        physics = build_physics(
            self.degradation["kind"],
            self.img_shape,
            noise_sigma=_noise_sigma(self.degradation["noise_sigma"]),
            blur_kernel=self.kernel,
            mask=mask,
            device=self.clean.device,
            rng=rng,
            padding=self.degradation.get("blur_padding", "circular"),
        )
        if shareable:
            self._shared_physics = physics
        return physics


def _noise_sigma(value: Any) -> float | list[float]:
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def load_split(prepared_dir: Path, split: SplitName, device: Any = "cpu") -> Split:
    """Load one split of a prepared folder, checking it against its manifest."""
    import torch

    prepared_dir = Path(prepared_dir)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    manifest = read_manifest(prepared_dir)
    stale = "; rerun `dvc repro prepare`"
    info = manifest["splits"][split]
    deg = manifest["degradation"]
    kind = deg["kind"]
    files = manifest["files"]

    path = prepared_dir / f"{split}.npz"
    check_file(path, files.get(path.name), stale)
    check_arrays(path, expected_arrays(manifest, split), stale)  # before anything is allocated
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable ({err}){stale}") from None
    allowed = set(info.get("image_indices", []))
    if not set(np.unique(arrays["image_index"]).tolist()) <= allowed:
        raise DataError(f"{path}: patches from images outside the {split} split{stale}")
    for key in ("clean", "observed"):
        arr = arrays[key]
        if not np.isfinite(arr).all():
            raise DataError(f"{path}: array {key!r} holds NaN or infinite values{stale}")
    clean = arrays["clean"]
    if clean.size and (float(clean.min()) < 0.0 or float(clean.max()) > 1.0):
        raise DataError(f"{path}: clean patches outside [0, 1]{stale}")

    kernel = None
    if kind == "blur":
        kpath = prepared_dir / KERNEL
        check_file(kpath, files.get(KERNEL), stale)
        check_kernel(kpath, manifest, stale)
        kernel = torch.from_numpy(np.load(kpath, allow_pickle=False)).to(device)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return Split(
        name=split,
        clean=t(arrays["clean"]),
        observed=t(arrays["observed"]),
        image_index=t(arrays["image_index"]),
        degradation=dict(deg),
        mask=t(arrays["mask"]) if "mask" in arrays else None,
        kernel=kernel,
        images=list(info.get("images", [])),
    )


def load_pretrain_pool(prepared_dir: Path, device: Any = "cpu") -> torch.Tensor:
    """The clean pretraining crops of the train images (N, C, S, S), checked against the
    manifest: checksum, shapes, values finite in [0, 1], and every crop from a train image."""
    import torch

    prepared_dir = Path(prepared_dir)
    manifest = read_manifest(prepared_dir)
    stale = "; rerun `dvc repro prepare`"
    path = prepared_dir / PRETRAIN
    if "pretrain" not in manifest:
        raise DataError(f"{prepared_dir}: no pretraining crops ({PRETRAIN}){stale}")
    check_file(path, manifest["files"].get(PRETRAIN), stale)
    check_arrays(path, pool_arrays(manifest), stale)
    try:
        with np.load(path, allow_pickle=False) as z:
            clean, index = z["clean"], z["image_index"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: unreadable ({err}){stale}") from None
    train = set(manifest["splits"]["train"].get("image_indices", []))
    if not set(np.unique(index).tolist()) <= train:
        raise DataError(f"{path}: crops from images outside the train split{stale}")
    if not np.isfinite(clean).all() or (clean.size and (clean.min() < 0 or clean.max() > 1)):
        raise DataError(f"{path}: crops hold values outside [0, 1] or not finite{stale}")
    return torch.from_numpy(clean).to(device)


def observe(
    split: Split, degradation: Degradation, seed: int, trial_seed: int | None = None
) -> Split:
    """``split`` observed through another degradation: a prior's own ``degradation``.

    The clean patches are the prepared ones; blur kernel, inpainting masks and noise are drawn
    here on the CPU from ``seed`` (``data.seed``) and the split's name, so every trial of the
    prior (every estimator, every seed of the sweep) sees the same observations. With
    ``trial_seed`` (``train.seed_train_noise``, training split) the masks and noise are drawn
    from (seed, split, trial_seed) instead: each seed of the sweep trains on its own noise
    realisation, the same for every estimator of that seed.
    """
    import torch

    d = degradation
    entropy = [seed % 2**32, SPLITS.index(split.name), 0x0B5]
    if trial_seed is not None:
        entropy += [0x5EED, trial_seed % 2**32]
    streams = np.random.SeedSequence(entropy).spawn(2)
    mask_gen, noise_gen = (
        torch.Generator().manual_seed(int(s.generate_state(1, dtype=np.uint64)[0] >> 1))
        for s in streams
    )
    kernel = torch.from_numpy(make_kernel(d)) if d.kind == "blur" else None
    observed, mask = degrade(split.clean.cpu(), d, kernel, mask_gen, noise_gen)
    device = split.clean.device
    return Split(
        name=split.name,
        clean=split.clean,
        observed=observed.to(device),
        image_index=split.image_index,
        degradation=d.model_dump(mode="json"),
        mask=None if mask is None else mask.to(device),
        kernel=None if kernel is None else kernel.to(device),
        images=list(split.images),
    )


__all__ = [
    "BUNDLED_IMAGES",
    "FORMAT_VERSION",
    "IMAGE_SUFFIXES",
    "KERNEL",
    "MANIFEST",
    "MAX_ARRAY_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_MANIFEST_BYTES",
    "PREPARED_FILES",
    "PRETRAIN",
    "PSNR_CAP_DB",
    "SPLITS",
    "SourceImage",
    "Split",
    "SplitName",
    "check_arrays",
    "check_file",
    "check_kernel",
    "degrade",
    "expected_arrays",
    "host_tag",
    "list_image_files",
    "load_images",
    "load_pretrain_pool",
    "load_split",
    "make_kernel",
    "observation_psnr",
    "observe",
    "plain_name",
    "pool_arrays",
    "prepare",
    "pretrain_crops",
    "read_manifest",
    "remove_stale_scratch",
    "scratch_name",
    "verify_prepared",
    "write_npy",
    "write_npz",
]
