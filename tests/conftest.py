"""Shared fixtures: `xp` (NumPy, and CuPy where a GPU is present), `rng`, `isbi_like` (a tiny
folder in the ISBI 2012 layout), the `gpu` marker.

Tests marked `@pytest.mark.gpu` (and the CuPy case of `xp`) are skipped, with the
reason, on a machine without a usable GPU; everything else must pass there (CI).
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend


def _xp_params():
    params = [pytest.param(np, id="numpy")]
    if backend.gpu_status().available:
        params.append(pytest.param("cupy", id="cupy", marks=pytest.mark.gpu))
    return params


@pytest.fixture(params=_xp_params())
def xp(request):
    """The array module a test runs on: numpy, and cupy when a GPU is available."""
    if request.param == "cupy":
        return backend.xp_of(backend.to_device(np.zeros(1)))  # cupy, imported by the backend
    return request.param


@pytest.fixture
def rng():
    """A seeded NumPy generator: every test sees the same random numbers on every run."""
    return np.random.default_rng(20150518)  # U-Net's arXiv date


@pytest.fixture
def isbi_like(tmp_path):
    """Six 200 x 200 slices in the ISBI layout (tmp_path/isbi/images, labels: 00..05.png), cells
    with membranes between them; its default split trains on 00-03, validates on 04 and holds
    05 out (tests/test_curve.py, tests/test_compare.py)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for sub in ("images", "labels"):
        (tmp_path / "isbi" / sub).mkdir(parents=True)
    for i in range(6):
        label = np.full((200, 200), 255, np.uint8)
        for c in rng.integers(20, 180, 4):
            label[:, c:c + 3] = 0
            label[c + 5:c + 8, :] = 0
        image = np.where(label > 0, 170, 60) + rng.integers(0, 40, label.shape)
        Image.fromarray(image.astype(np.uint8)).save(tmp_path / "isbi" / "images" / f"{i:02d}.png")
        Image.fromarray(label).save(tmp_path / "isbi" / "labels" / f"{i:02d}.png")
    return tmp_path / "isbi"


FIRST_ON_GPU = ("test_gpu.py", "test_model_gpu.py")  # the kernels and the whole network


def pytest_collection_modifyitems(config, items):
    status = backend.gpu_status()
    if status.available:
        # run the kernels and the whole network first, so a run cut short by a time limit
        # (tools/gpu_check.sh) loses the least; the order within each group is kept
        items.sort(key=lambda item: item.path.name not in FIRST_ON_GPU)
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {status.reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
