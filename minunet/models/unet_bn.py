"""The U-Net with BatchNorm and padded convolutions: the layout of the most used PyTorch port
(milesial/Pytorch-UNet), written out level by level.

    input (N, C, S, S), S a multiple of 16
    down0: [conv3x3 -> BN -> ReLU] x 2        64 ch   S        --skip-----------.
    pool   2x2 max-pool                                S/2                       |
    down1 .. down3 (128, 256, 512 ch)                  ... S/8                   |
    bottleneck: [conv3x3 -> BN -> ReLU] x 2 1024 ch   S/16                      |
    up3 .. up1                                         ...                       |
    up0: upconv2x2 (halves channels), concat [skip, up], [conv3x3-BN-ReLU] x 2 <-'
    final: conv1x1 -> K class scores (softmax) or one score z -> [0, z] (sigmoid)   S x S

What it changes from the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015,
minunet/models/unet.py): every 3x3 convolution is padded (padding 1), so the output has the
input's size and no skip is cropped; each convolution loses its bias and gains a BatchNorm
(Ioffe and Szegedy, ICML 2015) before its ReLU (the port's DoubleConv); there is no dropout.
The up-convolution (2x2, stride 2, with bias, no ReLU) and the 1x1 head (with bias) are the
paper's.

Parameters at the reference configuration (base 64, depth 4, transposed-conv up-sampling):
31,036,546 for 1 input channel and 2 classes (softmax head); 31,037,633 for 3 input channels
and one output channel (head="sigmoid"), as the port counts them (n_channels=3, n_classes=1).

Choices the paper leaves open, and the port's answers taken here:
- the up-sampled map is padded to the skip's size in the port (F.pad) before the concat;
  here every input side is a multiple of the grid 2^depth (PaddedGeometry refuses the rest,
  naming the nearest valid sizes), so that pad is always 0 and the forward has no
  size-dependent step;
- the skip comes first in the concat: [skip, up], as in the paper and the port;
- option `bilinear=True` is the port's other up-sampling: bilinear x2 with
  align_corners=True (no weights), the bottleneck halved (1024 // 2 channels) and each
  decoder level's DoubleConv(in, out, mid=in // 2) with out = in // 4 (in // 2 at level 0):
  17,262,977 parameters for 3 -> 1. align_corners=True samples the map at positions
  i * (n - 1) / (2n - 1), which depend on the map's size n: the up-sampled values of a tile
  are not those of the whole image, shifted (the layer is not translation-equivariant), so
  exact overlap-tile inference cannot hold for this option; the transposed conv (default)
  has no such problem.

Parameter names: `down{i}.conv{j}.conv.weight`, `down{i}.conv{j}.bn.weight|bias` (the
ConvNormAct units of minunet/nn/layers.py; BatchNorm buffers `...bn.running_mean|var`,
`...bn.num_batches_tracked`), `bottleneck.conv{j}...`, `up{i}.upconv.weight|bias` (Cin, Cout,
2, 2) as torch's ConvTranspose2d, `up{i}.conv{j}...`, `final.weight|bias`.
`forward` and `backward` are mirror images: read them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.models.registry import register
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import (
    BinaryHead,
    Concat,
    ConvGeneral,
    ConvNormAct,
    MaxPool,
    UpConv,
    Upsample,
)
from minunet.nn.model import Model, ModelConfig, conv_norm_shapes, conv_shapes

HEADS = ("softmax", "sigmoid")


@dataclass
class UNetBNConfig(ModelConfig):
    """The options of the U-Net with BatchNorm, after those every architecture has."""

    arch: str = "unet-bn"  # the architecture build_model makes (minunet/models/registry.py)
    base: int = 64  # channels at level 0, doubling per level (64 .. 1024 in the port)
    depth: int = 4  # poolings (4 in the port: 5 levels with the bottleneck)
    bilinear: bool = False  # the port's bilinear up-sampling (align_corners=True, no weights)
    head: str = "softmax"  # softmax: n_classes outputs; sigmoid: one output z -> logits [0, z]

    def __post_init__(self):
        super().__post_init__()
        if self.depth < 1 or self.base < 1:
            raise ValueError(f"invalid UNetBNConfig {self}: need depth >= 1 and base >= 1")
        if self.bilinear and self.base < 2:
            raise ValueError("bilinear=True halves the channels of every decoder level but "
                             "the first: base must be >= 2")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"head='sigmoid' has one output channel (two classes); "
                             f"n_classes is {self.n_classes}: use head='softmax'")


# --- the network -----------------------------------------------------------------


def channels(config: UNetBNConfig, level: int) -> int:
    """Channels of the encoder at a level: base * 2^level (64, 128, 256, 512, 1024)."""
    return config.base * 2**level


def decoder_channels(config: UNetBNConfig, level: int) -> tuple[int, int]:
    """(mid, out) channels of decoder level `level`'s two convolutions: (c, c) with the
    transposed conv; with bilinear up-sampling (c, c // 2), but (c, c) at level 0, c the
    encoder's channels there (the port's Up(in, out) with DoubleConv(in, out, in // 2))."""
    c = channels(config, level)
    if config.bilinear and level > 0:
        return c, c // 2
    return c, c


def parameter_shapes(config: UNetBNConfig) -> dict[str, tuple]:
    """Every parameter's name and shape (module doc), in torch's layouts."""
    shapes = {}
    cin = config.in_channels
    for i in range(config.depth):
        c = channels(config, i)
        shapes |= conv_norm_shapes(f"down{i}.conv0", cin, c, 3)
        shapes |= conv_norm_shapes(f"down{i}.conv1", c, c, 3)
        cin = c
    c = channels(config, config.depth) // (2 if config.bilinear else 1)
    shapes |= conv_norm_shapes("bottleneck.conv0", cin, c, 3)
    shapes |= conv_norm_shapes("bottleneck.conv1", c, c, 3)
    for i in reversed(range(config.depth)):
        c_below, c_skip = c, channels(config, i)  # c: what comes up from the level below
        if not config.bilinear:  # (Cin, Cout, 2, 2) as ConvTranspose2d; halves the channels
            shapes[f"up{i}.upconv.weight"] = (c_below, c_skip, 2, 2)
            shapes[f"up{i}.upconv.bias"] = (c_skip,)
            c_below = c_skip
        mid, c = decoder_channels(config, i)
        shapes |= conv_norm_shapes(f"up{i}.conv0", c_skip + c_below, mid, 3)
        shapes |= conv_norm_shapes(f"up{i}.conv1", mid, c, 3)
    n_out = config.n_classes if config.head == "softmax" else 1
    shapes |= conv_shapes("final", c, n_out, 1)
    return shapes


@register("unet-bn")
class UNetBN(Model):
    """The U-Net with BatchNorm (module doc): `params`, `grads`, `buffers` (the BatchNorms'
    running statistics), `forward(x)`, `backward(dlogits)`; the rest is every model's
    (minunet/nn/model.py). Build one with `build_model(UNetBNConfig(...))`."""

    config_class = UNetBNConfig

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def build(self, o) -> None:
        config, d = self.config, self.config.depth
        self.down = [(ConvNormAct(o, f"down{i}.conv0", self),
                      ConvNormAct(o, f"down{i}.conv1", self)) for i in range(d)]
        self.pools = [MaxPool(o) for _ in range(d)]  # the U-Net's 2x2 pool (fast twin)
        self.mid = (ConvNormAct(o, "bottleneck.conv0", self),
                    ConvNormAct(o, "bottleneck.conv1", self))
        self.ups = [Upsample(o, "bilinear", 2, align_corners=True) if config.bilinear
                    else UpConv(o, f"up{i}.upconv") for i in range(d)]
        self.cats = [Concat(o) for _ in range(d)]
        self.up = [(ConvNormAct(o, f"up{i}.conv0", self), ConvNormAct(o, f"up{i}.conv1", self))
                   for i in range(d)]
        self.final = ConvGeneral(o, "final", padding=0, relu=False)
        self.binary = BinaryHead(o)

    @classmethod
    def test_config(cls, **common):
        """base 2, depth 2 (radius 22: tiles of a few dozen px)."""
        return UNetBNConfig(**{"base": 2, "depth": 2, **common})

    @classmethod
    def geometry_of(cls, config: UNetBNConfig) -> PaddedGeometry:
        """Output side = input side; sides (and tile origins) multiples of 2^depth."""
        return PaddedGeometry(grid=2**config.depth)

    def layers(self) -> list:
        """Every layer object, in forward order."""
        out = []
        for i in range(self.config.depth):
            out += [*self.down[i], self.pools[i]]
        out += [*self.mid]
        for i in reversed(range(self.config.depth)):
            out += [self.ups[i], self.cats[i], *self.up[i]]
        return out + [self.final, self.binary]

    def _up_forward(self, i, h):
        """The up-sampling of level i: the transposed conv (with parameters) or bilinear."""
        return self.ups[i].forward(h) if self.config.bilinear else self.ups[i].forward(
            self.params, h)

    def _up_backward(self, i, dh):
        return self.ups[i].backward(dh) if self.config.bilinear else self.ups[i].backward(
            self.grads, dh)

    # -- forward and backward, mirror images ----------------------------------------

    def forward(self, x, dropout_key: int | None = None):
        """x: (N, in_channels, S, S'), S and S' multiples of 2^depth. Returns logits
        (N, K, S, S') (K = 2 with the sigmoid head: [0, z]). No dropout: `dropout_key` is
        accepted and ignored."""
        self._begin_forward(x)
        p = self.params
        skips = []
        h = x
        for i in range(self.config.depth):  # contracting path
            h = self.down[i][0].forward(p, h)
            h = self.down[i][1].forward(p, h)
            skips.append(h)
            h = self.pools[i].forward(h)
        h = self.mid[0].forward(p, h)  # bottleneck
        h = self.mid[1].forward(p, h)
        for i in reversed(range(self.config.depth)):  # expansive path
            h = self._up_forward(i, h)  # the port's F.pad to the skip's size: 0 on the grid
            h = self.cats[i].forward(skips[i], h)  # [skip, up]
            h = self.up[i][0].forward(p, h)
            h = self.up[i][1].forward(p, h)
        h = self.final.forward(p, h)
        return self.binary.forward(h) if self.config.head == "sigmoid" else h

    def backward(self, dlogits):
        """dlogits: (N, K, S, S'). Adds every parameter gradient into self.grads."""
        g = self.grads
        dh = self.binary.backward(dlogits) if self.config.head == "sigmoid" else dlogits
        dh = self.final.backward(g, dh)
        dskips = [None] * self.config.depth
        for i in range(self.config.depth):  # expansive path, in reverse
            dh = self.up[i][1].backward(g, dh)
            dh = self.up[i][0].backward(g, dh)
            dskips[i], dh = self.cats[i].backward(dh)
            dh = self._up_backward(i, dh)
        dh = self.mid[1].backward(g, dh)  # bottleneck
        dh = self.mid[0].backward(g, dh)
        for i in reversed(range(self.config.depth)):  # contracting path, in reverse
            dh = self.pools[i].backward(dh)
            dh = dh + dskips[i]  # the encoder map fed both the pool and the skip
            dh = self.down[i][1].backward(g, dh)
            dh = self.down[i][0].backward(g, dh)
