"""Every network of the U-Net family on the GPU: logits, loss, every gradient and BatchNorm's
running statistics agree with the CPU (float64 to 1e-10, float32 by norm per tensor to 1e-4),
on the fast ops (what training runs) and on the plain ops (needs a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.models import registry
from minunet.nn.model import LOSS_MIN_OUTPUT, Heads

pytestmark = pytest.mark.gpu

FAMILY = ["unet-bn", "resunet", "unetpp", "unet3p", "mobile-unet", "eff-unet"]


def _step(model, x, labels, weights):
    """One forward, loss and backward on the model's device: host copies of the first
    head's logits, the loss, the gradients and the buffers."""
    out = model.forward(x, dropout_key=5)
    loss, cache = model.loss_forward(out, labels, weights)
    model.zero_grad()
    model.backward(model.loss_backward(cache))
    first = out[0] if isinstance(out, Heads) else out
    return (backend.to_host(first), float(loss),
            {k: backend.to_host(v) for k, v in model.grads.items()},
            {k: backend.to_host(v) for k, v in model.buffers.items()})


@pytest.mark.parametrize("ops", ["fast", "plain"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
@pytest.mark.parametrize("name", FAMILY)
def test_cpu_and_gpu_agree(name, dtype, tol, ops):
    cls = registry.get(name)
    cfg = cls.test_config(dtype=dtype, ops=ops)
    geometry = registry.geometry(cfg)
    size = next(s for s in range(2 * geometry.grid, 4096) if geometry.is_valid(s)
                and geometry.output_size(s) >= LOSS_MIN_OUTPUT.get(cfg.loss, 1))
    n = geometry.output_size(size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, cfg.in_channels, size, size)).astype(dtype)
    labels = rng.integers(0, cfg.n_classes, (2, n, n))
    weights = (rng.random((2, n, n)) + 0.5).astype(dtype)
    cpu = _step(registry.build_model(cfg, seed=1), x, labels, weights)
    gpu = _step(registry.build_model(cfg, seed=1).to("cuda"), backend.to_device(x),
                backend.to_device(labels), backend.to_device(weights))

    def rel(a, b):
        return np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)

    assert rel(cpu[0], gpu[0]) <= tol
    assert abs(cpu[1] - gpu[1]) <= tol * abs(cpu[1])
    for k in cpu[2]:
        assert rel(cpu[2][k], gpu[2][k]) <= tol, k
    for k in cpu[3]:
        assert rel(cpu[3][k], gpu[3][k]) <= tol, k
