"""Momentum SGD (minunet/nn/optim.py) on the CPU: the twin's update (backend.sgd_update, Numba)
equals the plain update written out in optim.sgd_update, and the schedules give their numbers."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.nn.optim import MomentumSGD, SGDConfig, sgd_update


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_step_is_the_plain_update(dtype):
    rng = np.random.default_rng(0)
    params = {"a.weight": rng.standard_normal((3, 4, 3, 3)).astype(dtype),
              "a.bias": rng.standard_normal(3).astype(dtype)}
    plain_w = {k: v.copy() for k, v in params.items()}
    plain_v = {k: np.zeros_like(v) for k, v in params.items()}
    opt = MomentumSGD(params, SGDConfig(lr=0.1, momentum=0.9, weight_decay=0.01))
    for it in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(dtype) for k, v in params.items()}
        opt.step(grads, it)
        for k in params:
            sgd_update(plain_w[k], plain_v[k], grads[k], 0.1, 0.9, 0.01)
    tol = 1e-6 if dtype == "float32" else 1e-14
    for k in params:
        assert params[k].dtype == np.dtype(dtype)
        np.testing.assert_allclose(params[k], plain_w[k], rtol=tol, atol=tol)
        np.testing.assert_allclose(opt.velocity[k], plain_v[k], rtol=tol, atol=tol)


def test_one_step_by_hand():
    w, g = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    opt = MomentumSGD({"w": w}, SGDConfig(lr=0.1, momentum=0.99))
    opt.step({"w": g}, 0)  # v = -0.1 g; w = w + v
    np.testing.assert_allclose(w, [0.95, -2.025])
    opt.step({"w": g}, 1)  # v = 0.99 v - 0.1 g
    np.testing.assert_allclose(opt.velocity["w"], [-0.0995, -0.049750])


def test_schedules_and_warmup():
    lr = MomentumSGD({}, SGDConfig(lr=1.0, schedule="poly", max_iter=10, power=1.0)).lr_at
    assert lr(0) == 1.0 and lr(5) == 0.5 and lr(10) == 0.0
    lr = MomentumSGD({}, SGDConfig(lr=1.0, schedule="step", step_size=2, gamma=0.5)).lr_at
    assert [lr(i) for i in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    lr = MomentumSGD({}, SGDConfig(lr=1.0, warmup=4)).lr_at
    assert [lr(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="schedule"):
        SGDConfig(schedule="cosine")
