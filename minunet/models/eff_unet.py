"""A U-Net with an EfficientNet encoder: segmentation_models_pytorch's `Unet("efficientnet-b0")`
(and b1 .. b7), on torchvision's EfficientNet.

    input  (N, Cin, H, W)
    stem   conv3x3 s2-BN-SiLU                   32             H/2    --> skip (stride 2)
    stage1 MBConv1 k3       x1                  16             H/2
    stage2 MBConv6 k3 s2    x2                  24             H/4    --> skip (stride 4)
    stage3 MBConv6 k5 s2    x2                  40             H/8    --> skip (stride 8)
    stage4 MBConv6 k3 s2    x3                  80             H/16
    stage5 MBConv6 k5       x3                 112             H/16   --> skip (stride 16)
    stage6 MBConv6 k5 s2    x4                 192             H/32
    stage7 MBConv6 k3       x1                 320             H/32
    head   conv1x1-BN-SiLU                    1280             H/32   --> bottom
    decoder (minunet/models/smp_decoder.py): 5 x [nearest x2, [up, skip], 2 x conv3x3-BN-ReLU]
           256, 128, 64, 32, 16 channels; final conv3x3 -> K      H      (channels: B0)

    MBConv t, k (block of stage s):  [conv1x1-BN-SiLU Cin -> t Cin]   (t = 1: none)
                                     depthwise conv k x k (stride)-BN-SiLU
                                     squeeze-excitation: gate = sigmoid(fc2(SiLU(fc1(mean_hw h))))
                                       fc1 t Cin -> max(1, Cin // 4) (of the BLOCK's input), fc2
                                       back, both 1x1 with bias; h * gate per channel
                                     conv1x1-BN  t Cin -> Cout
                                     + x (stochastic depth on the branch in training) when
                                       stride 1 and Cin = Cout

The encoder is EfficientNet (Tan and Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019, Table 1; B1..B7 by compound scaling) in
torchvision's layout (torchvision/models/efficientnet.py, `_efficientnet_conf`): width
multipliers (1.0, 1.0, 1.1, 1.2, 1.4, 1.6, 1.8, 2.0) and depth multipliers (1.0, 1.1, 1.2, 1.4,
1.8, 2.2, 2.6, 3.1) for B0..B7, channels rounded to multiples of 8 (`make_divisible`), repeats
ceil(n * depth), the head 4 x the last stage's channels, stochastic depth with drop probability
0.2 * k / (number of blocks) for block k = 0, 1, ... (per sample: the branch of a dropped image
is 0, a kept one's scaled by 1 / (1 - p)), BatchNorm eps 1e-5, momentum 0.1 (B5..B7: eps 1e-3,
momentum 0.01). Its parameters without torchvision's classifier (Linear(head, 1000)): B0
4,007,548 (torchvision's efficientnet_b0: 5,288,548), B1 6,513,184 (7,794,184), B7 63,786,960
(66,347,960).

The skips are smp's (its timm-efficientnet encoders): the stem at stride 2, the ends of stages
2, 3 and 5 (strides 4, 8, 16). smp's bottom is stage 7's 320-channel map and leaves the 1x1 head
unused; here the head's 1280-channel map is the bottom (as mobile-unet's, smp's MobileNetV2
encoder's 1280), so the whole ImageNet encoder is used and trained.

What it changes from the 2015 U-Net: padded convolutions, BatchNorm, stride-2 depthwise
convolutions instead of max-pools, MBConv blocks with squeeze-excitation and SiLU, stochastic
depth instead of dropout, nearest-neighbour up-sampling, the up-sampled map before the skip.

Parameters at the reference configuration (B0): 8,463,309 at smp's defaults (in_channels=3,
classes=1: `head="sigmoid"`, its logit z served as [0, z]); 8,462,878 for 1 input channel and
2 classes. (smp's own Unet("efficientnet-b0") has 6,251,469: the same 4,007,548 in its encoder,
the unused head included, and a first decoder block that reads the 320-channel map,
(320 + 112) x 256 x 9 weights instead of (1280 + 112) x 256 x 9.)

Choices the paper leaves open, as torchvision has them (module doc above); `width` multiplies
the variant's width (a small test network), `decoder_base` scales the decoder (16: smp's).
`encoder_weights` names a torchvision `efficientnet_<variant>` state dict loaded into the
encoder when the model is built (`torchvision_names`; reading it needs torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from minunet import backend
from minunet.models.mobile_unet import make_divisible
from minunet.models.registry import register
from minunet.models.smp_decoder import (
    UnetDecoder,
    decoder_shapes,
    load_encoder_weights,
    read_torch_state_dict,
)
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import Act, Add, ChannelScale, ConvGeneral, ConvNormAct, GlobalAvgPool, Layer
from minunet.nn.model import Model, ModelConfig, conv_norm_shapes, conv_shapes, subkey

# EfficientNet-B0's stages (Tan and Le 2019, Table 1): expansion t, kernel k, stride s of the
# first block, input and output channels, repeats n
STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
          (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
          (6, 3, 1, 192, 320, 1))
# compound scaling (torchvision's _efficientnet_conf): variant -> (width, depth) multipliers
VARIANTS = {"b0": (1.0, 1.0), "b1": (1.0, 1.1), "b2": (1.1, 1.2), "b3": (1.2, 1.4),
            "b4": (1.4, 1.8), "b5": (1.6, 2.2), "b6": (1.8, 2.6), "b7": (2.0, 3.1)}
SKIP_STAGES = (2, 3, 5)  # the stages whose last maps are the skips at strides 4, 8, 16


@dataclass
class EffUNetConfig(ModelConfig):
    arch: str = "eff-unet"
    variant: str = "b0"  # EfficientNet-B0 .. B7 ("b0" .. "b7")
    width: float = 1.0  # a further width multiplier on the variant's (< 1: a small network)
    drop_connect: float = 0.2  # stochastic depth: the last block's drop probability is ~this
    decoder_base: int = 16  # decoder channels 16b, 8b, 4b, 2b, b (smp: 256 .. 16)
    head: str = "softmax"  # softmax: n_classes logits; sigmoid: one logit z as [0, z] (smp's
    # classes=1), n_classes must be 2
    encoder_weights: str = ""  # a torchvision efficientnet_<variant> state dict (.pth)
    init_only = ("encoder_weights",)  # the checkpoint holds the weights afterwards

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got "
                             f"{self.variant!r}")
        if self.head not in ("softmax", "sigmoid"):
            raise ValueError(f"head must be 'softmax' or 'sigmoid', got {self.head!r}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"a sigmoid head gives two classes; n_classes is {self.n_classes}")
        if not self.width > 0 or self.decoder_base < 1 or not 0 <= self.drop_connect < 1:
            raise ValueError(f"need width > 0, decoder_base >= 1, 0 <= drop_connect < 1; got "
                             f"{self.width}, {self.decoder_base}, {self.drop_connect}")


def encoder_blocks(variant: str, width: float = 1.0) -> list[tuple]:
    """The MBConv blocks as (stage, index in stage, Cin, Cout, kernel, stride, t), B0's stages
    scaled by the variant (and `width`): channels make_divisible(c * width), repeats
    ceil(n * depth)."""
    w, depth = VARIANTS[variant]
    w *= width
    blocks = []
    for s, (t, k, stride, cin, cout, n) in enumerate(STAGES, start=1):
        c_in, c_out = make_divisible(cin * w), make_divisible(cout * w)
        for b in range(math.ceil(n * depth)):
            blocks.append((s, b, c_in if b == 0 else c_out, c_out, k, stride if b == 0 else 1, t))
    return blocks


def stem_channels(variant: str, width: float = 1.0) -> int:
    return make_divisible(STAGES[0][3] * VARIANTS[variant][0] * width)


def encoder_channels(variant: str, width: float = 1.0) -> tuple[list, int]:
    """(the skips' channels at strides 2, 4, 8, 16, the bottom's (the head's) channels)."""
    last = {s: cout for s, _, _, cout, _, _, _ in encoder_blocks(variant, width)}
    return [stem_channels(variant, width)] + [last[s] for s in SKIP_STAGES], 4 * last[7]


def encoder_shapes(cin: int, variant: str, width: float = 1.0) -> dict:
    shapes = conv_norm_shapes("enc.stem", cin, stem_channels(variant, width), 3)
    for s, b, c_in, c_out, k, _, t in encoder_blocks(variant, width):
        name, hidden = f"enc.stage{s}.block{b}", make_divisible(c_in * t)
        if hidden != c_in:
            shapes |= conv_norm_shapes(name + ".expand", c_in, hidden, 1)
        shapes |= conv_norm_shapes(name + ".dw", hidden, hidden, k, groups=hidden)
        squeeze = max(1, c_in // 4)  # of the block's input channels (torchvision, timm)
        shapes |= conv_shapes(name + ".se.fc1", hidden, squeeze, 1)
        shapes |= conv_shapes(name + ".se.fc2", squeeze, hidden, 1)
        shapes |= conv_norm_shapes(name + ".project", hidden, c_out, 1)
    last_in = encoder_blocks(variant, width)[-1][3]
    return shapes | conv_norm_shapes("enc.head", last_in, 4 * last_in, 1)


def torchvision_names(variant: str = "b0", width: float = 1.0) -> dict:
    """torchvision's efficientnet_<variant> state dict names -> minunet's, for the encoder:
    features.0 = enc.stem, features.s.b.block.j = enc.stage{s}.block{b}.{expand, dw, se,
    project} (j counts the parts present), features.8 = enc.head; a ConvNormActivation's .0 is
    the conv, its .1 the BatchNorm; the squeeze-excitation's fc1, fc2 keep their names."""
    tensors = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def unit(theirs, ours):
        return {f"{theirs}.0.weight": f"{ours}.conv.weight"} | {
            f"{theirs}.1.{t}": f"{ours}.bn.{t}" for t in tensors}

    names = unit("features.0", "enc.stem")
    for s, b, c_in, _, _, _, t in encoder_blocks(variant, width):
        theirs, ours = f"features.{s}.{b}.block", f"enc.stage{s}.block{b}"
        parts = (["expand"] if make_divisible(c_in * t) != c_in else []) + ["dw", "se",
                                                                            "project"]
        for j, part in enumerate(parts):
            if part == "se":
                names |= {f"{theirs}.{j}.{fc}.{p}": f"{ours}.se.{fc}.{p}"
                          for fc in ("fc1", "fc2") for p in ("weight", "bias")}
            else:
                names |= unit(f"{theirs}.{j}", f"{ours}.{part}")
    return names | unit(f"features.{len(STAGES) + 1}", "enc.head")


class StochasticDepth(Layer):
    """Stochastic depth on a residual branch (Huang et al. 2016; torchvision's
    StochasticDepth(p, "row")): in training, each image's branch is dropped (0) with
    probability p, else scaled by 1 / (1 - p); the mask (N, 1, 1, 1) comes from a counter-based
    key (minunet/ops/dropout.py, dropout_mask_hashed), so a run reproduces. x (N, C, H, W) ->
    the same; key None (inference) or p = 0: the identity."""

    def __init__(self, ops, p: float):
        super().__init__(ops)
        self.p = p

    def forward(self, x, key):
        if key is None or self.p == 0:
            self.release()
            return x
        keep = self.ops.dropout_mask_hashed((x.shape[0], 1, 1, 1), self.p, key, x.dtype, like=x)
        mask = backend.xp_of(x).broadcast_to(keep, x.shape)  # one draw per image (N, C, H, W)
        out, self.cache = self.ops.dropout_forward(x, mask)
        return out

    def backward(self, dout):
        if self.cache is None:
            return dout
        dx = self.ops.dropout_backward(dout, self.cache)
        self.release()
        return dx


class MBConv(Layer):
    """EfficientNet's block (module doc): x (N, Cin, H, W) -> (N, Cout, H/s, W/s)."""

    cache_names = ()
    parts = ("expand", "dw", "pool", "fc1", "act", "fc2", "gate", "scale", "project", "drop",
             "add")

    def __init__(self, ops, name: str, model, cin: int, cout: int, k: int, stride: int, t: int,
                 p_drop: float, bn: dict):
        super().__init__(ops)
        hidden = make_divisible(cin * t)
        self.expand = ConvNormAct(ops, name + ".expand", model, k=1, act="silu") \
            if hidden != cin else None
        self.dw = ConvNormAct(ops, name + ".dw", model, k=k, stride=stride, groups=hidden,
                              act="silu")
        self.pool, self.act, self.gate = GlobalAvgPool(ops), Act(ops, "silu"), Act(ops, "sigmoid")
        self.fc1 = ConvGeneral(ops, name + ".se.fc1", padding=0, relu=False)
        self.fc2 = ConvGeneral(ops, name + ".se.fc2", padding=0, relu=False)
        self.scale = ChannelScale(ops)
        self.project = ConvNormAct(ops, name + ".project", model, k=1, act=None)
        residual = stride == 1 and cin == cout
        self.drop = StochasticDepth(ops, p_drop) if residual else None
        self.add = Add(ops) if residual else None
        for unit in (self.expand, self.dw, self.project):
            if unit is not None:  # B5..B7: eps 1e-3, momentum 0.01
                unit.bn.eps, unit.bn.momentum = bn["eps"], bn["momentum"]

    def forward(self, params, x, key):
        h = self.expand.forward(params, x) if self.expand else x
        h = self.dw.forward(params, h)
        s = self.pool.forward(h)  # squeeze: the mean of each channel, (N, C, 1, 1)
        s = self.fc2.forward(params, self.act.forward(self.fc1.forward(params, s)))
        h = self.scale.forward(h, self.gate.forward(s))  # excite: h * gate per channel
        h = self.project.forward(params, h)
        if self.add:
            h = self.add.forward(self.drop.forward(h, key), x)
        return h

    def backward(self, grads, dout):
        dx_skip = None
        if self.add:
            dout, dx_skip = self.add.backward(dout)
            dout = self.drop.backward(dout)
        d = self.project.backward(grads, dout)
        dh, ds = self.scale.backward(d)
        ds = self.fc1.backward(grads, self.act.backward(self.fc2.backward(grads,
                                                                           self.gate.backward(ds))))
        dh = dh + self.pool.backward(ds)  # h fed the scale and the squeeze
        d = self.dw.backward(grads, dh)
        dx = self.expand.backward(grads, d) if self.expand else d
        return dx + dx_skip if self.add else dx  # x fed the block and the residual sum



@register("eff-unet")
class EffUNet(Model):
    config_class = EffUNetConfig

    def __init__(self, config: EffUNetConfig | None = None, seed: int = 0):
        super().__init__(config, seed)
        c = self.config
        if c.encoder_weights:  # ImageNet weights for the encoder
            load_encoder_weights(self, read_torch_state_dict(c.encoder_weights),
                                 torchvision_names(c.variant, c.width), c.encoder_weights)

    def parameter_shapes(self):
        c = self.config
        skips, bottom = encoder_channels(c.variant, c.width)
        n_out = 1 if c.head == "sigmoid" else c.n_classes
        return encoder_shapes(c.in_channels, c.variant, c.width) | decoder_shapes(
            skips, bottom, c.decoder_base, n_out)

    def build(self, o):
        c = self.config
        bn = {"eps": 1e-3, "momentum": 0.01} if c.variant in ("b5", "b6", "b7") else {
            "eps": 1e-5, "momentum": 0.1}
        blocks = encoder_blocks(c.variant, c.width)
        self.stem = ConvNormAct(o, "enc.stem", self, k=3, stride=2, act="silu")
        self.blocks = [MBConv(o, f"enc.stage{s}.block{b}", self, cin, cout, k, stride, t,
                              p_drop=c.drop_connect * i / len(blocks), bn=bn)
                       for i, (s, b, cin, cout, k, stride, t) in enumerate(blocks)]
        self.head = ConvNormAct(o, "enc.head", self, k=1, act="silu")
        for unit in (self.stem, self.head):
            unit.bn.eps, unit.bn.momentum = bn["eps"], bn["momentum"]
        # the blocks after which a skip is taken: the last of stages 2, 3, 5
        self.skip_after = [max(i for i, blk in enumerate(blocks) if blk[0] == s)
                           for s in SKIP_STAGES]
        self.decoder = UnetDecoder(o, self, sigmoid=c.head == "sigmoid")

    @classmethod
    def geometry_of(cls, config):
        return PaddedGeometry(grid=32)  # five stride-2 stages

    @classmethod
    def test_config(cls, **common):
        """B0 at width 0.25 (encoder channels 8 .. 80, head 320), decoder 32 .. 2, stochastic
        depth off (a training forward then needs no key)."""
        return EffUNetConfig(**{"width": 0.25, "decoder_base": 2, "drop_connect": 0.0, **common})

    def layers(self):
        return [self.stem, *self.blocks, self.head, *self.decoder.layers()]

    def forward(self, x, dropout_key: int | None = None):
        """x (N, Cin, H, W), H and W multiples of 32 -> logits (N, K, H, W).
        dropout_key: in training mode an int that seeds this step's stochastic depth."""
        self._begin_forward(x)
        if not self.training:
            dropout_key = None
        elif dropout_key is None and self.config.drop_connect > 0:
            raise ValueError("the model is in training mode, so its stochastic depth needs a "
                             "dropout_key (an int); call model.eval() for inference")
        skips, bottom = self.encode(x, dropout_key)
        return self.decoder.forward(self.params, skips, bottom)

    def backward(self, dlogits):
        dskips, dbottom = self.decoder.backward(self.grads, dlogits)
        self.encode_backward(dskips, dbottom)

    def encode(self, x, dropout_key=None):
        """The encoder: x -> (skips at strides 2, 4, 8, 16, bottom (N, 4 C7, H/32, W/32))."""
        p = self.params
        h = self.stem.forward(p, x)
        skips = [h]  # stride 2
        for i, block in enumerate(self.blocks):
            h = block.forward(p, h, subkey(dropout_key, i))
            if i in self.skip_after:
                skips.append(h)  # strides 4, 8, 16
        return skips, self.head.forward(p, h)

    def encode_backward(self, dskips, dbottom):
        """The encoder's backward: gradients of its maps -> dx."""
        g = self.grads
        d = self.head.backward(g, dbottom)
        for i in reversed(range(len(self.blocks))):
            if i in self.skip_after:
                d = d + dskips[1 + self.skip_after.index(i)]  # fed the next block and a skip
            d = self.blocks[i].backward(g, d)
        return self.stem.backward(g, d + dskips[0])  # the stem's map: stage 1 and a skip
