"""The whole U-Net and a short training run agree on the CPU and the GPU (needs a GPU)."""

import numpy as np
import pytest

from minunet import backend, ops
from minunet.model import UNet, UNetConfig
from minunet.train import TrainConfig, Trainer

pytestmark = pytest.mark.gpu


def _loss_and_grads(m, x, labels, weights):
    logits = m.forward(x, dropout_key=5)
    loss, cache = ops.softmax_cross_entropy_forward(logits, labels, weights)
    m.zero_grad()
    m.backward(ops.softmax_cross_entropy_backward(1.0, cache))
    return (backend.to_host(logits), float(loss),
            {k: backend.to_host(v) for k, v in m.grads.items()})


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_whole_network_cpu_and_gpu_agree(dtype, tol):
    """Logits, loss and every gradient: float64 to 1e-10, float32 by norm per tensor to 1e-4."""
    rng = np.random.default_rng(0)
    cfg = UNetConfig(base=4, dtype=dtype)
    x = rng.standard_normal((2, 1, 204, 220)).astype(dtype)
    labels = rng.integers(0, 2, (2, 20, 36))
    weights = (rng.random((2, 20, 36)) + 0.5).astype(dtype)
    cpu = _loss_and_grads(UNet(cfg, seed=1), x, labels, weights)
    gpu_model = UNet(cfg, seed=1).to("cuda")
    gpu = _loss_and_grads(gpu_model, backend.to_device(x), backend.to_device(labels),
                          backend.to_device(weights))

    def rel(a, b):
        return np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)

    assert rel(cpu[0], gpu[0]) <= tol
    assert abs(cpu[1] - gpu[1]) <= tol * abs(cpu[1])
    for k in cpu[2]:
        assert rel(cpu[2][k], gpu[2][k]) <= tol, k


def test_short_training_run_gives_the_same_loss_curve(tmp_path):
    """20 iterations of the tiny preset on each device: the losses agree within float32 noise."""
    curves = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(base=4, depth=4, tile=188, iters=20, lr=0.001, val_every=20,
                          prefetch=0, device=device, data="synthetic:n=3,size=200",
                          out=str(tmp_path / device))
        t = Trainer(cfg, quiet=True)
        losses = []
        for _ in range(cfg.iters):
            losses.append(float(t.step()))
            t.it += 1
        t.sampler.close()
        curves[device] = np.array(losses)
    np.testing.assert_allclose(curves["cuda"], curves["cpu"], rtol=1e-3)
