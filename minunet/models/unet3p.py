"""UNet 3+: full-scale skip connections (Huang, Lin, Tong, Hu, Zhang, Iwamoto, Han, Chen and Wu,
"UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation", ICASSP 2020), written out
stage by stage.

    input (N, C, S, S), S a multiple of 16
    level 0  down0: [conv3x3 -> BN -> ReLU] x 2     64 ch  S       h0 ----.
    level 1  pool, down1                           128 ch  S/2     h1 ----|
    level 2  pool, down2                           256 ch  S/4     h2 ----|   every encoder map
    level 3  pool, down3                           512 ch  S/8     h3 ----|   goes to every
    level 4  pool, bottleneck                     1024 ch  S/16    h4 ----|   decoder stage
                                                                          v
    up3 (hd4 of the paper), up2, up1, up0 (hd1): five maps in, each brought to the stage's
    size and through conv3x3-BN-ReLU to 64 channels:
        h_j, j < i     max-pool by 2^(i-j) (ceil mode)          "from{j}"
        h_i            as it is                                 "from{i}"
        hd_j, j > i    bilinear x 2^(j-i) (hd_4 = h4, the bottleneck)
    concatenated [from0, ..., from4] (320 ch), fused by conv3x3-BN-ReLU 320 -> 320   hd_i
    final: conv3x3 (padding 1) on hd_0 -> K class scores (softmax) or one score z -> [0, z]

What it changes from the U-Net (Ronneberger, Fischer and Brox, MICCAI 2015,
minunet/models/unet.py): padded 3x3 convolutions with BatchNorm (output size = input size);
no transposed convolution: a decoder stage sees the encoder maps of its own and every finer
level (max-pooled down to its size) and every coarser decoder map (bilinearly up-sampled), each
reduced to 64 channels, instead of one skip and one up-sampled map; the head is a 3x3
convolution with one output (sigmoid) in the paper.

Options (UNet3PConfig):
- `deep_supervision`: "full-scale deep supervision": five 3x3 heads, on hd_0 .. hd_3 and the
  bottleneck (`final`, `side1` .. `side4`), each up-sampled bilinearly to full size; in
  training the forward returns a Heads of the five logits and the loss is their mean; in eval
  mode only `final`'s logits.
- `cgm`: the classification-guided module: dropout (p = `dropout`), a 1x1 conv 1024 -> 2
  (`cls`), a global max pool and a sigmoid on the bottleneck give two presence scores
  [absent, present] per image; they gate the heads (below).
- `loss`: "hybrid" by default (focal + (1 - MS-SSIM) + (1 - IoU), minunet/ops/loss/combined.py).
  MS-SSIM's coarsest scale (1/16) must hold its 11 x 11 window, so the hybrid loss needs
  training tiles of at least 176 x 176 px: a smaller tile is refused with an error that names
  the fix (a larger tile, or loss "bce_dice" / "softmax_cross_entropy"), never silently trained
  with another loss.

Parameters (in_channels 3, one output channel, as the released code's models count them):
26,971,777 (UNet_3Plus), 26,989,637 with deep supervision (UNet_3Plus_DeepSup), 26,991,687
with deep supervision and the classification-guided module (UNet_3Plus_DeepSup_CGM).

Choices the paper leaves open, and the answers taken here (with the authors' released code,
ZJUGiveLab/UNet-Version, models/UNet_3Plus.py):
- every convolution has a bias, also before a BatchNorm (the released nn.Conv2d's default;
  the parameter counts above include those biases);
- up-sampling is bilinear with align_corners=False (nn.Upsample(scale_factor, mode='bilinear'));
  the pools of the full-scale skips use ceil mode (MaxPool2d(k, k, ceil_mode=True)), which on
  the 16-px grid never has a partial window; the encoder's pools are plain 2x2;
- the concat order is [finer encoder maps, same-level encoder map, coarser decoder maps];
- the deep-supervision heads are up-sampled after their 3x3 conv (upscore after outconv).

The classification-guided module, and why it differs from the released code. The released
forward takes argmax over the two sigmoid scores (0 or 1), multiplies every head's pre-sigmoid
output by it, and returns no classification output: the argmax passes no gradient, and no
loss reaches the branch, so `cls` never trains (it stays at its initialisation). Here:
- the branch trains with its own binary cross-entropy: its two scores against the image-level
  label [absent, present], "present" when any pixel of the image's label map is class 1
  (foreground, the organ); the loss is (segmentation loss) + BCE, equal weights;
- the gate is differentiable: each head's output z (its two-class logits [0, z]) is multiplied
  per image by the presence probability g = sigma(c_present) instead of argmax's 0/1 (the
  [0, z] logits scaled channel-wise by [sigma(c_absent), sigma(c_present)]: the zero channel
  stays 0). It is the same gate in training and inference, so the ONNX graph and the PyTorch
  mirror carry it, and the segmentation loss also trains the gate through z. As in the
  released code the gate scales the pre-sigmoid output: an image judged empty (g -> 0) gets
  z -> 0, probability 1/2 and, under the first-maximum argmax of [0, 0], background
  everywhere.
- the global max pool makes every output pixel depend on the whole tile: with `cgm` tiled
  inference is not exact (the gate is decided per tile).

Parameter names (the ConvNormAct units of minunet/nn/layers.py, with the conv's bias):
`down{i}.conv{j}.conv.weight|bias`, `down{i}.conv{j}.bn.weight|bias` (i = 0..3),
`bottleneck.conv{j}...`, `up{i}.from{j}.conv...`, `up{i}.from{j}.bn...` (decoder stage i
takes level j), `up{i}.fuse.conv...`, `up{i}.fuse.bn...`; heads `final.weight|bias`,
`side{j}.weight|bias` (j = 1..4); `cls.weight|bias`. BatchNorm buffers `...bn.running_*`.

`forward` and `backward` are mirror images: read them side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from minunet.models.registry import register
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import (
    Act,
    BinaryHead,
    ChannelScale,
    Concat,
    ConvGeneral,
    ConvNormAct,
    Dropout,
    Layer,
    Pool,
    Upsample,
    family_op,
)
from minunet.nn.model import Heads, Model, ModelConfig, conv_shapes, norm_shapes
from minunet.nn.model import subkey as _subkey
from minunet.ops.loss.bce import bce_with_logits_backward, bce_with_logits_forward

LEVELS = 5  # four poolings and the bottleneck (the paper's and the released code's depth)
MSSSIM_MIN_SIZE = 176  # 11 px window at the coarsest of 5 scales (1/16): 11 * 16


@dataclass
class UNet3PConfig(ModelConfig):
    """UNet 3+'s options, after those every architecture has (minunet/nn/model.py)."""

    arch: str = "unet3p"  # the architecture build_model makes (minunet/models/registry.py)
    loss: str = "hybrid"  # the paper's: focal + (1 - MS-SSIM) + (1 - IoU); tiles >= 176 px
    base: int = 64  # encoder channels base * 2^level (64 .. 1024); each full-scale input is
    # reduced to `base` channels (the released CatChannels = filters[0]), a stage to 5 * base
    head: str = "sigmoid"  # "sigmoid": one output z as two-class logits [0, z] (the paper);
    # "softmax": n_classes output channels
    deep_supervision: bool = False  # five heads (hd1..hd4, bottleneck), their mean loss
    cgm: bool = False  # the classification-guided module (needs head="sigmoid")
    dropout: float = 0.5  # the CGM's dropout before its 1x1 conv (released: nn.Dropout(0.5))

    def __post_init__(self):
        super().__post_init__()
        if self.base < 1:
            raise ValueError(f"base must be >= 1, got {self.base}")
        if self.head not in ("sigmoid", "softmax"):
            raise ValueError(f"head must be 'sigmoid' or 'softmax', got {self.head!r}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"head='sigmoid' is a two-class head (one output z -> [0, z]); "
                             f"n_classes is {self.n_classes}: use head='softmax'")
        if self.cgm and self.head != "sigmoid":
            raise ValueError("cgm gates a one-output (sigmoid) head: use head='sigmoid'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def channels(config: UNet3PConfig, level: int) -> int:
    """Encoder channels at a level: base * 2^level (64, 128, 256, 512, 1024 in the paper)."""
    return config.base * 2**level


def _encoder_name(level: int, j: int) -> str:
    return f"down{level}.conv{j}" if level < LEVELS - 1 else f"bottleneck.conv{j}"


def _unit_shapes(name: str, cin: int, cout: int) -> dict[str, tuple]:
    """A 3x3 conv WITH bias (the released nn.Conv2d) -> BatchNorm unit under `name`."""
    return conv_shapes(name + ".conv", cin, cout, 3) | norm_shapes(name + ".bn", cout)


def parameter_shapes(config: UNet3PConfig) -> dict[str, tuple]:
    """Every parameter's name and shape (module doc, "Parameter names")."""
    cat = config.base  # CatChannels
    up = LEVELS * cat  # UpChannels: a decoder stage's width (320)
    out = 1 if config.head == "sigmoid" else config.n_classes
    shapes, cin = {}, config.in_channels
    for level in range(LEVELS):
        c = channels(config, level)
        shapes |= _unit_shapes(_encoder_name(level, 0), cin, c)
        shapes |= _unit_shapes(_encoder_name(level, 1), c, c)
        cin = c
    for i in reversed(range(LEVELS - 1)):  # up3 (hd4) .. up0 (hd1)
        for j in range(LEVELS):
            src = channels(config, j) if j <= i or j == LEVELS - 1 else up
            shapes |= _unit_shapes(f"up{i}.from{j}", src, cat)
        shapes |= _unit_shapes(f"up{i}.fuse", up, up)
    shapes |= conv_shapes("final", up, out, 3)
    if config.deep_supervision:
        for j in range(1, LEVELS):
            shapes |= conv_shapes(f"side{j}", up if j < LEVELS - 1 else channels(config, j),
                                  out, 3)
    if config.cgm:
        shapes |= conv_shapes("cls", channels(config, LEVELS - 1), 2, 1)
    return shapes


class GlobalMaxPool(Layer):
    """The maximum over each channel's H x W (minunet/ops/pool_general.py, `global_maxpool`):
    (N, C, H, W) -> (N, C); the backward puts the gradient at the first maximum."""

    def forward(self, x):
        out, self.cache = family_op(self.ops, "global_maxpool_forward")(x)
        return out

    def backward(self, dout):
        dx = family_op(self.ops, "global_maxpool_backward")(dout, self.cache)
        self.release()
        return dx


class PresenceHeads(Heads):
    """The training output with the CGM: the heads' (gated) logits, one or five, and
    `presence`, the branch's two scores (N, 2, 1, 1) [absent, present] before the sigmoid. The
    gradient the loss gives back has the same form (`presence` = dL/dscores of the BCE)."""

    presence = None


class PresenceLossCache(NamedTuple):
    seg: object  # the segmentation loss's cache (a Heads of caches)
    cls: object  # the presence BCE's cache (minunet/ops/loss/bce.py)


def presence_targets(labels, xp, dtype):
    """(N, 2) one-hot image-level labels [absent, present]: present when any pixel of the
    image's label map (N, H, W) is class 1 (foreground)."""
    y = (labels == 1).any(axis=(1, 2)).astype(dtype)  # (N,)
    return xp.stack([1 - y, y], axis=1)  # (N, 2)


def _add(acc, d):
    """Gradient accumulation of a map used more than once (None: no gradient yet)."""
    return d if acc is None else acc if d is None else acc + d


@register("unet3p")
class UNet3P(Model):
    """UNet 3+ (module doc). Build one with `build_model(UNet3PConfig(...))`."""

    config_class = UNet3PConfig

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def build(self, o) -> None:
        c, L = self.config, LEVELS
        self.enc = [(ConvNormAct(o, _encoder_name(i, 0), self),
                     ConvNormAct(o, _encoder_name(i, 1), self)) for i in range(L)]
        self.pools = [Pool(o, 2) for _ in range(L - 1)]  # pools[i]: level i -> i + 1
        # decoder stage i: how each level j reaches it (None: as it is), its unit, the concats
        self.bring = {i: [Pool(o, 2 ** (i - j), ceil_mode=True) if j < i else None if j == i
                          else Upsample(o, "bilinear", 2 ** (j - i)) for j in range(L)]
                      for i in range(L - 1)}
        self.units = {i: [ConvNormAct(o, f"up{i}.from{j}", self) for j in range(L)]
                      for i in range(L - 1)}
        self.cats = {i: [Concat(o) for _ in range(L - 1)] for i in range(L - 1)}
        self.fuse = {i: ConvNormAct(o, f"up{i}.fuse", self) for i in range(L - 1)}
        # heads: final on hd_0; side{j} on hd_j (bottleneck for j = 4), up-sampled by 2^j
        n_heads = L if c.deep_supervision else 1
        self.heads = [ConvGeneral(o, "final" if j == 0 else f"side{j}", padding=1, relu=False)
                      for j in range(n_heads)]
        self.head_ups = [None] + [Upsample(o, "bilinear", 2**j) for j in range(1, n_heads)]
        self.bins = [BinaryHead(o) if c.head == "sigmoid" else None for _ in range(n_heads)]
        # the classification-guided module
        self.cls_drop, self.cls_conv = Dropout(o, c.dropout), ConvGeneral(o, "cls", padding=0,
                                                                          relu=False)
        self.cls_pool, self.cls_act = GlobalMaxPool(o), Act(o, "sigmoid")
        self.gates = [ChannelScale(o) for _ in range(n_heads)]

    @classmethod
    def test_config(cls, **common):
        """base 2 (2 .. 32 channels, stages of 2 x 5), dropout off."""
        return UNet3PConfig(**{"base": 2, "dropout": 0.0, **common})

    @classmethod
    def geometry_of(cls, config: UNet3PConfig) -> PaddedGeometry:
        """Padded: output = input; sides multiples of 16 (four 2x2 poolings)."""
        return PaddedGeometry(grid=2 ** (LEVELS - 1))

    def layers(self) -> list:
        """Every layer object, in forward order."""
        L, out = LEVELS, []
        for i in range(L):
            out += ([self.pools[i - 1]] if i else []) + list(self.enc[i])
        out += [self.cls_drop, self.cls_conv, self.cls_pool, self.cls_act]
        for i in reversed(range(L - 1)):
            out += [b for b in self.bring[i] if b is not None] + self.units[i] + self.cats[i]
            out.append(self.fuse[i])
        for j in range(len(self.heads)):
            out += [x for x in (self.heads[j], self.head_ups[j], self.bins[j], self.gates[j])
                    if x is not None]
        return out

    # -- forward and backward, mirror images ----------------------------------------

    def forward(self, x, dropout_key: int | None = None):
        """x: (N, in_channels, S, S'), S, S' multiples of 16. Returns logits (N, K, S, S');
        in training mode with deep supervision a Heads of five, with the CGM a PresenceHeads
        (one or five heads, and the presence scores).

        dropout_key: in training mode with the CGM (dropout > 0) an int that seeds the
        branch's dropout mask; ignored in eval mode."""
        self._begin_forward(x)
        c, p, L = self.config, self.params, LEVELS
        train_cgm = c.cgm and self.training
        if not train_cgm:
            dropout_key = None
        elif dropout_key is None and c.dropout > 0:
            raise ValueError("the model is in training mode, so the CGM's dropout needs a "
                             "dropout_key (an int); call model.eval() for inference")
        h = [None] * L  # encoder maps h_0 .. h_4 (h_4: the bottleneck, hd5 of the paper)
        t = x
        for i in range(L):  # encoder
            if i > 0:
                t = self.pools[i - 1].forward(h[i - 1])
            t = self.enc[i][0].forward(p, t)
            h[i] = self.enc[i][1].forward(p, t)
        gate = None
        if c.cgm:  # classification-guided module on the bottleneck
            t = self.cls_drop.forward(h[L - 1], _subkey(dropout_key, 0))
            scores = self.cls_pool.forward(self.cls_conv.forward(p, t))  # (N, 2, 1, 1)
            gate = self.cls_act.forward(scores)  # [sigma(c_absent), sigma(c_present)]
        hd = [None] * (L - 1) + [h[L - 1]]  # decoder maps hd_0 .. hd_3, and hd_4 = h_4
        for i in reversed(range(L - 1)):  # decoder stages up3 (hd4) .. up0 (hd1)
            hd[i] = self._stage_forward(i, h, hd)
        outs = []
        for j in range(len(self.heads) if self.training else 1):  # heads: final, side1..4
            z = self.heads[j].forward(p, hd[j])
            if self.head_ups[j] is not None:
                z = self.head_ups[j].forward(z)
            if self.bins[j] is not None:
                z = self.bins[j].forward(z)  # (N, 1, S, S') -> [0, z] (N, 2, S, S')
            if gate is not None:
                z = self.gates[j].forward(z, gate)  # [0, z] -> [0, sigma(c_present) z]
            outs.append(z)
        if train_cgm:
            out = PresenceHeads(outs)
            out.presence = scores
            return out
        return Heads(outs) if len(outs) > 1 else outs[0]

    def _stage_forward(self, i, h, hd):
        """Decoder stage i: the five maps (finer encoder maps pooled, the same-level encoder
        map, coarser decoder maps up-sampled), each -> conv-BN-ReLU to `base` channels, then
        concatenated [from0, ..., from4] and fused."""
        p = self.params
        parts = []
        for j in range(LEVELS):
            t = h[j] if j <= i else hd[j]
            if self.bring[i][j] is not None:
                t = self.bring[i][j].forward(t)  # pool by 2^(i-j) or up-sample by 2^(j-i)
            parts.append(self.units[i][j].forward(p, t))
        t = parts[0]
        for j in range(1, LEVELS):
            t = self.cats[i][j - 1].forward(t, parts[j])  # [from0 .. from(j-1), from j]
        return self.fuse[i].forward(p, t)

    def backward(self, dlogits):
        """dlogits: what loss_backward gave (logits' gradient, a Heads or a PresenceHeads).
        Adds every parameter gradient into self.grads."""
        c, g, L = self.config, self.grads, LEVELS
        dh = [None] * L  # gradient accumulators of h_0 .. h_4
        dhd = [None] * (L - 1)  # ... and of hd_0 .. hd_3 (hd_4 is h_4: dh[4])
        douts = list(dlogits) if isinstance(dlogits, Heads) else [dlogits]
        dgate, dscores = None, getattr(dlogits, "presence", None)
        for j in reversed(range(len(douts))):  # heads, in reverse: side4 .. side1, final
            d = douts[j]
            if c.cgm:
                d, ds = self.gates[j].backward(d)
                dgate = _add(dgate, ds)
            if self.bins[j] is not None:
                d = self.bins[j].backward(d)
            if self.head_ups[j] is not None:
                d = self.head_ups[j].backward(d)
            d = self.heads[j].backward(g, d)
            if j == L - 1:
                dh[L - 1] = _add(dh[L - 1], d)
            else:
                dhd[j] = _add(dhd[j], d)
        for i in range(L - 1):  # decoder stages, in reverse: up0 (hd1) .. up3 (hd4)
            self._stage_backward(i, dhd[i], dh, dhd)
        if c.cgm:  # classification-guided module, in reverse
            if dgate is not None:
                dscores = _add(dscores, self.cls_act.backward(dgate))
            d = self.cls_conv.backward(g, self.cls_pool.backward(dscores))
            dh[L - 1] = _add(dh[L - 1], self.cls_drop.backward(d))
        d = None
        for i in reversed(range(L)):  # encoder, in reverse
            d = _add(dh[i], d)  # h_i fed the next pool, the decoder stages (and heads, CGM)
            d = self.enc[i][1].backward(g, d)
            d = self.enc[i][0].backward(g, d)
            if i > 0:
                d = self.pools[i - 1].backward(d)

    def _stage_backward(self, i, dout, dh, dhd):
        """The reverse of `_stage_forward(i)`: adds into dh (encoder maps) and dhd (decoder)."""
        g = self.grads
        d = self.fuse[i].backward(g, dout)
        dparts = [None] * LEVELS
        for j in reversed(range(1, LEVELS)):
            d, dparts[j] = self.cats[i][j - 1].backward(d)
        dparts[0] = d
        for j in reversed(range(LEVELS)):
            d = self.units[i][j].backward(g, dparts[j])
            if self.bring[i][j] is not None:
                d = self.bring[i][j].backward(d)
            if j <= i or j == LEVELS - 1:
                dh[j] = _add(dh[j], d)
            else:
                dhd[j] = _add(dhd[j], d)

    # -- the loss: the config's, plus the CGM's presence BCE ----------------------------

    def loss_forward(self, logits, labels, weights):
        """(loss, cache): the segmentation loss (mean over the heads with deep supervision)
        and, with the CGM in training, + the BCE of the presence scores against the
        image-level labels (`presence_targets`)."""
        if self.config.loss == "hybrid" and min(labels.shape[1:]) < MSSSIM_MIN_SIZE:
            raise ValueError(f"unet3p: the hybrid loss's MS-SSIM needs training tiles of at "
                             f"least {MSSSIM_MIN_SIZE} x {MSSSIM_MIN_SIZE} px (its 11-px window "
                             f"at 1/16 scale), got {labels.shape[1]} x {labels.shape[2]}: "
                             f"train on tiles of {MSSSIM_MIN_SIZE} px or more (train --tile "
                             f"{MSSSIM_MIN_SIZE}), or choose "
                             f"loss='bce_dice' or 'softmax_cross_entropy'")
        scores = getattr(logits, "presence", None)
        if scores is None:
            return super().loss_forward(logits, labels, weights)
        seg, seg_cache = super().loss_forward(Heads(logits), labels, weights)
        targets = presence_targets(labels, self.xp, scores.dtype)  # (N, 2)
        cls, cls_cache = bce_with_logits_forward(scores, targets[:, :, None, None])  # (N,2,1,1)
        return seg + cls, PresenceLossCache(seg_cache, cls_cache)

    def loss_backward(self, cache):
        """dL/dlogits of `loss_forward`'s loss: with the CGM a PresenceHeads carrying
        dL/dscores (N, 2, 1, 1) as `presence`."""
        if not isinstance(cache, PresenceLossCache):
            return super().loss_backward(cache)
        out = PresenceHeads(super().loss_backward(cache.seg))
        out.presence = bce_with_logits_backward(1.0, cache.cls)  # (N, 2, 1, 1)
        return out
