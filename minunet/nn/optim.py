"""Momentum SGD, as the paper trained the U-Net (Caffe's solver, Jia et al. 2014).

Ronneberger et al. 2015, Sec. 3: "stochastic gradient descent implementation of
Caffe ... we use a high momentum (0.99) such that a large number of the
previously seen training samples determine the update in the current
optimization step." Caffe's convention, per parameter w with gradient g:

    v <- momentum * v - lr_t * (g + weight_decay * w)
    w <- w + v

The learning rate lr_t follows a schedule: constant, step (x gamma every
`step_size` iterations) or poly ((1 - t/max_iter)^power), as in Caffe, with an
optional linear warm-up. The warm-up is not in the paper; it is there because
He-initialised U-Nets start with large logits (|a| ~ 5-10 on the synthetic data,
the ReLU activations' positive mean adding up through the skips), so the first
gradients are large, and momentum 0.99 piles 100 of them up: without a ramp the
first layers' ReLUs died in our runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from minunet import backend


@dataclass
class SGDConfig:
    lr: float = 0.01  # base learning rate (the loss is a per-pixel mean)
    momentum: float = 0.99  # paper: 0.99
    weight_decay: float = 0.0  # L2 penalty added to the gradient (Caffe's weight_decay)
    schedule: str = "constant"  # "constant" | "step" | "poly"
    step_size: int = 1000  # "step": multiply lr by gamma every step_size iterations
    gamma: float = 0.1  # "step": the factor
    power: float = 0.9  # "poly": exponent
    max_iter: int = 10000  # "poly": the iteration where lr reaches 0
    warmup: int = 0  # ramp lr linearly from lr/warmup to lr over the first `warmup` iterations

    def __post_init__(self):
        if self.schedule not in ("constant", "step", "poly"):
            raise ValueError(f"schedule must be constant, step or poly, got {self.schedule!r}")
        if self.lr <= 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {self}")


class MomentumSGD:
    """Momentum SGD over a dict of parameters (updated in place)."""

    def __init__(self, params: dict, config: SGDConfig | None = None):
        self.params = params
        self.config = config or SGDConfig()
        self.velocity = {k: backend.xp_of(p).zeros_like(p) for k, p in params.items()}

    def lr_at(self, it: int) -> float:
        """The learning rate at iteration `it` (0-based)."""
        c = self.config
        ramp = min(1.0, (it + 1) / c.warmup) if c.warmup > 0 else 1.0
        if c.schedule == "step":
            return ramp * c.lr * c.gamma ** (it // c.step_size)
        if c.schedule == "poly":
            return ramp * c.lr * max(0.0, 1.0 - it / c.max_iter) ** c.power
        return ramp * c.lr

    def step(self, grads: dict, it: int) -> None:
        """Apply one update with the gradients of iteration `it`."""
        lr, c = self.lr_at(it), self.config
        names = list(self.params)
        backend.sgd_update_many([self.params[k] for k in names], [self.velocity[k] for k in names],
                                [grads[k] for k in names], lr, c.momentum, c.weight_decay)

    def state_dict(self) -> dict:
        """Velocities as host arrays, keyed 'velocity.<param name>'."""
        return {"velocity." + k: backend.to_host(v) for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.velocity.items():
            src = state["velocity." + k]
            if tuple(src.shape) != tuple(v.shape):
                raise ValueError(f"velocity for {k} has shape {src.shape}, expected {v.shape}")
            v[...] = backend.xp_of(v).asarray(src, dtype=v.dtype)

    def config_dict(self) -> dict:
        return asdict(self.config)


def sgd_update(w, v, g, lr, momentum, weight_decay):
    """Caffe's momentum SGD in place, in plain array code (the lesson's form):
    v <- m v - lr (g + wd w); w <- w + v.

    The backend's twins compute the same update in one pass (Numba on the CPU, a CUDA kernel
    on the GPU: backend.sgd_update); tests/test_optim.py checks that they agree, and the
    coursework's student copy, which has no twins, runs this one (coursework/make.py)."""
    t = w.dtype.type
    v *= t(momentum)
    v -= t(lr) * (g + t(weight_decay) * w)
    w += v
