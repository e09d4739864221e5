"""The deep residual U-Net (ResUNet) of Zhang, Liu and Wang, "Road Extraction by Deep Residual
U-Net", IEEE Geoscience and Remote Sensing Letters 15(5), 2018 (arXiv:1711.10684), written
out unit by unit.

    input (N, C, S, S), S a multiple of 8
    enc0:   conv3x3 -> BN-ReLU-conv3x3          (+ conv1x1 -> BN)      64 ch  S    --skip----.
    enc1:   BN-ReLU-conv3x3/2 -> BN-ReLU-conv3x3 (+ conv1x1/2 -> BN)  128 ch  S/2  --skip--. |
    enc2:   the same                                                  256 ch  S/4  --skip. | |
    bridge: the same                                                  512 ch  S/8         | | |
    dec2:   up x2, concat [up, skip], BN-ReLU-conv3x3 -> BN-ReLU-conv3x3
                                                 (+ conv1x1 -> BN)    256 ch  S/4  <------' | |
    dec1:   the same                                                  128 ch  S/2  <--------' |
    dec0:   the same                                                   64 ch  S    <----------'
    final:  conv1x1 -> one score z -> two-class logits [0, z] (sigmoid head)

Seven levels (three encoding units, a bridge, three decoding units), 15 convolutional layers
on the main path and a 1x1 head. What it changes from the U-Net of Ronneberger, Fischer and
Brox (2015, minunet/models/unet.py): every level is one full pre-activation residual unit (He
et al., ECCV 2016: BN -> ReLU -> conv, twice, plus a shortcut) instead of two conv+ReLU;
convolutions are padded (the output has the input's size); the encoder down-samples with a
stride-2 first convolution instead of a max-pool; the decoder up-samples without weights;
the head is a sigmoid on one channel.

Choices the paper leaves open (its layer table gives kernels, widths and strides; its
figure of the unit is an image), and what is chosen here, with the public port that agrees
(edwinpalegre/EE8204-ResUNet, Keras; its layers and this file's have the same shapes):
- the first unit takes the input straight into its first convolution (no BN-ReLU before
  it), as the paper's Fig. 2 and every port looked at (also nikhilroxtomar/Deep-Residual-Unet,
  rishikksh20/ResUnet) have it;
- the shortcut where the shape changes (every unit here) is a 1x1 convolution with the
  unit's stride, followed by BatchNorm (ResNet's projection shortcut; the ports above but
  rishikksh20's, whose shortcut is a 3x3 conv);
- up-sampling: bilinear x2 with half-pixel centres (align_corners=False, Keras'
  UpSampling2D(interpolation='bilinear')), then the concat [up, skip] (the ports' order);
  option upsample="nearest" (nikhilroxtomar's UpSampling2D default). Both are translation
  equivariant on the 8-px grid, unlike align_corners=True;
- every convolution keeps its bias (Keras' default, as in the port), also those before a
  BatchNorm, where the bias cannot change the output (its gradient is 0 in training mode).

Parameters at the reference configuration (base 64, depth 3, 3 input channels, one output
channel): 8,223,809 (1 input channel: 8,222,529), as the port counts them. The paper's "7.8
M" is not reproducible from its text: the units' convolutions, BatchNorms and the head alone
(no shortcut projections) count 7,789,313, which rounds to it, so the paper's count seems to
leave the projections (434,496 parameters) out.

Parameter names: `enc{i}.conv{j}.weight|bias` (3x3), `enc{i}.bn{j}.weight|bias` (the BN
before conv{j}; enc0 has no bn0), `enc{i}.skip.conv.weight|bias` (1x1),
`enc{i}.skip.bn.weight|bias`; the same under `bridge.` and `dec{i}.` (dec{i} pairs with
enc{i}); `final.weight|bias`. BatchNorm buffers `<bn>.running_mean|var`,
`<bn>.num_batches_tracked`. `forward` and `backward` are mirror images: read them side by
side.
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.models.registry import register
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import (
    Act,
    Add,
    BatchNorm,
    BinaryHead,
    Concat,
    ConvGeneral,
    Layer,
    Upsample,
)
from minunet.nn.model import Model, ModelConfig, conv_shapes, norm_shapes

HEADS = ("sigmoid", "softmax")
UPSAMPLING = ("bilinear", "nearest")


@dataclass
class ResUNetConfig(ModelConfig):
    """The options of the residual U-Net, after those every architecture has."""

    arch: str = "resunet"  # the architecture build_model makes (minunet/models/registry.py)
    base: int = 64  # channels of the first unit, doubling per level (64, 128, 256; bridge 512)
    depth: int = 3  # stride-2 units: 3 in the paper (3 encoding units, bridge, 3 decoding)
    upsample: str = "bilinear"  # decoder up-sampling x2: "bilinear" (half-pixel) or "nearest"
    head: str = "sigmoid"  # sigmoid: one output z -> logits [0, z]; softmax: n_classes outputs

    def __post_init__(self):
        super().__post_init__()
        if self.depth < 1 or self.base < 1:
            raise ValueError(f"invalid ResUNetConfig {self}: need depth >= 1 and base >= 1")
        if self.upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {', '.join(UPSAMPLING)}, got "
                             f"{self.upsample!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"head='sigmoid' has one output channel (two classes); "
                             f"n_classes is {self.n_classes}: use head='softmax'")


# --- the residual unit ---------------------------------------------------------------


def unit_shapes(name: str, cin: int, cout: int, first: bool = False) -> dict[str, tuple]:
    """The parameters of one residual unit `name` from cin to cout channels (module doc)."""
    return ({} if first else norm_shapes(name + ".bn0", cin)) | conv_shapes(
        name + ".conv0", cin, cout, 3) | norm_shapes(name + ".bn1", cout) | conv_shapes(
        name + ".conv1", cout, cout, 3) | conv_shapes(name + ".skip.conv", cin, cout, 1) | (
        norm_shapes(name + ".skip.bn", cout))


class ResidualUnit(Layer):
    """A full pre-activation residual unit (He et al. 2016; Zhang et al. 2018, Fig. 2):

        out = conv1(ReLU(BN1(conv0(ReLU(BN0(x)))))) + BN_s(conv_s(x))

    conv0 3x3 with the unit's stride, conv1 3x3, conv_s the 1x1 projection shortcut with the
    unit's stride. The first unit of the network (`first=True`) has no BN0-ReLU: x goes
    straight into conv0. x (N, Cin, H, W) -> (N, Cout, H / stride, W / stride)."""

    cache_names = ()
    parts = ("bn0", "act0", "conv0", "bn1", "act1", "conv1", "skip_conv", "skip_bn", "add")

    def __init__(self, ops, name: str, model, stride: int = 1, first: bool = False):
        super().__init__(ops)
        self.first = first
        self.bn0 = None if first else BatchNorm(ops, name + ".bn0", model)
        self.act0 = None if first else Act(ops, "relu")
        self.conv0 = ConvGeneral(ops, name + ".conv0", padding=1, stride=stride, relu=False)
        self.bn1, self.act1 = BatchNorm(ops, name + ".bn1", model), Act(ops, "relu")
        self.conv1 = ConvGeneral(ops, name + ".conv1", padding=1, relu=False)
        self.skip_conv = ConvGeneral(ops, name + ".skip.conv", padding=0, stride=stride,
                                     relu=False)
        self.skip_bn = BatchNorm(ops, name + ".skip.bn", model)
        self.add = Add(ops)

    def forward(self, params, x):
        h = x if self.first else self.act0.forward(self.bn0.forward(params, x))
        h = self.conv0.forward(params, h)
        h = self.conv1.forward(params, self.act1.forward(self.bn1.forward(params, h)))
        s = self.skip_bn.forward(params, self.skip_conv.forward(params, x))  # the shortcut
        return self.add.forward(h, s)

    def backward(self, grads, dout):
        dh, ds = self.add.backward(dout)
        dx = self.skip_conv.backward(grads, self.skip_bn.backward(grads, ds))  # the shortcut
        dh = self.bn1.backward(grads, self.act1.backward(self.conv1.backward(grads, dh)))
        dh = self.conv0.backward(grads, dh)
        if not self.first:
            dh = self.bn0.backward(grads, self.act0.backward(dh))
        return dx + dh  # x fed both the main path and the shortcut



# --- the network -----------------------------------------------------------------


def channels(config: ResUNetConfig, level: int) -> int:
    """Channels at a level: base * 2^level (64, 128, 256, and the bridge's 512)."""
    return config.base * 2**level


def parameter_shapes(config: ResUNetConfig) -> dict[str, tuple]:
    """Every parameter's name and shape (module doc), in torch's layouts."""
    d = config.depth
    shapes = unit_shapes("enc0", config.in_channels, channels(config, 0), first=True)
    for i in range(1, d):
        shapes |= unit_shapes(f"enc{i}", channels(config, i - 1), channels(config, i))
    shapes |= unit_shapes("bridge", channels(config, d - 1), channels(config, d))
    for i in reversed(range(d)):  # in: the up-sampled map of the level below, then the skip
        cin = channels(config, i + 1) + channels(config, i)
        shapes |= unit_shapes(f"dec{i}", cin, channels(config, i))
    n_out = 1 if config.head == "sigmoid" else config.n_classes
    return shapes | conv_shapes("final", channels(config, 0), n_out, 1)


@register("resunet")
class ResUNet(Model):
    """The residual U-Net (module doc): `params`, `grads`, `buffers` (the BatchNorms' running
    statistics), `forward(x)`, `backward(dlogits)`; the rest is every model's
    (minunet/nn/model.py). Build one with `build_model(ResUNetConfig(...))`."""

    config_class = ResUNetConfig

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def build(self, o) -> None:
        config, d = self.config, self.config.depth
        self.enc = [ResidualUnit(o, "enc0", self, first=True)] + [
            ResidualUnit(o, f"enc{i}", self, stride=2) for i in range(1, d)]
        self.bridge = ResidualUnit(o, "bridge", self, stride=2)
        self.ups = [Upsample(o, config.upsample, 2) for _ in range(d)]
        self.cats = [Concat(o) for _ in range(d)]
        self.dec = [ResidualUnit(o, f"dec{i}", self) for i in range(d)]
        self.final = ConvGeneral(o, "final", padding=0, relu=False)
        self.binary = BinaryHead(o)

    @classmethod
    def test_config(cls, **common):
        """base 2 (2, 4, 8 and a bridge of 16 channels)."""
        return ResUNetConfig(**{"base": 2, **common})

    @classmethod
    def geometry_of(cls, config: ResUNetConfig) -> PaddedGeometry:
        """Output side = input side; sides (and tile origins) multiples of 2^depth (8)."""
        return PaddedGeometry(grid=2**config.depth)

    def layers(self) -> list:
        """Every layer object, in forward order."""
        out = [*self.enc, self.bridge]
        for i in reversed(range(self.config.depth)):
            out += [self.ups[i], self.cats[i], self.dec[i]]
        return out + [self.final, self.binary]

    # -- forward and backward, mirror images ----------------------------------------

    def forward(self, x, dropout_key: int | None = None):
        """x: (N, in_channels, S, S'), S and S' multiples of 2^depth. Returns logits
        (N, K, S, S') (K = 2 with the sigmoid head: [0, z]). No dropout: `dropout_key` is
        accepted and ignored."""
        self._begin_forward(x)
        p = self.params
        skips = []
        h = x
        for i in range(self.config.depth):  # encoding: enc0 at S, then stride-2 units
            h = self.enc[i].forward(p, h)
            skips.append(h)
        h = self.bridge.forward(p, h)  # S / 2^depth
        for i in reversed(range(self.config.depth)):  # decoding
            h = self.ups[i].forward(h)
            h = self.cats[i].forward(h, skips[i])  # [up, skip]
            h = self.dec[i].forward(p, h)
        h = self.final.forward(p, h)
        return self.binary.forward(h) if self.config.head == "sigmoid" else h

    def backward(self, dlogits):
        """dlogits: (N, K, S, S'). Adds every parameter gradient into self.grads."""
        g = self.grads
        dh = self.binary.backward(dlogits) if self.config.head == "sigmoid" else dlogits
        dh = self.final.backward(g, dh)
        dskips = [None] * self.config.depth
        for i in range(self.config.depth):  # decoding, in reverse
            dh = self.dec[i].backward(g, dh)
            dh, dskips[i] = self.cats[i].backward(dh)
            dh = self.ups[i].backward(dh)
        dh = self.bridge.backward(g, dh)
        for i in reversed(range(self.config.depth)):  # encoding, in reverse
            dh = dh + dskips[i]  # the unit's output fed the next unit and the skip
            dh = self.enc[i].backward(g, dh)
