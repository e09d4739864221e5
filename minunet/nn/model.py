"""What every network has: its config's common fields, the parameter and gradient dicts, the
op module it runs on, its loss, its geometry, state dicts, train/eval mode.

An architecture (one file in minunet/models/) subclasses `ModelConfig` and `Model`, says which
parameters it has (`parameter_shapes`), builds its layers (`build`), and writes `forward` and
`backward`; the registry (minunet/models/registry.py) finds it by name. Everything else that
describes the network (the per-layer table, the ONNX graph, the PyTorch mirror, the
whole-network gradient check) is read off its own `forward` by minunet/nn/trace.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from minunet import backend
from minunet.nn.door import DEFAULT_OPS
from minunet.nn.layers import op_module

# --- the input ---------------------------------------------------------------------

INPUT_MEAN, INPUT_STD = 0.5, 0.25  # images arrive in [0, 1]; EM gray values: mean ~0.5


def standardize(image):
    """Map an image in [0, 1] to the network's input scale: (image - 0.5) / 0.25.

    Training (minunet/training) and inference (minunet/inference) both call this, so a
    model always sees inputs of one scale; centring keeps the first layer's
    pre-activations balanced around 0 (the paper does not say how it scaled inputs).
    """
    return (image - INPUT_MEAN) * (1.0 / INPUT_STD)


# --- the config --------------------------------------------------------------------

# The training losses a config can name (`loss`), each on (logits (N, K, H, W), labels
# (N, H, W), weights (N, H, W)): the U-Net's weighted cross-entropy (on a sigmoid head's [0, z],
# the weighted binary cross-entropy), UNet++'s 0.5 * BCE + (1 - Dice) and UNet 3+'s focal +
# (1 - MS-SSIM) + (1 - IoU) (minunet/ops/loss/combined.py) on the foreground logit
# z = logits[:, 1] - logits[:, 0] against labels == 1 (two classes only; no weight map)
LOSSES = ("softmax_cross_entropy", "bce_dice", "hybrid")
# the smallest output side a loss can take: MS-SSIM's coarsest of five scales (1/16) must hold
# its 11-px window (minunet/ops/loss/msssim.py): 11 * 16
LOSS_MIN_OUTPUT = {"hybrid": 176}


@dataclass
class ModelConfig:
    """The fields every architecture's config has (each adds its own after them)."""

    in_channels: int = 1  # image channels (1: gray-value EM images)
    n_classes: int = 2  # classes of the pixel-wise softmax
    dtype: str = "float32"  # float32 trains; float64 for gradient checks
    ops: str = DEFAULT_OPS  # fast: chunked, threaded, fused (minunet/fast); plain: the lesson
    # (minunet/ops); the default: minunet/nn/door.py
    arch: str = ""  # the architecture (a name in minunet/models/registry.py)
    loss: str = "softmax_cross_entropy"  # the training loss: an op pair of the op module

    def __post_init__(self):
        if self.in_channels < 1 or self.n_classes < 2:
            raise ValueError(f"invalid {type(self).__name__} {self}: need in_channels >= 1 "
                             f"and n_classes >= 2")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.ops not in ("fast", "plain"):
            raise ValueError(f"ops must be 'fast' or 'plain', got {self.ops!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.loss != "softmax_cross_entropy" and self.n_classes != 2:
            raise ValueError(f"loss {self.loss!r} is a two-class loss; n_classes is "
                             f"{self.n_classes}: use loss=softmax_cross_entropy")

    # options that only decide the initial weights (a file of pretrained encoder weights):
    # a model rebuilt from a checkpoint takes its weights from the checkpoint, so they are
    # cleared then (minunet/training/checkpoint.py, `model_from_checkpoint`)
    init_only = ()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls(**json.loads(text))


def fan_in(name: str, shape: tuple) -> int:
    """Incoming connections of one output unit (He et al. 2015), N in std = sqrt(2/N).

    Cin*k*k for a conv weight (Cout, Cin, k, k); Cin for the 2x2 stride-2 up-conv
    weight (Cin, Cout, 2, 2), whose output pixel sees one input pixel per channel;
    1 for a 1-D parameter (a bias or a per-channel scale: one input per unit).
    """
    if len(shape) == 1:
        return 1
    if ".upconv." in name:
        return shape[0]
    n = shape[1]
    for k in shape[2:]:
        n *= k
    return n


def conv_shapes(name: str, cin: int, cout: int, k: int, groups: int = 1,
                bias: bool = True) -> dict[str, tuple]:
    """A convolution's weight (Cout, Cin/groups, k, k) and bias (Cout,) under `name`."""
    return {name + ".weight": (cout, cin // groups, k, k)} | (
        {name + ".bias": (cout,)} if bias else {})


def norm_shapes(name: str, c: int) -> dict[str, tuple]:
    """A BatchNorm's scale and shift (C,) under `name` (initialised to 1 and 0). Its running
    statistics follow from these names (`Model.buffer_shapes`): the last part of a BatchNorm's
    name starts with "bn" ("up0.conv1.bn", "stem.bn0")."""
    if not name.rsplit(".", 1)[-1].startswith("bn"):
        raise ValueError(f"a BatchNorm's name must end in a part that starts with 'bn', got "
                         f"{name!r}")
    return {name + ".weight": (c,), name + ".bias": (c,)}


def conv_norm_shapes(name: str, cin: int, cout: int, k: int,
                     groups: int = 1) -> dict[str, tuple]:
    """The parameters of a ConvNormAct unit (minunet/nn/layers.py): `name.conv.weight`
    (Cout, Cin/groups, k, k), no bias, and the BatchNorm `name.bn`."""
    return conv_shapes(name + ".conv", cin, cout, k, groups, bias=False) | norm_shapes(
        name + ".bn", cout)


def is_norm_scale(name: str) -> bool:
    """Whether `name` is a BatchNorm's scale (gamma): "<...>.bn<...>.weight"."""
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2].startswith("bn")


class Heads(tuple):
    """The outputs of a deeply supervised network in training (UNet++'s four heads, UNet 3+'s
    five): a tuple of logits (N, K, H, W), one per head. The model's loss is the mean of its
    loss over the heads (Model.loss_forward), and `backward` takes a Heads of gradients."""


# --- the model ---------------------------------------------------------------------


class Model:
    """`params` and `grads` dicts, `buffers`, `forward(x, ...)`, `backward(dlogits)`.

    Arrays live on the host (NumPy) or the device (CuPy): `to(device)` moves them.
    `buffers` holds state that is not trained by gradients (running statistics of a
    normalisation layer, say), carried by `state_dict`, checkpoints and --resume like the
    parameters. `training` says whether dropout (and the like) is on (`train()`, the default
    after construction) or off (`eval()`, for inference). Build one with
    `minunet.models.build_model(config)`.

    A subclass sets `arch` and `config_class`, and defines `parameter_shapes()`,
    `build(ops)` (its layers), `layers()`, `geometry_of(config)`, `forward` and `backward`.
    """

    arch = ""
    config_class = ModelConfig

    def __init__(self, config: ModelConfig | None = None, seed: int = 0):
        self.config = config = config or self.config_class(arch=self.arch)
        if config.arch != self.arch:
            raise ValueError(f"{type(self).__name__} built from a config for arch "
                             f"{config.arch!r}; use build_model(config)")
        dtype = np.dtype(config.dtype)
        rng = np.random.default_rng(seed)
        self.params = {}
        for name, shape in self.parameter_shapes().items():
            if name.endswith(".bias"):
                self.params[name] = np.zeros(shape, dtype=dtype)  # biases (and BN shifts) 0
            elif is_norm_scale(name):
                self.params[name] = np.ones(shape, dtype=dtype)  # BN scales 1 (PyTorch's)
            else:  # He normal: std = sqrt(2 / N) (Ronneberger et al. 2015, Sec. 3)
                std = math.sqrt(2.0 / fan_in(name, shape))
                self.params[name] = (rng.standard_normal(shape) * std).astype(dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {name: (np.ones if name.endswith("running_var") else np.zeros)(
            shape, dtype=dtype) for name, shape in self.buffer_shapes().items()}
        self.training = True
        self.ops = op_module(config.ops)  # the lesson's ops or the fast ones
        self.build(self.ops)

    # -- what a subclass defines ---------------------------------------------------------

    def parameter_shapes(self) -> dict[str, tuple]:  # pragma: no cover - abstract
        raise NotImplementedError

    def buffer_shapes(self) -> dict[str, tuple]:
        """State that gradients do not train: a BatchNorm's running statistics
        (`name.running_mean`, `name.running_var` (C,), `name.num_batches_tracked` (1,), kept
        in the model's float dtype so checkpoints hold float arrays), one set per BatchNorm
        of `parameter_shapes` (`norm_shapes`)."""
        out = {}
        for name, shape in self.parameter_shapes().items():
            if is_norm_scale(name):
                bn = name[:-len(".weight")]
                out |= {bn + ".running_mean": shape, bn + ".running_var": shape,
                        bn + ".num_batches_tracked": (1,)}
        return out

    def build(self, ops) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def layers(self) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def geometry_of(cls, config):  # pragma: no cover - abstract
        """The network's Geometry (minunet/nn/geometry.py) for `config`, without building it."""
        raise NotImplementedError

    @property
    def geometry(self):
        return self.geometry_of(self.config)

    @classmethod
    def test_config(cls, **common):
        """A small configuration of this architecture for the tests that run every registered
        one (tests/family/test_tiling.py): a few channels, fast in float64; `common` (dtype,
        in_channels, n_classes, ...) passed to its config. NotImplementedError (the default)
        where an architecture has none: those tests skip it."""
        raise NotImplementedError(f"{cls.__name__} has no test configuration")

    # -- what follows from forward (minunet/nn/trace.py) ----------------------------------

    @classmethod
    def layer_table(cls, config, size: int, batch: int = 1) -> list[dict]:
        """One row per layer for an input (batch, C, size, size), read off `forward`."""
        from minunet.nn import trace

        return trace.layer_table(cls, config, size, batch)

    @classmethod
    def describe(cls, config, size: int, batch: int = 1) -> str:
        """The per-layer table as text (train --describe)."""
        from minunet.nn import trace

        return trace.describe(cls, config, size, batch)

    # -- the loss: the model's own (its config names it) ---------------------------------

    def loss_forward(self, logits, labels, weights):
        """(loss, cache) of the config's loss (LOSSES) on the logits (N, K, H, W); on a Heads
        (deep supervision) the mean of the loss over the heads."""
        if isinstance(logits, Heads):
            parts = [self._loss_forward(h, labels, weights) for h in logits]
            return sum(p[0] for p in parts) / len(parts), Heads(p[1] for p in parts)
        return self._loss_forward(logits, labels, weights)

    def loss_backward(self, cache):
        """dL/dlogits of `loss_forward`'s loss (a Heads of them for a Heads)."""
        if isinstance(cache, Heads):
            return Heads(self._loss_backward(c) / len(cache) for c in cache)
        return self._loss_backward(cache)

    def _loss_forward(self, logits, labels, weights):
        loss = self.config.loss
        if loss == "softmax_cross_entropy":
            return getattr(self.ops, loss + "_forward")(logits, labels, weights)
        from minunet.ops.loss import combined

        z = logits[:, 1:2] - logits[:, 0:1]  # (N, 1, H, W): softmax([a, b])_1 = sigma(b - a)
        targets = (labels == 1).astype(logits.dtype)[:, None]  # (N, 1, H, W)
        fwd = combined.unetpp_loss_forward if loss == "bce_dice" else combined.unet3p_loss_forward
        return fwd(z, targets)

    def _loss_backward(self, cache):
        if self.config.loss == "softmax_cross_entropy":
            return self.ops.softmax_cross_entropy_backward(1.0, cache)
        from minunet.ops.loss import combined

        dz = combined.weighted_sum_backward(1.0, cache)  # (N, 1, H, W)
        return self.xp.concatenate([-dz, dz], axis=1)  # d/d(logits[:, 0]) = -dz

    # -- bookkeeping ---------------------------------------------------------------------

    @property
    def xp(self):
        return backend.xp_of(next(iter(self.params.values())))

    def to(self, device: str):
        """Move parameters, gradients and buffers to 'cpu' or 'cuda' (in place); returns self."""
        for d in (self.params, self.grads, self.buffers):
            for k in d:
                d[k] = backend.to_device(d[k], device)
        return self

    def zero_grad(self) -> None:
        """The one place where gradients are zeroed (they accumulate with +=;
        docs/DESIGN.md, "Gradients accumulate")."""
        for g in self.grads.values():
            g[...] = 0

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.params.values())

    def train(self):
        """Training mode: dropout on (forward needs a dropout_key). Returns self."""
        self.training = True
        return self

    def eval(self):
        """Inference mode: dropout off, forward needs no key. Returns self."""
        self.training = False
        return self

    def release_caches(self) -> None:
        """Drop what the layers keep for a backward pass (after inference, or an aborted step)."""
        for layer in self.layers():
            layer.release()

    def _begin_forward(self, x):
        """What every forward does first: check x (`_check_input`), then drop the last
        forward's caches, which the new ones replace anyway: held while this forward runs,
        they doubled the peak of back-to-back forwards (572/64: 1397 -> 1208 MB)."""
        self._check_input(x)
        self.release_caches()

    def _check_input(self, x):
        c = self.config
        name = type(self).__name__
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} input must be (N, C, H, W), got shape "
                             f"{getattr(x, 'shape', x)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(f"{name} input has {x.shape[1]} channels, the config expects "
                             f"in_channels={c.in_channels} (x shape {x.shape})")
        for s in x.shape[2:]:
            if not self.geometry.is_valid(s):
                raise ValueError(self.geometry.invalid_size_message(s))
        if x.dtype != np.dtype(c.dtype):
            raise ValueError(f"{name} input dtype {x.dtype} differs from the model's {c.dtype}; "
                             f"cast the input (x.astype('{c.dtype}'))")

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Parameters and buffers as host arrays under the contract's names."""
        return {k: backend.to_host(v) for k, v in (self.params | self.buffers).items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameters and buffers in; refuses missing/unexpected keys or shape
        mismatches, listing them."""
        expected = {k: tuple(v.shape) for k, v in (self.params | self.buffers).items()}
        got = {k: tuple(np.shape(v)) for k, v in state.items()}
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(f"{k}: checkpoint {got[k]} vs model {expected[k]}"
                       for k in set(got) & set(expected) if got[k] != expected[k])
        if missing or unexpected or wrong:
            lines = []
            if missing:
                lines.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}"
                             + (" ..." if len(missing) > 8 else ""))
            if unexpected:
                lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                             + (" ..." if len(unexpected) > 8 else ""))
            if wrong:
                lines.append(f"shape mismatches ({len(wrong)}): " + "; ".join(wrong[:8]))
            raise ValueError("state dict does not fit this model (was it saved with another "
                             "config? compare base, depth, in_channels, n_classes):\n  "
                             + "\n  ".join(lines))
        xp = self.xp
        for d in (self.params, self.buffers):
            for k in d:
                d[k] = xp.asarray(np.asarray(state[k]), dtype=d[k].dtype)


def subkey(key, i):
    """Independent dropout keys per dropout layer, derived from one step key."""
    if key is None:
        return None
    return (key * 2 + i) & 0xFFFFFFFFFFFFFFFF
