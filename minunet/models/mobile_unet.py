"""A U-Net with a MobileNetV2 encoder: segmentation_models_pytorch's `Unet("mobilenet_v2")`.

    input  (N, Cin, H, W)
    stem   conv3x3 s2-BN-ReLU6                 32              H/2
    block1   inverted residual t=1             16              H/2    --> skip (stride 2)
    block2-3   t=6                             24              H/4    --> skip (stride 4)
    block4-6   t=6                             32              H/8    --> skip (stride 8)
    block7-10  t=6                             64              H/16
    block11-13 t=6                             96              H/16   --> skip (stride 16)
    block14-16 t=6                            160              H/32
    block17    t=6                            320              H/32
    head   conv1x1-BN-ReLU6                  1280              H/32   --> bottom
    decoder (minunet/models/smp_decoder.py): 5 x [nearest x2, [up, skip], 2 x conv3x3-BN-ReLU]
           256, 128, 64, 32, 16 channels; final conv3x3 -> K      H

    inverted residual (block i): [conv1x1-BN-ReLU6 Cin -> t Cin]  (t = 1: none)
                                 depthwise conv3x3 (stride s)-BN-ReLU6
                                 conv1x1-BN  t Cin -> Cout        (linear bottleneck)
                                 + x when s = 1 and Cin = Cout

The encoder is MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted
Residuals and Linear Bottlenecks", CVPR 2018, Table 2) in torchvision's layout
(torchvision/models/mobilenetv2.py): stages (t, c, n, s) = (1,16,1,1), (6,24,2,2), (6,32,3,2),
(6,64,4,2), (6,96,3,1), (6,160,3,2), (6,320,1,1) after a 32-channel stride-2 stem, a 1x1 conv to
1280, convolutions without bias, each followed by BatchNorm. Its 2,223,872 parameters are
torchvision's mobilenet_v2 (3,504,872) without the classifier (Linear(1280, 1000): 1,281,000).
The decoder is smp's `Unet` decoder (smp_decoder.py), fed the encoder maps smp's
MobileNetV2Encoder returns: after torchvision's features 1, 3, 6, 13 (strides 2 to 16) and 18
(stride 32).

What it changes from the 2015 U-Net: padded convolutions (output = input size), BatchNorm,
stride-2 convolutions instead of max-pools, depthwise-separable inverted residuals with ReLU6
in the encoder, nearest-neighbour up-sampling instead of up-convolutions, and the up-sampled
map before the skip in the concatenation.

Parameters at the reference configuration: 6,628,945 for smp's defaults (in_channels=3,
classes=1: `head="sigmoid"`, whose one logit z is served as the two-class logits [0, z]),
6,628,514 for 1 input channel and 2 classes (`head="softmax"`).

Choices the paper leaves open: the layout and rounding of a width multiplier (`width`):
torchvision's (channels rounded to multiples of 8, never below 90 % of c * width; the last
1280 is scaled only when width > 1); padding k // 2; BatchNorm's eps 1e-5 and momentum 0.1
(PyTorch's defaults, as torchvision). `decoder_base` scales the decoder (16: smp's 256..16), so
a test network can be small. `encoder_weights` names a torchvision `mobilenet_v2` state dict
(`torch.save(model.state_dict(), path)`; reading it needs torch) loaded into the encoder when
the model is built (`TORCHVISION_NAMES`), the stem summed over RGB for a gray-value input as
smp does.
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.models.registry import register
from minunet.models.smp_decoder import (
    UnetDecoder,
    decoder_shapes,
    load_encoder_weights,
    read_torch_state_dict,
)
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import Add, ConvNormAct, Layer
from minunet.nn.model import Model, ModelConfig, conv_norm_shapes

# MobileNetV2's stages (Sandler et al. 2018, Table 2): expansion t, channels c, repeats n,
# stride s of the first block
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
          (6, 160, 3, 2), (6, 320, 1, 1))
SKIP_BLOCKS = (1, 3, 6, 13)  # the blocks whose outputs are the skips at strides 2, 4, 8, 16


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (`_make_divisible`): the nearest multiple of `divisor`,
    at least `divisor`, and never below 90 % of v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclass
class MobileUNetConfig(ModelConfig):
    arch: str = "mobile-unet"
    width: float = 1.0  # MobileNetV2's width multiplier (torchvision's width_mult)
    decoder_base: int = 16  # decoder channels 16b, 8b, 4b, 2b, b (smp: 256 .. 16)
    head: str = "softmax"  # softmax: n_classes logits; sigmoid: one logit z as [0, z] (smp's
    # classes=1), n_classes must be 2
    encoder_weights: str = ""  # a torchvision mobilenet_v2 state dict (.pth) for the encoder
    init_only = ("encoder_weights",)  # the checkpoint holds the weights afterwards

    def __post_init__(self):
        super().__post_init__()
        if self.head not in ("softmax", "sigmoid"):
            raise ValueError(f"head must be 'softmax' or 'sigmoid', got {self.head!r}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"a sigmoid head gives two classes; n_classes is {self.n_classes}")
        if not self.width > 0 or self.decoder_base < 1:
            raise ValueError(f"width must be > 0 and decoder_base >= 1, got {self.width}, "
                             f"{self.decoder_base}")


def encoder_blocks(width: float) -> list[tuple]:
    """The inverted residuals as (index, Cin, Cout, stride, t); index = torchvision's
    `features` index (1 .. 17), Cin of block 1 = the stem's channels."""
    blocks, cin, i = [], make_divisible(32 * width), 1
    for t, c, n, s in STAGES:
        cout = make_divisible(c * width)
        for j in range(n):
            blocks.append((i, cin, cout, s if j == 0 else 1, t))
            cin, i = cout, i + 1
    return blocks


def encoder_channels(width: float) -> tuple[list, int]:
    """(the skips' channels at strides 2, 4, 8, 16, the bottom's channels)."""
    out = {i: cout for i, _, cout, _, _ in encoder_blocks(width)}
    return [out[i] for i in SKIP_BLOCKS], make_divisible(1280 * max(1.0, width))


def encoder_shapes(cin: int, width: float) -> dict:
    stem = make_divisible(32 * width)
    shapes = conv_norm_shapes("enc.stem", cin, stem, 3)
    for i, c_in, c_out, _, t in encoder_blocks(width):
        hidden = c_in * t
        if t != 1:
            shapes |= conv_norm_shapes(f"enc.block{i}.expand", c_in, hidden, 1)
        shapes |= conv_norm_shapes(f"enc.block{i}.dw", hidden, hidden, 3, groups=hidden)
        shapes |= conv_norm_shapes(f"enc.block{i}.project", hidden, c_out, 1)
    last_in = encoder_blocks(width)[-1][2]
    return shapes | conv_norm_shapes("enc.head", last_in, encoder_channels(width)[1], 1)


def torchvision_names(width: float = 1.0) -> dict:
    """torchvision's mobilenet_v2 state dict names -> minunet's, for the encoder (module doc):
    features.0 = enc.stem, features.i.conv = enc.block{i}.{expand, dw, project}, features.18 =
    enc.head; a ConvNormActivation's .0 is the conv, its .1 the BatchNorm."""
    tensors = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def unit(theirs_conv, theirs_bn, ours):
        return {f"{theirs_conv}.weight": f"{ours}.conv.weight"} | {
            f"{theirs_bn}.{t}": f"{ours}.bn.{t}" for t in tensors}

    names = unit("features.0.0", "features.0.1", "enc.stem")
    for i, _, _, _, t in encoder_blocks(width):
        f, ours = f"features.{i}.conv", f"enc.block{i}"
        if t != 1:  # conv: [expand (0.0, 0.1), dw (1.0, 1.1), project conv 2, bn 3]
            names |= unit(f"{f}.0.0", f"{f}.0.1", ours + ".expand")
            names |= unit(f"{f}.1.0", f"{f}.1.1", ours + ".dw")
            names |= unit(f"{f}.2", f"{f}.3", ours + ".project")
        else:  # conv: [dw (0.0, 0.1), project conv 1, bn 2]
            names |= unit(f"{f}.0.0", f"{f}.0.1", ours + ".dw")
            names |= unit(f"{f}.1", f"{f}.2", ours + ".project")
    last = len(encoder_blocks(width)) + 1
    return names | unit(f"features.{last}.0", f"features.{last}.1", "enc.head")


class InvertedResidual(Layer):
    """MobileNetV2's block (module doc): x (N, Cin, H, W) -> (N, Cout, H/s, W/s)."""

    cache_names = ()
    parts = ("expand", "dw", "project", "add")

    def __init__(self, ops, name: str, model, cin: int, cout: int, stride: int, t: int):
        super().__init__(ops)
        hidden = cin * t
        self.expand = ConvNormAct(ops, name + ".expand", model, k=1, act="relu6") \
            if t != 1 else None
        self.dw = ConvNormAct(ops, name + ".dw", model, k=3, stride=stride, groups=hidden,
                              act="relu6")
        self.project = ConvNormAct(ops, name + ".project", model, k=1, act=None)
        self.add = Add(ops) if stride == 1 and cin == cout else None

    def forward(self, params, x):
        h = self.expand.forward(params, x) if self.expand else x
        h = self.project.forward(params, self.dw.forward(params, h))
        return self.add.forward(x, h) if self.add else h

    def backward(self, grads, dout):
        dx_skip = None
        if self.add:
            dx_skip, dout = self.add.backward(dout)
        d = self.dw.backward(grads, self.project.backward(grads, dout))
        dx = self.expand.backward(grads, d) if self.expand else d
        return dx + dx_skip if self.add else dx  # x fed the block and the residual sum



@register("mobile-unet")
class MobileUNet(Model):
    config_class = MobileUNetConfig

    def __init__(self, config: MobileUNetConfig | None = None, seed: int = 0):
        super().__init__(config, seed)
        if self.config.encoder_weights:  # ImageNet weights for the encoder
            path = self.config.encoder_weights
            load_encoder_weights(self, read_torch_state_dict(path),
                                 torchvision_names(self.config.width), path)

    def parameter_shapes(self):
        c = self.config
        skips, bottom = encoder_channels(c.width)
        n_out = 1 if c.head == "sigmoid" else c.n_classes
        return encoder_shapes(c.in_channels, c.width) | decoder_shapes(
            skips, bottom, c.decoder_base, n_out)

    def build(self, o):
        c = self.config
        self.stem = ConvNormAct(o, "enc.stem", self, k=3, stride=2, act="relu6")
        self.blocks = [InvertedResidual(o, f"enc.block{i}", self, cin, cout, s, t)
                       for i, cin, cout, s, t in encoder_blocks(c.width)]
        self.head = ConvNormAct(o, "enc.head", self, k=1, act="relu6")
        self.decoder = UnetDecoder(o, self, sigmoid=c.head == "sigmoid")

    @classmethod
    def geometry_of(cls, config):
        return PaddedGeometry(grid=32)  # five stride-2 stages

    @classmethod
    def test_config(cls, **common):
        """Width 0.25 (encoder channels 8 .. 80, the 1280 head kept), decoder 32 .. 2."""
        return MobileUNetConfig(**{"width": 0.25, "decoder_base": 2, **common})

    def layers(self):
        return [self.stem, *self.blocks, self.head, *self.decoder.layers()]

    def forward(self, x, dropout_key: int | None = None):
        """x (N, Cin, H, W), H and W multiples of 32 -> logits (N, K, H, W). No randomness:
        dropout_key is accepted (the trainer passes one) and not used."""
        self._begin_forward(x)
        skips, bottom = self.encode(x)
        return self.decoder.forward(self.params, skips, bottom)

    def backward(self, dlogits):
        dskips, dbottom = self.decoder.backward(self.grads, dlogits)
        self.encode_backward(dskips, dbottom)

    def encode(self, x):
        """The encoder: x -> (skips at strides 2, 4, 8, 16, bottom (N, 1280, H/32, W/32))."""
        p = self.params
        h = self.stem.forward(p, x)
        skips = []
        for i, block in enumerate(self.blocks, start=1):
            h = block.forward(p, h)
            if i in SKIP_BLOCKS:
                skips.append(h)
        return skips, self.head.forward(p, h)

    def encode_backward(self, dskips, dbottom):
        """The encoder's backward: gradients of its maps -> dx."""
        g = self.grads
        d = self.head.backward(g, dbottom)
        for i, block in reversed(list(enumerate(self.blocks, start=1))):
            if i in SKIP_BLOCKS:
                d = d + dskips[SKIP_BLOCKS.index(i)]  # the map fed the next block and a skip
            d = block.backward(g, d)
        return self.stem.backward(g, d)
