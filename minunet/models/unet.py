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

from dataclasses import dataclass

from minunet.models.registry import ARCHITECTURES, build_model, register
from minunet.models.sizes import (
    ValidUNetGeometry,
    invalid_size_message,
    is_valid_size,
    output_size,
    receptive_field,
)
from minunet.nn import trace
from minunet.nn.layers import Conv, Dropout, MaxPool, SkipConcat, UpConv
from minunet.nn.model import INPUT_MEAN, INPUT_STD, Model, ModelConfig, fan_in, standardize
from minunet.nn.model import conv_shapes as _conv_shapes
from minunet.nn.model import subkey as _subkey

__all__ = ["ARCHITECTURES", "INPUT_MEAN", "INPUT_STD", "UNet", "UNetConfig", "build_model",
           "channels", "describe", "fan_in", "layer_table", "parameter_shapes", "standardize"]


@dataclass
class UNetConfig(ModelConfig):
    """The U-Net's options, after those every architecture has (minunet/nn/model.py)."""

    arch: str = "unet"  # the architecture build_model makes (minunet/models/registry.py)
    depth: int = 4  # paper: 4 poolings (5 levels incl. the bottleneck)
    base: int = 64  # paper: 64 channels at level 0, doubling per level up to 1024
    dropout: float = 0.5  # paper: drop-out at the end of the contracting path
    upconv_relu: bool = False  # the paper text has none after the up-conv; the released model had

    def __post_init__(self):
        super().__post_init__()
        if self.depth < 1 or self.base < 1:
            raise ValueError(f"invalid UNetConfig {self}: need depth, base, in_channels >= 1 "
                             f"and n_classes >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        from minunet.models.registry import get

        get(self.arch)  # ValueError naming the known ones


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


@register("unet")
class UNet(Model):
    """The U-Net: `params` and `grads` dicts, `forward(x, ...)`, `backward(dlogits)`; the rest
    (devices, modes, state dicts, its loss) is every model's (minunet/nn/model.py).
    `buffers` is empty: the paper's U-Net has no normalisation layers. Build one with
    `build_model(config)`.
    """

    config_class = UNetConfig

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def build(self, o) -> None:
        config, d = self.config, self.config.depth
        self.down = [(Conv(o, f"down{i}.conv0"), Conv(o, f"down{i}.conv1")) for i in range(d)]
        self.pools = [MaxPool(o) for _ in range(d)]
        self.mid = (Conv(o, "bottleneck.conv0"), Conv(o, "bottleneck.conv1"))
        self.drop_enc, self.drop_mid = Dropout(o, config.dropout), Dropout(o, config.dropout)
        self.ups = [UpConv(o, f"up{i}.upconv", relu=config.upconv_relu) for i in range(d)]
        self.skips = [SkipConcat(o) for _ in range(d)]
        self.up = [(Conv(o, f"up{i}.conv0"), Conv(o, f"up{i}.conv1")) for i in range(d)]
        self.final = Conv(o, "final", relu=False)

    @classmethod
    def geometry_of(cls, config: UNetConfig) -> ValidUNetGeometry:
        """Valid sizes 124 + 16b at depth 4, margin 184, tiles on the 16-px grid."""
        return ValidUNetGeometry(config.depth)

    @classmethod
    def describe(cls, config: UNetConfig, size: int = 572, batch: int = 1) -> str:
        """The per-layer table (`describe` below: with the U-Net's title)."""
        return describe(config, size, batch)

    def layers(self) -> list:
        """Every layer object, in forward order."""
        out = []
        for i in range(self.config.depth):
            out += [*self.down[i], self.pools[i]]
        out += [self.drop_enc, *self.mid, self.drop_mid]
        for i in reversed(range(self.config.depth)):
            out += [self.ups[i], self.skips[i], *self.up[i]]
        return out + [self.final]

    # -- forward and backward, mirror images ----------------------------------------

    def forward(self, x, dropout_key: int | None = None):
        """x: (N, in_channels, S, S') with valid S, S'. Returns logits (N, K, S-184, S'-184).

        dropout_key: in training mode an int that seeds this step's dropout masks
        (same key, same masks, on CPU and GPU alike); ignored in eval mode.
        """
        self._begin_forward(x)
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


# --- a per-layer table: shapes, parameters, FLOPs, memory ---------------------------
# read off forward by minunet/nn/trace.py (the shape-only op namespace): nothing here repeats
# the network's shapes


def layer_table(config: UNetConfig, size: int, batch: int = 1) -> list[dict]:
    """One row per layer for an input (batch, in_channels, size, size): name, output shape,
    parameters, forward GFLOP (2 per multiply-add), output MB, im2col workspace MB."""
    if not is_valid_size(size, config.depth):
        raise ValueError(invalid_size_message(size, config.depth))
    return trace.layer_table(UNet, config, size, batch)


def describe(config: UNetConfig, size: int = 572, batch: int = 1) -> str:
    """The per-layer table as text, with totals (forward GFLOP, about 3x for a training step)."""
    title = (f"U-Net depth {config.depth}, base {config.base}, {config.in_channels} -> "
             f"{config.n_classes} classes, {config.dtype}, input {batch}x{size}x{size} -> output "
             f"{output_size(size, config.depth) if is_valid_size(size, config.depth) else '?'}; "
             f"receptive field {receptive_field(config.depth)} px")
    return trace.describe(UNet, config, size, batch, title=title)
