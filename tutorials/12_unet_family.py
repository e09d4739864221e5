# %% [markdown]
# # 12. The U-Net family
#
# Six networks followed the 2015 U-Net and are built here on the same hand-written ops:
# the U-Net with BatchNorm (`unet-bn`), the Residual U-Net (`resunet`), UNet++ (`unetpp`),
# UNet 3+ (`unet3p`) and U-Nets with MobileNetV2 and EfficientNet encoders (`mobile-unet`,
# `eff-unet`). This tutorial reads each one off its own description, the per-layer table that
# `layer_table(config, size)` traces from its forward pass, and asks what it changes and what
# that costs:
#
# - for each network: the layers that make it different, its parameters, forward GFLOP at
#   512 x 512 and activation memory, and a training step measured on this CPU at a CPU width;
# - the receptive radius of each, and why a padded network's tiles equal one pass over the
#   image only when they overlap by that radius (and never for EfficientNet's global pooling);
# - how the family compares when trained: the real comparison is `python -m minunet.compare`;
#   without its table this tutorial runs a small toy, labelled as one.
#
# **Know first:** tutorials 04 (the U-Net, its layer table), 07 (overlap-tile) and 11 (the
# family's ops: BatchNorm, padding, stride, depthwise convolutions, bilinear up-sampling).
# **Takes:** about 2 minutes to run in full, 15 s in fast mode (`MINUNET_FAST=1`), on a
# 2-core CPU (the toy comparison trains three networks for 30 s each); 40 minutes to read.

# %%
import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minunet.train
from minunet.data import load_dataset, synthetic_em
from minunet.data.weightmap import weight_map
from minunet.evaluation import metrics as isbi_metrics
from minunet.inference.tiles import predict
from minunet.models import registry
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import ConvGeneral, Pool, Upsample
from minunet.nn.model import Model, ModelConfig, conv_shapes, standardize
from minunet.nn.optim import MomentumSGD, SGDConfig
from minunet.nn.trace import reach, receptive_radius
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint
from minunet.tutorial import setup
from minunet.tutorial_checks import (
    check_stack_radius,
    check_unetpp_fast,
    check_xent_value,
    report,
)

T = setup("12_unet_family")
rng = np.random.default_rng(T.seed)

FAMILY = ("unet", "unet-bn", "resunet", "unetpp", "unet3p", "mobile-unet", "eff-unet")
# the widths that cost about what the U-Net's CPU preset costs (README, "The U-Net family"; the
# entries of python -m minunet.compare)
CPU_WIDTH = {"unet": {"base": 8}, "unet-bn": {"base": 8}, "resunet": {"base": 8},
             "unetpp": {"base": 4}, "unet3p": {"base": 4},
             "mobile-unet": {"width": 0.5, "decoder_base": 4},
             "eff-unet": {"width": 0.5, "decoder_base": 4}}


def config(name, **options):
    """The config of network `name`: its reference configuration, changed by `options`."""
    return registry.config_for(name, options)


def table(name, size=512, **options):
    """The per-layer table of network `name` for an input of side `size` (the valid U-Net,
    which takes no 512 tile, at its paper tile 572)."""
    size = 572 if name == "unet" and size == 512 else size
    return registry.get(name).layer_table(config(name, **options), size)


def show(rows, pattern):
    """The rows whose layer name matches the regular expression `pattern`, then the totals of
    the whole table."""
    print(f"{'layer':<32}{'op':<18}{'output (N,C,H,W)':<22}{'params':>11}{'GFLOP':>8}"
          f"{'act MB':>8}")
    for r in rows:
        if re.search(pattern, r["layer"]):
            print(f"{r['layer']:<32}{r['op']:<18}{str(r['out']):<22}{r['params']:>11,}"
                  f"{r['gflop']:>8.2f}{r['act_mb']:>8.1f}")
    print(f"{'whole network (' + str(len(rows)) + ' rows)':<72}"
          f"{sum(r['params'] for r in rows):>11,}{sum(r['gflop'] for r in rows):>8.1f}"
          f"{sum(r['act_mb'] for r in rows):>8.1f}")


def by_part(rows, part):
    """Parameters, GFLOP and activation MB summed over the parts part(layer name) names."""
    out = {}
    for r in rows:
        p = out.setdefault(part(r["layer"]), [0, 0.0, 0.0])
        p[0] += r["params"]
        p[1] += r["gflop"]
        p[2] += r["act_mb"]
    flop = sum(v[1] for v in out.values())
    mb = sum(v[2] for v in out.values())
    for name, (params, gflop, act) in out.items():
        print(f"{name:<28}{params:>12,} params{gflop:>9.1f} GFLOP ({gflop / flop:4.0%})"
              f"{act:>9.1f} MB ({act / mb:4.0%})")


# %% [markdown]
# ## The family at a glance
#
# Each network's config holds its published (reference) configuration as defaults, here with
# 1 input channel and 2 classes (the U-Net's). One row per network, all read off the traced
# forward: parameters, forward GFLOP (2 per multiply-add), the memory of every layer's
# output for one image (`act MB`: what a forward writes; a training step keeps about twice
# that for the backward, tutorial 04) and the receptive radius (below). The valid U-Net cannot
# take a 512 tile (its sides are $124 + 16b$), so it is measured at its paper tile 572, whose
# output is 388: the last column divides the GFLOP by the output's pixels, the fair measure
# between a network that loses a margin and networks that do not.
#
# **Check.** The U-Net has the paper's 31,030,658 parameters; the U-Net with BatchNorm
# 31,036,546 (milesial/Pytorch-UNet's count for 1 -> 2).

# %%
glance = {}
print(f"{'network':<13}{'input':>6}{'output':>7}{'parameters':>13}{'GFLOP':>8}{'act MB':>8}"
      f"{'radius':>8}{'GFLOP/Mpx out':>15}")
for name in FAMILY:
    rows = table(name)
    size = 572 if name == "unet" else 512
    out = registry.geometry(config(name)).output_size(size)
    r = receptive_radius(registry.get(name), config(name))
    glance[name] = {"params": sum(x["params"] for x in rows),
                    "gflop": sum(x["gflop"] for x in rows),
                    "act_mb": sum(x["act_mb"] for x in rows), "radius": r, "out": out}
    g = glance[name]
    print(f"{name:<13}{size:>6}{out:>7}{g['params']:>13,}{g['gflop']:>8.1f}{g['act_mb']:>8.0f}"
          f"{'none' if r is None else r:>8}{g['gflop'] / (out * out / 1e6):>15.0f}")
assert glance["unet"]["params"] == 31_030_658 and glance["unet-bn"]["params"] == 31_036_546

# %% [markdown]
# Three things stand out before any detail. Per output pixel the padded U-Net with BatchNorm
# costs less than the valid one: the valid U-Net computes its 184-pixel margin and throws it
# away. UNet 3+ costs several times any other, in FLOPs and in memory. And the two networks
# with ImageNet encoders cost an order of magnitude fewer FLOPs than the U-Net, with the
# largest receptive radii (one, EfficientNet's, is the whole image).
#
# ## `unet-bn`: padding and BatchNorm
#
# The most used PyTorch port of the U-Net (milesial/Pytorch-UNet) keeps its layout and
# changes two things: every 3x3 convolution is padded (so the output has the input's size and
# no skip is cropped) and is followed by a BatchNorm instead of a bias. The first level and
# the head of both, side by side:

# %%
for name in ("unet", "unet-bn"):
    print(f"--- {name}")
    show(table(name), r"^(down0|up0)\.|^final")

# %% [markdown]
# The valid U-Net's maps shrink by 2 px per convolution; the padded ones keep 512. The
# parameter difference is BatchNorm's: a convolution loses its bias ($C$ numbers) and gains a
# scale and a shift ($2C$), so the U-Net with BatchNorm has one more parameter per output
# channel of its 18 3x3 convolutions. Its running mean and variance are buffers, not
# parameters (tutorial 11).
#
# **Check.** The difference of the two counts is the sum of the output channels of the
# padded network's 3x3 convolutions.

# %%
bn_rows = table("unet-bn")
channels_3x3 = sum(r["out"][1] for r in bn_rows
                   if r["op"] == "conv2d_general" and r["layer"] != "final")
diff = glance["unet-bn"]["params"] - glance["unet"]["params"]
print(f"parameters: unet-bn - unet = {diff:,}; output channels of its 3x3 convolutions: "
      f"{channels_3x3:,}")
assert diff == channels_3x3

# %% [markdown]
# ## `resunet`: residual units, strided convolutions
#
# The Residual U-Net (Zhang, Liu and Wang 2018) makes each level one pre-activation residual
# unit: BN-ReLU-conv twice, plus a shortcut (a 1x1 convolution with BatchNorm where the shape
# changes). It down-samples with a stride-2 first convolution instead of a max-pool, and
# up-samples bilinearly, without weights, instead of with an up-convolution. Three levels and
# a bridge, not four and a bottleneck.

# %%
show(table("resunet"), r"^(enc1|bridge|dec2)\.")

# %% [markdown]
# `enc1.conv0` halves the map (stride 2) where the U-Net pools, `*.skip.conv` is the
# shortcut's 1x1 convolution, and `bridge.upsample` has no parameters (the `params` of an
# up-sampling row are those of the BatchNorm that follows it and rides along in the table).
# With about a quarter of the U-Net's parameters its activation memory is larger: three
# convolutions per level where the U-Net has two, every output kept at full width.
#
# ## `unetpp`: nested dense skips and deep supervision
#
# UNet++ (Zhou et al. 2018) fills the gap between encoder and decoder with nodes $x^{i,j}$:
# each node sees every earlier node of its level and the up-sampled node below. A head on
# each $x^{0,j}$ ($j = 1..4$) is trained (deep supervision). The diagram is drawn from the
# layer table: a node per `x{i}_{j}` group of rows, its area the node's GFLOP.

# %%
pp_rows = table("unetpp")
node_gflop = {}
for r in pp_rows:
    m = re.match(r"x(\d)_(\d)\.", r["layer"])
    if m:
        key = (int(m.group(1)), int(m.group(2)))
        node_gflop[key] = node_gflop.get(key, 0.0) + r["gflop"]
fig, ax = plt.subplots(figsize=(7, 3.8))
for (i, j), g in node_gflop.items():
    for m in range(j):  # the dense skips: every earlier node of the level, arcs over the rest
        ax.annotate("", (j, -i), (m, -i), arrowprops={
            "arrowstyle": "->", "color": "0.6",
            "connectionstyle": f"arc3,rad={0.12 * (j - m - 1)}"})
    if j == 0 and i > 0:
        ax.annotate("", (0, -i), (0, -i + 1), arrowprops={"arrowstyle": "->", "color": "C0"})
    if j > 0:
        ax.annotate("", (j, -i), (j - 1, -i - 1), arrowprops={"arrowstyle": "->", "color": "C1"})
    ax.scatter(j, -i, s=40 + 30 * g, color="C2" if j else "C0", zorder=3)
    ax.text(j + 0.12, -i + 0.15, f"x{i},{j}\n{g:.0f}", fontsize=7)
for j in range(1, 5):
    ax.text(j, 0.55, f"head {j}", ha="center", fontsize=8, color="C3")
ax.set_xlim(-0.5, 4.8)
ax.set_ylim(-4.6, 0.9)
ax.set_axis_off()
ax.set_title("UNet++ at 512 x 512: nodes x(i,j) and their GFLOP\n(blue: pool down; orange: "
             "up-conv from below; grey: dense skips)", fontsize=9)
fig.tight_layout()
T.figure(fig, "unetpp_nodes")
plt.show()

# %% [markdown]
# Deep supervision buys a choice at inference. **Accurate mode** (`mode="accurate"`, the
# default) averages the four heads' probabilities and needs every node. **Fast mode**
# (`mode="fast", prune=L`) keeps head $L$ only, and with it only the nodes $x^{i,j}$ with
# $i + j \le L$: the pruned UNet++ $L$. What pruning saves, from the tables of the pruned
# configurations:

# %%
for mode, prune in (("accurate", 0), ("fast", 4), ("fast", 3), ("fast", 2), ("fast", 1)):
    rows = table("unetpp", mode=mode, prune=prune)
    print(f"mode={mode:<9} prune={prune}: {sum(r['params'] for r in rows):>10,} parameters "
          f"used, {sum(r['gflop'] for r in rows):6.1f} GFLOP")

# %% [markdown]
# UNet++ trains with its own loss, $0.5\,\text{BCE} + 1 - \text{Dice}$, on one sigmoid output
# per head. minunet writes a sigmoid output $z$ as the two-class logits $[0, z]$, so that
# every command reads probabilities as for the U-Net (docs/DESIGN.md, "The family's
# conventions"). Exercise 1 switches a UNet++ to fast mode.
#
# ## `unet3p`: full-scale skips
#
# UNet 3+ (Huang et al. 2020) gives every decoder stage all five scales: the finer encoder
# maps max-pooled down, its own level's map, the coarser decoder maps bilinearly up-sampled,
# each through a 3x3 convolution to 64 channels, concatenated (320) and fused by a
# 320 -> 320 convolution. The last stage works at full resolution:

# %%
p3_rows = table("unet3p")
show(p3_rows, r"^up0\.|^final")
print()
by_part(p3_rows, lambda name: "decoder stages up3..up0" if name.startswith("up")
        else "head" if name == "final" else "encoder (down0..3, bottleneck)")

# %% [markdown]
# The decoder, not the encoder, is where UNet 3+ spends: five 3x3 convolutions and a
# 320-channel fusion per stage, the last at full resolution. That is why its cost is several
# times the U-Net's with fewer parameters. Its own loss is focal + (1 - MS-SSIM) + (1 - IoU),
# whose MS-SSIM needs an output of at least 176 px (five scales of an 11-px window); exercise 2
# gives it the U-Net's loss instead.
#
# ## `mobile-unet` and `eff-unet`: an ImageNet encoder
#
# segmentation_models_pytorch's `Unet` puts a classification network's feature maps where the
# U-Net's encoder was, and a light decoder (nearest up-sampling, two 3x3 convolutions per
# stage) on top. MobileNetV2's blocks are inverted residuals: a 1x1 expansion, a 3x3
# depthwise convolution, a 1x1 projection (tutorial 11 measured their cost). Summed by kind of
# layer:

# %%
def mobile_part(name):
    for kind in ("expand", "dw", "project", "stem", "head"):
        if f".{kind}." in name or name.startswith(f"enc.{kind}"):
            return f"encoder {kind}"
    return "decoder and final"


by_part(table("mobile-unet"), mobile_part)

# %% [markdown]
# The decoder, not the encoder, takes most of the FLOPs. In the encoder the depthwise
# convolutions hold about a percent of the parameters and the FLOPs but many times that share
# of the memory: each writes a map with $t = 6$ times the block's input channels (the
# expansion's output), and computes little per value written. On a CPU such layers run at the
# speed of memory, not of arithmetic; the measured steps below show it.
#
# EfficientNet's MBConv block adds a squeeze-excitation: each channel is scaled by a gate
# computed from the **mean over the whole image** of that channel (`gap`, global average
# pooling). One block of the second stage:

# %%
show(table("eff-unet"), r"^enc\.stage2\.block0\.")
found = reach(registry.get("eff-unet"), config("eff-unet"))
print(f"\nreceptive radius of eff-unet: {found.radius}; {found.reason}")

# %% [markdown]
# The gate's input has shape $(N, C, 1, 1)$: every output pixel depends on every input pixel.
# That has a consequence for tiling, below.
#
# ## A training step on this CPU
#
# FLOPs are one cost; time on a real machine is another. Each network at its CPU width (the
# widths `python -m minunet.compare` trains: about the U-Net's CPU preset's cost), with its
# own loss, one image per step, the same output side for all (the valid U-Net gets the input
# that gives it; fast mode: a smaller tile, and UNet 3+ with the U-Net's loss, since its own
# needs 176 px), momentum SGD: a warm-up step, then the median of a few. The times depend on
# this machine and its load; expect the step times to order roughly, but not exactly, as the
# FLOPs do.

# %%
side = T.pick(192, 64)
steps = T.pick(5, 2)
step_rows = {}
for name in FAMILY:
    cfg = config(name, **CPU_WIDTH[name])
    if cfg.loss == "hybrid" and side < 176:
        cfg = replace(cfg, loss="softmax_cross_entropy")
    geometry = registry.geometry(cfg)
    size = next(s for s in range(side, side + 400) if geometry.is_valid(s)
                and geometry.output_size(s) >= side)
    n_out = geometry.output_size(size)
    net = registry.build_model(cfg, seed=0)
    x = rng.standard_normal((1, 1, size, size)).astype(np.float32)
    labels = rng.integers(0, 2, (1, n_out, n_out))
    weights = np.ones((1, n_out, n_out), np.float32)
    opt = MomentumSGD(net.params, SGDConfig(lr=1e-4, momentum=0.99, warmup=0))
    seconds = []
    for it in range(steps + 1):  # the first one warms up (allocations, Numba)
        start = time.perf_counter()
        loss, cache = net.loss_forward(net.forward(x, dropout_key=it), labels, weights)
        net.zero_grad()
        net.backward(net.loss_backward(cache))
        opt.step(net.grads, it)
        seconds.append(time.perf_counter() - start)
    rows = registry.get(name).layer_table(cfg, size)
    step_rows[name] = {"size": size, "out": n_out, "params": net.num_parameters(),
                       "gflop": sum(r["gflop"] for r in rows), "s": float(np.median(seconds[1:])),
                       "loss": cfg.loss}
print(f"{'network':<13}{'width':<28}{'input':>6}{'output':>7}{'params':>10}{'GFLOP':>7}"
      f"{'step ms':>9}  loss")
for name, s in step_rows.items():
    width = ",".join(f"{k}={v}" for k, v in CPU_WIDTH[name].items())
    print(f"{name:<13}{width:<28}{s['size']:>6}{s['out']:>7}{s['params']:>10,}{s['gflop']:>7.2f}"
          f"{1e3 * s['s']:>9.0f}  {s['loss']}")

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.8))
for k, (name, s) in enumerate(step_rows.items()):
    ax.scatter(3 * s["gflop"], 1e3 * s["s"], color=f"C{k}", s=40)
    ax.annotate(name, (3 * s["gflop"], 1e3 * s["s"]), fontsize=8, xytext=(4, 3),
                textcoords="offset points")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("GFLOP of a training step (3 x the forward's)")
ax.set_ylabel("measured step (ms)")
ax.set_title(f"a training step at CPU widths, output {side} x {side}", fontsize=10)
ax.grid(alpha=0.3, which="both")
fig.tight_layout()
T.figure(fig, "step_times")
plt.show()

# %% [markdown]
# The networks with ImageNet encoders take far fewer FLOPs than their step time suggests: many
# small layers, depthwise convolutions that move more memory than they compute, and a
# per-layer overhead that a few large convolutions do not have.
#
# ## The receptive radius
#
# A network's **receptive radius** is the smallest overlap $h$ such that a tile, cut on the
# network's grid and cropped by $h$ on every side after the forward, computes exactly the
# numbers of one pass over the whole image. For the valid U-Net it is half its margin, 92: its
# tiles never see a zero they should not. A padded network's border pixels do: a padded
# convolution reads zeros beyond the tile where one pass over the image reads neighbours, and
# the error walks inwards by the convolution's reach at every layer.
#
# `minunet.nn.trace.receptive_radius(cls, config)` reads the radius off the traced forward:
# per value and per position it carries the interval of input pixels the position depends on
# (a read of the padding counts as outside the tile). A padded $k \times k$ convolution widens
# each interval by $(k-1)/2$ pixels **of its own map**; at half resolution that is twice as
# many input pixels. A 2x2 pool and a nearest up-sampling by 2 make a position's interval
# depend on its **phase** on the 2-pixel grid: position $2m$ and $2m+1$ both read cell $m$.
#
# To see this on networks small enough to count by hand, here is a network of a few lines: a
# stack of padded convolutions, pools and up-samplings, a `Model` like the family's (its
# forward is all `receptive_radius` needs; the backward makes it trainable too).

# %%
@dataclass
class StackConfig(ModelConfig):
    arch: str = "stack"
    layers: tuple = ("conv3",)  # "convK" (padded K x K + ReLU), "pool" (2x2), "up" (nearest x2)
    width: int = 2


class Stack(Model):
    """A chain of StackConfig.layers and a 1x1 head."""

    arch, config_class = "stack", StackConfig

    def parameter_shapes(self):
        shapes, c = {}, self.config.in_channels
        for i, kind in enumerate(self.config.layers):
            if kind.startswith("conv"):
                shapes |= conv_shapes(f"l{i}", c, self.config.width, int(kind[4:]))
                c = self.config.width
        return shapes | conv_shapes("head", c, self.config.n_classes, 1)

    def build(self, o):
        self.stack = [ConvGeneral(o, f"l{i}", padding=int(kind[4:]) // 2) if kind.startswith(
            "conv") else Pool(o) if kind == "pool" else Upsample(o, "nearest")
            for i, kind in enumerate(self.config.layers)]
        self.head = ConvGeneral(o, "head", padding=0, relu=False)

    def layers(self):
        return [*self.stack, self.head]

    @classmethod
    def geometry_of(cls, config):
        return PaddedGeometry(grid=2 ** config.layers.count("pool"))

    def forward(self, x, dropout_key=None):
        for layer in self.stack:
            x = layer.forward(self.params, x) if isinstance(layer, ConvGeneral) else \
                layer.forward(x)
        return self.head.forward(self.params, x)

    def backward(self, dlogits):
        d = self.head.backward(self.grads, dlogits)
        for layer in reversed(self.stack):
            d = layer.backward(self.grads, d) if isinstance(layer, ConvGeneral) else \
                layer.backward(d)


for layers in (("conv3", "conv5", "conv3"), ("pool", "conv3", "up")):
    found = reach(Stack, StackConfig(layers=layers))
    print(f"{' -> '.join(layers):<24} receptive radius {found.radius}, grid-blind count "
          f"{found.blind}")

# %% [markdown]
# Padded 3x3, 5x5 and 3x3 convolutions: $1 + 2 + 1 = 4$. Pool, 3x3 at half resolution,
# up-sampling: cell $m$ reads input pixels $[2m, 2m+1]$; the convolution widens that to
# $[2m-2, 2m+3]$; output pixel $o = 2m$ reads $[o-2, o+3]$, pixel $o = 2m+1$ reads
# $[o-3, o+2]$. So some pixel reaches 3 px away (the grid-blind count), but never 3 px to
# **both** sides: on the grid (tiles start at even pixels) the first even pixel that reaches
# only inside the tile is 2, the first odd one 3, and a crop of 2 keeps only those. The
# radius is 2.
#
# The radii of the family (their reference configurations; the radius depends on the layers,
# not on the widths):

# %%
for name in FAMILY:
    found = reach(registry.get(name), config(name))
    print(f"{name:<13} radius {str(found.radius):>5}  grid-blind {str(found.blind):>5}  "
          f"({found.reason})")

# %% [markdown]
# ## Tiles with a halo: exact only from the radius on
#
# `minunet.inference.tiles.predict(model, image, tile=..., halo=h)` overlaps a padded
# network's tiles by $h$ on every side (mirrored at the image border) and keeps each tile's
# centre. With one tile over the whole image (`tile=4096`) the same halo gives one pass over
# the mirrored image. A small U-Net with BatchNorm (depth 2, base 4, float64, in eval mode,
# its running statistics set by one training-mode forward) on a synthetic EM image, for every
# halo from 0 to a few pixels past the radius: the **seam error**, the largest difference
# between the tiled and the single-pass probabilities.
#
# **Check.** Every halo below the radius leaves a seam error far above rounding (above
# $10^{-8}$); every halo from the radius on is exact to $10^{-12}$.

# %%
def with_statistics(model, image):
    """model in eval mode, its BatchNorms' running statistics set by one training-mode forward
    on the image (as training would set them; eval mode refuses to run without)."""
    x = standardize(image)[None, None].astype(model.config.dtype)  # (1, 1, H, W)
    model.train().forward(x, dropout_key=0)
    return model.eval()


em = synthetic_em(T.pick(128, 64), seed=T.seed).image / 255.0
small = with_statistics(registry.build_model(
    config("unet-bn", depth=2, base=4, dtype="float64"), seed=1), em)
r_small = receptive_radius(type(small), small.config)
halos = list(range(0, r_small + 5))
seam = []
for h in halos:
    one = predict(small, em, tile=4096, halo=h)
    tiled = predict(small, em, tile=24 + 2 * h, halo=h)
    seam.append(float(np.abs(one - tiled).max()))
print(f"unet-bn, depth 2: receptive radius {r_small}")
for k in range(0, len(halos), 7):
    print("   ".join(f"h={h:<2} {e:7.1e}" for h, e in zip(halos[k:k + 7], seam[k:k + 7],
                                                          strict=True)))
assert all(e > 1e-8 for h, e in zip(halos, seam, strict=True) if h < r_small)
assert all(e < 1e-12 for h, e in zip(halos, seam, strict=True) if h >= r_small)

fig, ax = plt.subplots(figsize=(6.5, 3.4))
ax.semilogy(halos, np.maximum(seam, 1e-17), "o-")
ax.axvline(r_small, color="k", ls="--", lw=1, label=f"receptive radius {r_small}")
ax.set_xlabel("halo h (px)")
ax.set_ylabel("max |tiled - one pass|")
ax.set_title("seam error of a padded network's tiles (float64)", fontsize=10)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
T.figure(fig, "seam_error")
plt.show()

# %% [markdown]
# The error falls as the halo grows (the zeros' influence fades through the layers) but does
# not vanish until the halo covers the radius: then it drops to zero. `predict` uses the radius
# rounded up to the grid by default; `predict --halo N` trades exactness for speed and prints
# the seam error it measured.
#
# EfficientNet's squeeze-excitation averages over the whole tile, so each tile's gates differ
# from the whole image's whatever the overlap. A small `eff-unet` (its CPU width, float64):
#
# **Check.** No halo, however large, makes it exact: the seam error stays above $10^{-8}$.

# %%
em_eff = synthetic_em(T.pick(160, 96), seed=T.seed).image / 255.0
eff = with_statistics(registry.build_model(
    config("eff-unet", dtype="float64", **CPU_WIDTH["eff-unet"]), seed=1), em_eff)
eff_seam = {}
for h in (16, 32, 48):
    one = predict(eff, em_eff, tile=4096, halo=h)
    tiled = predict(eff, em_eff, tile=32 + 2 * h, halo=h)
    eff_seam[h] = float(np.abs(one - tiled).max())
print("eff-unet seam error by halo: " + ", ".join(f"{h} px: {e:.1e}" for h, e in
                                                    eff_seam.items()))
assert all(e > 1e-8 for e in eff_seam.values())

# %% [markdown]
# So `predict` runs `eff-unet` as one tile where the image fits in memory, and otherwise tiles
# it with a large halo and prints the seam error.
#
# ## The comparison
#
# Which network segments best? Only training answers that, by one protocol for all: the same
# data, the same budget of training time, several seeds, held-out slices scored by the ISBI
# 2012 measures. That is `python -m minunet.compare` (README, "Comparing the family"):
#
#     python -m minunet.compare --data isbi2012:PATH --time 10m --seeds 0,1,2 --out runs/compare
#
# It first times every network's training step side by side (`calibration.json`), then gives
# each network the steps ten minutes buy at its own step time, so a slow network gets fewer
# steps, and the steps do not depend on how busy the machine was during its run. It writes
# `runs/compare/table.csv` (and `table.md`, `figure.png`); the full run takes hours on a CPU.
# The project's own comparison is in the repository: `MINUNET_COMPARE=docs/compare/isbi2012`
# (or `docs/compare/cells`, the same networks scored as instances by F1, SEG and AP, or your
# own output folder) and the next cell shows its table.
# Otherwise the cell runs a **toy**: three networks, one short time budget each, one seed, on
# the built-in synthetic EM (or on ISBI 2012 when `MINUNET_ISBI2012` is set, scored on its
# held-out slices). A toy says that the networks train, not which one is better: with one
# seed and seconds of training, the differences are noise, and a network that looks far
# behind may only be slower to start (its own loss, fewer steps in the same time). That is why
# the comparison also draws held-out V_rand against minutes of training.

# %%
compare_dir = os.environ.get("MINUNET_COMPARE", "").strip()
compare_table = Path(compare_dir).expanduser() / "table.csv" if compare_dir else None
toy = None
if compare_table is not None and compare_table.is_file():
    with open(compare_table, newline="") as f:
        compared = list(csv.DictReader(f))
    print(f"the comparison's table (MINUNET_COMPARE): {len(compared)} entries")
    # ISBI 2012's table has the challenge's scores, the cells' the object scores
    # (F1, SEG, AP); each mean over the seeds done, +TTA: predict --tta 8
    cells = bool(compared) and "f1_mean" in compared[0]
    shown = ([("F1", "f1"), ("+TTA", "f1_tta8"), ("SEG", "seg"), ("AP", "ap")] if cells else
             [("V_rand", "v_rand"), ("+TTA", "v_rand_tta8"), ("V_info", "v_info"),
              ("pixel err", "pixel_error")])
    print(f"{'entry':<14}{'parameters':>12}{'GFLOP':>9}{'steps':>8}"
          + "".join(f"{title:>10}" for title, _ in shown) + f"{'seeds':>6}")
    for row in compared:
        def num(key, fmt="{:.3f}", row=row):
            return fmt.format(float(row[key])) if row.get(key) not in ("", None) else "-"
        print(f"{row['entry']:<14}{num('params', '{:,.0f}'):>12}{num('gflop', '{:.1f}'):>9}"
              f"{num('steps_mean', '{:,.0f}'):>8}"
              + "".join(f"{num(key + '_mean'):>10}" for _, key in shown)
              + f"{row['seeds_done']:>6}")
else:
    if compare_dir:
        print("MINUNET_COMPARE has no table.csv: running the toy instead")
    print("TOY COMPARISON: one seed, seconds of training; not the comparison "
          "(python -m minunet.compare)")
    work = Path(tempfile.mkdtemp(prefix="minunet-12-"))
    data_arg = f"isbi2012:{T.isbi}" if T.isbi else T.pick("synthetic:n=6,size=256",
                                                          "synthetic:n=3,size=200")
    budget = T.pick(["--time", "30s"], ["--iters", "4"])
    base_args = ["--preset", T.pick("cpu", "tiny"), "--data", data_arg, "--seed", "0",
                 "--warmup", T.pick("20", "2"), "--device", "auto", *budget]
    entries = {"unet": ["--base", T.pick("8", "4")],
               "unet-bn": ["--arch", "unet-bn", "--base", "8"],
               "unetpp": ["--arch", "unetpp", "--base", "4"]}
    data = load_dataset(data_arg)
    scored = data.holdout or data.val
    toy = {}
    try:
        for name, extra in entries.items():
            run = work / name
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()) as log:
                status = minunet.train.main([*base_args, *extra, "--out", str(run)])
            if status != 0:
                raise RuntimeError(f"{name}: training failed\n{log.getvalue()[-2000:]}")
            iters = json.loads((run / "config.json").read_text())["train"]["iters"]
            model = model_from_checkpoint(load_checkpoint(run / "best.npz"), run / "best.npz")
            probs = [predict(model, s.image)[1] for s in scored]
            scores = isbi_metrics.scores_of([isbi_metrics.slice_counts(p, s.label == 1)
                                             for p, s in zip(probs, scored, strict=True)])
            toy[name] = {"iters": iters, "s": time.perf_counter() - start, "scores": scores,
                         "prob": probs[0]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"data: {'ISBI 2012' if T.isbi else 'synthetic EM'}, scored on "
          f"{'held-out' if data.holdout else 'validation'} image(s) "
          f"{', '.join(s.name for s in scored)}")
    print(f"{'network':<10}{'steps':>7}{'seconds':>9}{'V_rand':>8}{'V_info':>8}{'pixel err':>10}")
    for name, t in toy.items():
        sc = t["scores"]
        print(f"{name:<10}{t['iters']:>7}{t['s']:>9.0f}{sc.v_rand:>8.3f}{sc.v_info:>8.3f}"
              f"{sc.pixel_error:>10.3f}")

# %%
if toy:
    fig, axes = plt.subplots(1, len(toy) + 1, figsize=(2.7 * (len(toy) + 1), 3))
    axes[0].imshow(scored[0].image, cmap="gray")
    axes[0].set_title(f"image {scored[0].name}", fontsize=9)
    for ax, (name, t) in zip(axes[1:], toy.items(), strict=True):
        ax.imshow(t["prob"], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"{name}: P(cell)\n{t['iters']} steps (toy)", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    T.figure(fig, "toy_comparison")
    plt.show()
else:
    print("the comparison's figure: figure.png in the MINUNET_COMPARE folder")

# %% [markdown]
# ## Summary
#
# - `unet-bn` pads and normalises: the output keeps the input's size, a convolution's bias
#   becomes a BatchNorm's scale and shift, and per output pixel it costs less than the valid
#   U-Net, which computes a margin it discards.
# - `resunet` builds each level from a residual unit, down-samples by stride and up-samples
#   without weights: a third of the parameters, more activation memory.
# - `unetpp` nests dense skips between encoder and decoder and supervises four heads; its fast
#   mode prunes the network to one head and the nodes it needs.
# - `unet3p` feeds every decoder stage all five scales: its full-resolution decoder makes it
#   the most expensive of the family.
# - `mobile-unet` and `eff-unet` borrow ImageNet encoders: an order of magnitude fewer FLOPs,
#   but many small, memory-bound layers, so a CPU step is not that much cheaper.
# - A padded network's tiles equal one pass only with a halo of its receptive radius; a
#   network with global pooling (`eff-unet`) never tiles exactly.
# - Which one segments best is for `python -m minunet.compare` to say, not a toy.
#
# ## Exercises
#
# **1. UNet++ in fast mode.** Write `to_fast(model, L)`: it returns a UNet++ with the weights
# of `model` whose inference is the fast mode pruned at head `L`
# (`mode="fast", prune=L`; the config is a dataclass: `dataclasses.replace`; a new model
# from `registry.build_model(config)`, the weights from `model.state_dict()`). Then time the
# model's accurate-mode forward against your fast one on `x_pp` and print how much the
# probabilities change. Self-check: for every $L$, your fast-mode output equals the
# training-mode head $L$ of the same weights (dropout off); the check prints its own timings.

# %%
pp = registry.build_model(config("unetpp", base=4), seed=2).eval()  # accurate mode
x_pp = standardize(synthetic_em(T.pick(128, 64), seed=T.seed).image / 255.0)[None, None]
x_pp = x_pp.astype(np.float32)  # (1, 1, S, S)


def to_fast(model, L):
    """model: a UNet++ (accurate mode). Returns a UNet++ with its weights in fast mode, head L."""
    raise NotImplementedError("your turn: UNet++'s fast mode")


report(check_unetpp_fast(to_fast, pp, x_pp))

# %% [markdown]
# **2. UNet 3+ with the U-Net's loss.** `net3p` below trains with its paper's hybrid loss.
# Move it to the U-Net's weighted cross-entropy (`loss="softmax_cross_entropy"` in its
# config) and compute that loss, one number, on the logits `logits3p` it gives for `x3p`,
# with the labels `labels3p` and the paper's weight map `weights3p`, into `my_loss`.
# Predict first: the logits are $[0, z]$; what is the cross-entropy of
# $\mathrm{softmax}([0, z])$? Self-check: compared with the weighted binary cross-entropy of
# $z$ to a relative $10^{-5}$.

# %%
sample3p = synthetic_em(176, seed=T.seed)  # 176 px: the smallest side its own loss takes
net3p = with_statistics(registry.build_model(config("unet3p", base=2), seed=3),
                        sample3p.image / 255.0)
x3p = standardize(sample3p.image / 255.0)[None, None].astype(np.float32)  # (1, 1, 176, 176)
labels3p = (sample3p.label > 0).astype(np.int64)[None]  # (1, 176, 176): 1 = cell
weights3p = weight_map(labels3p[0])[None]  # (1, 176, 176)
logits3p = net3p.forward(x3p)  # (1, 2, 176, 176): [0, z]
print(f"its own loss ({net3p.config.loss}): "
      f"{float(net3p.loss_forward(logits3p, labels3p, weights3p)[0]):.4f}")

my_loss = None  # your value

report(check_xent_value(my_loss, logits3p, labels3p, weights3p))

# %% [markdown]
# **3. A receptive radius by hand.** Count the receptive radius of the stack below: a padded
# 3x3 convolution, a 2x2 max-pool, two padded 3x3 convolutions at half resolution, a nearest
# up-sampling by 2 and a padded 3x3 convolution (the 1x1 head adds nothing). Follow the
# intervals of an even and of an odd output pixel as in the worked example. Write it into
# `my_radius`. Self-check: compared with `receptive_radius(Stack, stack_config)`.

# %%
stack_config = StackConfig(layers=("conv3", "pool", "conv3", "conv3", "up", "conv3"))
my_radius = None  # your count (px)

report(check_stack_radius(my_radius, Stack, stack_config))
