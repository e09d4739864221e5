"""The U-Net of Ronneberger, Fischer and Brox (2015), written out level by level.

    input (N, 1, 572, 572)
    down0: conv3x3+ReLU, conv3x3+ReLU   64 ch  572 -> 568  --skip--------------.
    pool                                          568 -> 284                    |
    down1 .. down3 (128, 256, 512 ch)             ...  -> 64 -> 32              |
    bottleneck: 2 x conv3x3+ReLU      1024 ch       32 -> 28                    |
    up3 .. up1                                     ...                          |
    up0: upconv2x2 (halves channels), concat [crop(skip), up], 2 x conv3x3  <--'
    final: conv1x1 -> K class scores                      388 x 388

23 conv layers (18 3x3, 4 up-conv 2x2, one 1x1), 31,030,658 parameters for one
input channel and two classes. Dropout (p = 0.5) sits at the end of the
contracting path: on the deepest encoder output and the bottleneck output.
`forward` and `backward` are mirror images: read them side by side.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from minunet import backend
from minunet.models.sizes import invalid_size_message, is_valid_size, output_size, receptive_field
from minunet.nn.layers import Conv, Dropout, MaxPool, SkipConcat, UpConv, op_module


@dataclass
class UNetConfig:
    in_channels: int = 1  # paper: 1 (gray-value EM images)
    n_classes: int = 2  # paper: 2 (cell, membrane); a pixel-wise softmax over K classes
    depth: int = 4  # paper: 4 poolings (5 levels incl. the bottleneck)
    base: int = 64  # paper: 64 channels at level 0, doubling per level up to 1024
    dropout: float = 0.5  # paper: drop-out at the end of the contracting path
    upconv_relu: bool = False  # the paper text has none after the up-conv; the released model had
    dtype: str = "float32"  # float32 trains; float64 for gradient checks
    ops: str = "fast"  # fast: chunked, threaded, fused (minunet/fast); plain: the lesson (ops/)
    arch: str = "unet"  # the architecture build_model makes (see ARCHITECTURES)

    def __post_init__(self):
        if self.depth < 1 or self.base < 1 or self.in_channels < 1 or self.n_classes < 2:
            raise ValueError(f"invalid UNetConfig {self}: need depth, base, in_channels >= 1 "
                             f"and n_classes >= 2")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ops not in ("fast", "plain"):
            raise ValueError(f"ops must be 'fast' or 'plain', got {self.ops!r}")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; known: "
                             f"{', '.join(sorted(ARCHITECTURES))}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UNetConfig:
        return cls(**json.loads(text))


# --- the input ---------------------------------------------------------------------

INPUT_MEAN, INPUT_STD = 0.5, 0.25  # images arrive in [0, 1]; EM gray values: mean ~0.5


def standardize(image):
    """Map an image in [0, 1] to the network's input scale: (image - 0.5) / 0.25.

    Training (minunet.train) and inference (minunet.inference.tiles) both call this, so a
    model always sees inputs of one scale; centring keeps the first layer's
    pre-activations balanced around 0 (the paper does not say how it scaled inputs).
    """
    return (image - INPUT_MEAN) * (1.0 / INPUT_STD)


# --- the network -----------------------------------------------------------------


def channels(config: UNetConfig, level: int) -> int:
    """Channels at a level: base * 2^level (64, 128, 256, 512, 1024 in the paper)."""
    return config.base * 2**level


def parameter_shapes(config: UNetConfig) -> dict[str, tuple]:
    """Every parameter's name and shape, in the contract's names and layouts
    (docs/DESIGN.md, "Parameter names and layouts")."""
    shapes = {}
    cin = config.in_channels
    for i in range(config.depth):
        c = channels(config, i)
        shapes |= _conv_shapes(f"down{i}.conv0", cin, c, 3)
        shapes |= _conv_shapes(f"down{i}.conv1", c, c, 3)
        cin = c
    c = channels(config, config.depth)
    shapes |= _conv_shapes("bottleneck.conv0", cin, c, 3)
    shapes |= _conv_shapes("bottleneck.conv1", c, c, 3)
    for i in reversed(range(config.depth)):
        c_up, c = channels(config, i + 1), channels(config, i)
        shapes[f"up{i}.upconv.weight"] = (c_up, c, 2, 2)  # (Cin, Cout, 2, 2) as ConvTranspose2d
        shapes[f"up{i}.upconv.bias"] = (c,)
        shapes |= _conv_shapes(f"up{i}.conv0", 2 * c, c, 3)
        shapes |= _conv_shapes(f"up{i}.conv1", c, c, 3)
    shapes |= _conv_shapes("final", config.base, config.n_classes, 1)
    return shapes


def _conv_shapes(name, cin, cout, k):
    return {name + ".weight": (cout, cin, k, k), name + ".bias": (cout,)}


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


class UNet:
    """The U-Net: `params` and `grads` dicts, `forward(x, ...)`, `backward(dlogits)`.

    Arrays live on the host (NumPy) or the device (CuPy): `to(device)` moves them.
    `buffers` holds state that is not trained by gradients (running statistics of
    a normalisation layer, say): empty for the paper's U-Net, but carried by
    `state_dict`, checkpoints and --resume like the parameters. `training` says
    whether dropout is on (`train()`, the default after construction) or off
    (`eval()`, for inference). Build one with `build_model(config)`.
    """

    arch = "unet"

    def __init__(self, config: UNetConfig | None = None, seed: int = 0):
        self.config = config = config or UNetConfig()
        if config.arch != self.arch:
            raise ValueError(f"UNet built from a config for arch {config.arch!r}; "
                             f"use build_model(config)")
        dtype = np.dtype(config.dtype)
        rng = np.random.default_rng(seed)
        self.params = {}
        for name, shape in parameter_shapes(config).items():
            if name.endswith(".bias"):
                self.params[name] = np.zeros(shape, dtype=dtype)  # paper: biases 0
            else:  # He normal: std = sqrt(2 / N) (Ronneberger et al. 2015, Sec. 3)
                std = math.sqrt(2.0 / fan_in(name, shape))
                self.params[name] = (rng.standard_normal(shape) * std).astype(dtype)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers: dict = {}  # none in the paper's U-Net (it has no normalisation layers)
        self.training = True
        o, d = op_module(config.ops), config.depth  # the lesson's ops or the fast ones
        self.down = [(Conv(o, f"down{i}.conv0"), Conv(o, f"down{i}.conv1")) for i in range(d)]
        self.pools = [MaxPool(o) for _ in range(d)]
        self.mid = (Conv(o, "bottleneck.conv0"), Conv(o, "bottleneck.conv1"))
        self.drop_enc, self.drop_mid = Dropout(o, config.dropout), Dropout(o, config.dropout)
        self.ups = [UpConv(o, f"up{i}.upconv", relu=config.upconv_relu) for i in range(d)]
        self.skips = [SkipConcat(o) for _ in range(d)]
        self.up = [(Conv(o, f"up{i}.conv0"), Conv(o, f"up{i}.conv1")) for i in range(d)]
        self.final = Conv(o, "final", relu=False)

    # -- bookkeeping ---------------------------------------------------------------

    @property
    def xp(self):
        return backend.xp_of(self.params["final.weight"])

    def to(self, device: str) -> UNet:
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

    def train(self) -> UNet:
        """Training mode: dropout on (forward needs a dropout_key). Returns self."""
        self.training = True
        return self

    def eval(self) -> UNet:
        """Inference mode: dropout off, forward needs no key. Returns self."""
        self.training = False
        return self

    def layers(self) -> list:
        """Every layer object, in forward order."""
        out = []
        for i in range(self.config.depth):
            out += [*self.down[i], self.pools[i]]
        out += [self.drop_enc, *self.mid, self.drop_mid]
        for i in reversed(range(self.config.depth)):
            out += [self.ups[i], self.skips[i], *self.up[i]]
        return out + [self.final]

    def release_caches(self) -> None:
        """Drop what the layers keep for a backward pass (after inference, or an aborted step)."""
        for layer in self.layers():
            layer.release()

    # -- forward and backward, mirror images ----------------------------------------

    def forward(self, x, dropout_key: int | None = None):
        """x: (N, in_channels, S, S') with valid S, S'. Returns logits (N, K, S-184, S'-184).

        dropout_key: in training mode an int that seeds this step's dropout masks
        (same key, same masks, on CPU and GPU alike); ignored in eval mode.
        """
        self._check_input(x)
        if not self.training:
            dropout_key = None
        elif dropout_key is None and self.config.dropout > 0:
            raise ValueError("the model is in training mode, so its dropout needs a "
                             "dropout_key (an int); call model.eval() for inference")
        p = self.params
        skips = []
        h = x
        for i in range(self.config.depth):  # contracting path
            h = self.down[i][0].forward(p, h)
            h = self.down[i][1].forward(p, h)
            if i == self.config.depth - 1:  # end of the contracting path
                h = self.drop_enc.forward(h, _subkey(dropout_key, 0))
            skips.append(h)
            h = self.pools[i].forward(h)
        h = self.mid[0].forward(p, h)  # bottleneck
        h = self.mid[1].forward(p, h)
        h = self.drop_mid.forward(h, _subkey(dropout_key, 1))
        for i in reversed(range(self.config.depth)):  # expansive path
            h = self.ups[i].forward(p, h)
            h = self.skips[i].forward(skips[i], h)
            h = self.up[i][0].forward(p, h)
            h = self.up[i][1].forward(p, h)
        return self.final.forward(p, h)

    def backward(self, dlogits):
        """dlogits: (N, K, S-184, S'-184). Adds every parameter gradient into self.grads."""
        g = self.grads
        dh = self.final.backward(g, dlogits)
        dskips = [None] * self.config.depth
        for i in range(self.config.depth):  # expansive path, in reverse
            dh = self.up[i][1].backward(g, dh)
            dh = self.up[i][0].backward(g, dh)
            dskips[i], dh = self.skips[i].backward(dh)
            dh = self.ups[i].backward(g, dh)
        dh = self.drop_mid.backward(dh)  # bottleneck
        dh = self.mid[1].backward(g, dh)
        dh = self.mid[0].backward(g, dh)
        for i in reversed(range(self.config.depth)):  # contracting path, in reverse
            dh = self.pools[i].backward(dh)
            dh += dskips[i]  # the encoder map fed both the pool and the skip
            if i == self.config.depth - 1:
                dh = self.drop_enc.backward(dh)
            dh = self.down[i][1].backward(g, dh)
            dh = self.down[i][0].backward(g, dh, need_dx=i > 0)

    def _check_input(self, x):
        c = self.config
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"UNet input must be (N, C, H, W), got shape {getattr(x, 'shape', x)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(f"UNet input has {x.shape[1]} channels, the config expects "
                             f"in_channels={c.in_channels} (x shape {x.shape})")
        for s in x.shape[2:]:
            if not is_valid_size(s, c.depth):
                raise ValueError(invalid_size_message(s, c.depth))
        if x.dtype != np.dtype(c.dtype):
            raise ValueError(f"UNet input dtype {x.dtype} differs from the model's {c.dtype}; "
                             f"cast the input (x.astype('{c.dtype}'))")

    # -- state ----------------------------------------------------------------------

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


ARCHITECTURES = {"unet": UNet}  # arch name (UNetConfig.arch, checkpoints) -> model class


def build_model(config: UNetConfig | None = None, seed: int = 0):
    """The model that `config.arch` names, freshly initialised from `seed`.

    The one way train, predict, infer and bench make a model, so a checkpoint's
    config rebuilds exactly what was trained.
    """
    config = config or UNetConfig()
    return ARCHITECTURES[config.arch](config, seed=seed)


def _subkey(key, i):
    """Independent dropout keys per dropout layer, derived from one step key."""
    if key is None:
        return None
    return (key * 2 + i) & 0xFFFFFFFFFFFFFFFF


# --- a per-layer table: shapes, parameters, FLOPs, memory ---------------------------


def layer_table(config: UNetConfig, size: int, batch: int = 1) -> list[dict]:
    """One row per layer for an input (batch, in_channels, size, size): name, output shape,
    parameters, forward GFLOP (2 per multiply-add), output MB, im2col workspace MB."""
    if not is_valid_size(size, config.depth):
        raise ValueError(invalid_size_message(size, config.depth))
    item = np.dtype(config.dtype).itemsize
    rows = []

    def add(name, cin, cout, k, s_out, kind="conv"):
        n_out = batch * cout * s_out * s_out
        if kind == "conv":
            params, flops = cout * cin * k * k + cout, 2 * n_out * cin * k * k
            cols = 0 if k == 1 else min(backend.WORKSPACE_BYTES, cin * k * k * s_out**2 * item)
        elif kind == "upconv":
            params, flops, cols = cin * cout * 4 + cout, 2 * n_out * cin, 0
        else:  # pool
            params, flops, cols = 0, 0, 0
        rows.append({"layer": name, "out": (batch, cout, s_out, s_out), "params": params,
                     "gflop": flops / 1e9, "act_mb": n_out * item / 2**20,
                     "im2col_mb": cols / 2**20})

    s, cin = size, config.in_channels
    for i in range(config.depth):
        c = channels(config, i)
        add(f"down{i}.conv0", cin, c, 3, s - 2)
        add(f"down{i}.conv1", c, c, 3, s - 4)
        s, cin = (s - 4) // 2, c
        add(f"down{i}.pool", c, c, 2, s, kind="pool")
    c = channels(config, config.depth)
    add("bottleneck.conv0", cin, c, 3, s - 2)
    add("bottleneck.conv1", c, c, 3, s - 4)
    s, cin = s - 4, c
    for i in reversed(range(config.depth)):
        c = channels(config, i)
        add(f"up{i}.upconv", cin, c, 2, 2 * s, kind="upconv")
        add(f"up{i}.conv0", 2 * c, c, 3, 2 * s - 2)
        add(f"up{i}.conv1", c, c, 3, 2 * s - 4)
        s, cin = 2 * s - 4, c
    add("final", cin, config.n_classes, 1, s)
    return rows


def describe(config: UNetConfig, size: int = 572, batch: int = 1) -> str:
    """The per-layer table as text, with totals (forward GFLOP, about 3x for a training step)."""
    rows = layer_table(config, size, batch)
    lines = [f"U-Net depth {config.depth}, base {config.base}, {config.in_channels} -> "
             f"{config.n_classes} classes, {config.dtype}, input {batch}x{size}x{size} -> output "
             f"{output_size(size, config.depth)}; receptive field "
             f"{receptive_field(config.depth)} px",
             f"{'layer':<18}{'output (N,C,H,W)':<24}{'params':>12}{'GFLOP':>10}"
             f"{'act MB':>10}{'im2col MB':>11}"]
    for r in rows:
        lines.append(f"{r['layer']:<18}{str(r['out']):<24}{r['params']:>12,}{r['gflop']:>10.2f}"
                     f"{r['act_mb']:>10.1f}{r['im2col_mb']:>11.1f}")
    tot_p = sum(r["params"] for r in rows)
    tot_f = sum(r["gflop"] for r in rows)
    tot_a = sum(r["act_mb"] for r in rows)
    lines.append(f"{'total':<42}{tot_p:>12,}{tot_f:>10.1f}{tot_a:>10.1f}"
                 f"{max(r['im2col_mb'] for r in rows):>11.1f}")
    lines.append(f"training step ~ {3 * tot_f:.0f} GFLOP (forward + 2x backward); "
                 f"activations kept for backward ~ {2 * tot_a:.0f} MB (outputs and ReLU caches)")
    return "\n".join(lines)
