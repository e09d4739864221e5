"""UNet++: the nested U-Net of Zhou, Rahman Siddiquee, Tajbakhsh and Liang ("UNet++: A Nested
U-Net Architecture for Medical Image Segmentation", DLMIA 2018), as the authors' released
Keras code builds it (MrGiovanni/UNetPlusPlus, keras/helper_functions.py, `UNetPlusPlus`).

Every node x^{i,j} (level i = 0..4 down, column j) is one convolution unit H; the column j = 0
is the encoder, and each later node sees every earlier node of its level and the node below:

    x^{i,0} = H(pool(x^{i-1,0}))                                 (x^{0,0} = H(input))
    x^{i,j} = H([U(x^{i+1,j-1}), x^{i,0}, ..., x^{i,j-1}])       j >= 1

    level 0   x00 -----> x01 -----> x02 -----> x03 -----> x04     32 ch  S
               |        /          /          /          /        heads 1..4: conv1x1
    level 1   x10 -----> x11 -----> x12 -----> x13                64 ch  S/2   on x01..x04
               |        /          /          /
    level 2   x20 -----> x21 -----> x22                          128 ch  S/4
               |        /          /
    level 3   x30 -----> x31                                     256 ch  S/8
               |        /
    level 4   x40                                                512 ch  S/16

    ("|": pool down; "/": U, up from x^{i+1,j-1} to x^{i,j}; "----->": the skips, each node
    to every later node of its level)

H is the Keras code's `standard_unit`: two 3x3 convolutions (padding 1, with bias), each
followed by ReLU and dropout. U is a 2x2 stride-2 transposed convolution (with bias, no ReLU)
to the level's width, one per node. 32 * 2^i kernels at level i. The heads are 1x1
convolutions (with bias) to one sigmoid output each (head="sigmoid", through BinaryHead: the
logits [0, z], so every command that reads class probabilities works), or to n_classes
softmax outputs (head="softmax").

What it changes from the U-Net (minunet/models/unet.py): the skip of level i is no longer the
encoder map alone but a dense column of nodes that bridge the semantic gap between encoder and
decoder; every 3x3 convolution is padded (output size = input size, no crop; sizes on the
16-px grid); widths 32..512 instead of 64..1024; the decoder is the column j = 4 - i; deep
supervision adds a head on each x^{0,j}.

Deep supervision (`deep_supervision=True`, the default): in training, forward returns a
minunet.nn.model.Heads of the four heads' logits (on x01, x02, x03, x04) and the model's loss
is the mean of the loss over the heads; the loss is the paper's 0.5 * BCE - Dice ("bce_dice",
the default here). At inference (eval mode) `mode` picks:

- "accurate": the four heads averaged (paper, Sec. 2: "the outputs from all segmentation
  branches are averaged"). The paper and the Keras code average the sigmoid outputs, the
  probabilities, not the logits, so we do the same: the output is
  log((1/4) sum_j softmax(a_j)) (minunet/ops/elementwise.py, `log_mean_softmax`), logits whose
  softmax is exactly the mean of the heads' class probabilities ([1 - p, p] with p the mean
  of sigma(z_j) for the sigmoid heads). Averaging the logits instead would give
  sigma(mean z_j), a different ensemble (one head at z = 10 and three at z = -1 give mean
  p = 0.45 but sigma(1.75) = 0.85). The z = log(p / (1 - p)) of a mean p formed in float32 is
  fragile: p rounds to 1 once every head's z exceeds ~17 and z becomes inf; the log-space
  form (log-softmax per head, a log-sum-exp over the heads, minus log 4) never forms p and is
  finite for any finite logits. Its logits are normalised log-probabilities (the first is not
  0 as in [0, z]); only their softmax is read.
- "fast": one head, x^{0,L} with L = `prune` (1..4; 0 means the full depth): the pruned
  UNet++ L1..L4 of the paper's Sec. 2. Only the nodes that head needs (i + j <= L) are
  computed; its output equals the training-mode head L of the same weights.

Without deep supervision only x^{0,4} has a head (the Keras model then counts only that one),
forward returns its logits in training and in eval mode alike, and `prune` must be the depth.

Parameters at the reference configuration (depth 4, base 32, 1 input channel, one sigmoid
output): 9,041,601 with one head (deep_supervision=False), 9,041,700 with the four heads (3 x
33 more), as the Keras code's model.summary() counts them. The U-Net of the same widths in the
same code has 7,759,521 (14 % fewer): minunet's "unet" at base 32 (its 3x3 convolutions
unpadded, which changes no count) has 7,759,554, that number plus 33 for its two-class softmax
head (1x1, 32 -> 2, against 32 -> 1) (tests/family/test_unetpp.py checks both).

Choices the paper leaves open, and what is taken here:
- concat order: the up-sampled map first, then x^{i,0}, ..., x^{i,j-1}, as the Keras code
  (`concatenate([up1_3, conv1_1, conv1_2])`); the paper's formula lists U last. This only
  permutes the first convolution's input channels.
- dropout: the Keras code puts Dropout(0.5) (helper_functions.py's dropout_rate; not 0.2)
  after each of the unit's two ReLUs. We keep it as the option `dropout`, default 0.5 as
  released; forward then needs a dropout_key in training. dropout=0 switches it off.
- the Keras code's L2 weight decay (1e-4 on the convolution kernels) belongs to the
  optimiser here; initialisation is the house's He normal for every weight (the Keras code:
  he_normal for the convolutions, Keras' default glorot_uniform for the transposed ones).
- max-pool 2x2, stride 2 (Keras' MaxPooling2D); sizes are multiples of the grid 2^depth.

Parameter names: `x{i}_{j}.conv0|conv1.weight|bias` (the node's unit), `x{i}_{j}.upconv.weight
|bias` (j >= 1; (Cin, Cout, 2, 2) as torch's ConvTranspose2d), `head{j}.weight|bias` (j = 1..4,
head on x^{0,j}; only `head4` without deep supervision).

`forward` and `backward` are mirror images: the backward walks the forward's nodes in exact
reverse order with one gradient accumulator per node, since a node feeds several later nodes
(the skip to every later node of its level, U to the node above and to the right, pool to the
node below) and its gradient is the sum over those uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.models.registry import register
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import (
    BinaryHead,
    Concat,
    ConvGeneral,
    Dropout,
    LogMeanSoftmax,
    MaxPool,
    UpConv,
)
from minunet.nn.model import Heads, Model, ModelConfig, conv_shapes, subkey

HEADS = ("sigmoid", "softmax")
MODES = ("accurate", "fast")


@dataclass
class UNetPPConfig(ModelConfig):
    """UNet++'s options, after those every architecture has (minunet/nn/model.py)."""

    arch: str = "unetpp"  # the architecture build_model makes (minunet/models/registry.py)
    loss: str = "bce_dice"  # the paper's 0.5 * BCE - Dice (Keras code: bce_dice_loss)
    depth: int = 4  # poolings: levels 0..depth (4 in the paper)
    base: int = 32  # kernels at level 0, doubling per level (32 .. 512 in the paper)
    head: str = "sigmoid"  # sigmoid: one output z per head -> logits [0, z]; softmax: K
    deep_supervision: bool = True  # a head on every x^{0,j} (training: a Heads of them)
    mode: str = "accurate"  # inference: the heads' mean probability, or "fast": one head
    prune: int = 0  # fast mode: the head x^{0,prune}, 1..depth (0: the full depth)
    dropout: float = 0.5  # after each ReLU of every unit, as the Keras code (0: none)

    def __post_init__(self):
        super().__post_init__()
        if self.depth < 1 or self.base < 1:
            raise ValueError(f"invalid UNetPPConfig {self}: need depth >= 1 and base >= 1")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"head='sigmoid' gives two-class logits [0, z]; n_classes is "
                             f"{self.n_classes}: use head='softmax'")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.prune <= self.depth:
            raise ValueError(f"prune must be in 1..depth={self.depth} (0: the full depth), "
                             f"got {self.prune}")
        if not self.deep_supervision and self.prune not in (0, self.depth):
            raise ValueError(f"prune={self.prune} needs the head on x^(0,{self.prune}): "
                             f"without deep supervision only x^(0,{self.depth}) has one; use "
                             f"deep_supervision=True or prune=0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def pruned_depth(self) -> int:
        """L of the pruned UNet++ L that fast mode runs."""
        return self.prune or self.depth


# --- the network -----------------------------------------------------------------------


def channels(config: UNetPPConfig, level: int) -> int:
    """Kernels at a level: base * 2^level (32, 64, 128, 256, 512 in the paper)."""
    return config.base * 2**level


def nodes(last: int) -> list[tuple[int, int]]:
    """The nodes (i, j) with i + j <= last, in the forward's order (the Keras code's): each new
    encoder node x^{k,0}, then the anti-diagonal it completes, x^{k-1,1}, ..., x^{0,k}."""
    return [(k - j, j) for k in range(last + 1) for j in range(k + 1)]


def head_columns(config: UNetPPConfig) -> list[int]:
    """The columns j whose x^{0,j} has a head: 1..depth with deep supervision, else depth."""
    return list(range(1, config.depth + 1)) if config.deep_supervision else [config.depth]


def parameter_shapes(config: UNetPPConfig) -> dict[str, tuple]:
    """Every parameter's name and shape (the module doc's names; torch's layouts)."""
    shapes = {}
    for i, j in nodes(config.depth):
        c = channels(config, i)
        if j == 0:
            cin = config.in_channels if i == 0 else channels(config, i - 1)
        else:  # U(x^{i+1,j-1}) to c channels, then [up, x^{i,0}, ..., x^{i,j-1}]: (j+1) c
            shapes[f"x{i}_{j}.upconv.weight"] = (channels(config, i + 1), c, 2, 2)
            shapes[f"x{i}_{j}.upconv.bias"] = (c,)
            cin = (j + 1) * c
        shapes |= conv_shapes(f"x{i}_{j}.conv0", cin, c, 3)
        shapes |= conv_shapes(f"x{i}_{j}.conv1", c, c, 3)
    out = 1 if config.head == "sigmoid" else config.n_classes
    for j in head_columns(config):
        shapes |= conv_shapes(f"head{j}", config.base, out, 1)
    return shapes


def _dropout_key(key, index: int, bits: int = 8):
    """The key of dropout layer `index` (< 2^bits) from the step's key: `subkey` once per bit,
    so (key, index) -> key * 2^bits + index is one-to-one (consecutive step keys never share
    a mask, as key * 2 + index would for index >= 2)."""
    for b in reversed(range(bits)):
        key = subkey(key, (index >> b) & 1)
    return key


@register("unetpp")
class UNetPP(Model):
    """UNet++ (module doc): `params`, `grads`, `forward(x, dropout_key)`, `backward(dlogits)`;
    the rest (devices, modes, state dicts, its loss) is every model's (minunet/nn/model.py).
    No BatchNorm, so no buffers. Build one with `build_model(UNetPPConfig(...))`."""

    config_class = UNetPPConfig

    def parameter_shapes(self) -> dict[str, tuple]:
        return parameter_shapes(self.config)

    def build(self, o) -> None:
        c = self.config
        self.unit, self.pool, self.upconv, self.cat = {}, {}, {}, {}
        for i, j in nodes(c.depth):
            n = f"x{i}_{j}"
            self.unit[i, j] = (ConvGeneral(o, n + ".conv0"), Dropout(o, c.dropout),
                               ConvGeneral(o, n + ".conv1"), Dropout(o, c.dropout))
            if j == 0 and i > 0:
                self.pool[i] = MaxPool(o)  # x^{i-1,0} -> x^{i,0}'s input
            if j > 0:
                self.upconv[i, j] = UpConv(o, n + ".upconv")
                self.cat[i, j] = [Concat(o) for _ in range(j)]  # one per skip x^{i,m}
        self.head = {j: ConvGeneral(o, f"head{j}", padding=0, relu=False)
                     for j in head_columns(c)}
        self.binary = {j: BinaryHead(o) for j in head_columns(c)}
        self.mean = LogMeanSoftmax(o)
        self._ran = None  # what the last forward computed: (last node column, heads, output)

    @classmethod
    def test_config(cls, **common):
        """base 2, depth 2, deep supervision, dropout off (a training forward then needs no key)."""
        return UNetPPConfig(**{"base": 2, "depth": 2, "dropout": 0.0, **common})

    @classmethod
    def geometry_of(cls, config: UNetPPConfig) -> PaddedGeometry:
        """Padded convolutions: output size = input size, sides multiples of 2^depth."""
        return PaddedGeometry(grid=2**config.depth)

    def layers(self) -> list:
        """Every layer object, in forward order."""
        out = []
        for i, j in nodes(self.config.depth):
            if j == 0 and i > 0:
                out.append(self.pool[i])
            if j > 0:
                out += [self.upconv[i, j], *self.cat[i, j]]
            out += list(self.unit[i, j])
        for j in self.head:
            out += [self.head[j], self.binary[j]]
        return out + [self.mean]

    # -- what a forward computes --------------------------------------------------------

    def _plan(self) -> tuple[int, list[int], str]:
        """(L, heads, output) of a forward now: the nodes i + j <= L are computed, the heads on
        x^{0,j} for j in `heads`, and the output is "heads" (a Heads, training with deep
        supervision), "mean" (accurate inference) or "one" (a single head's logits)."""
        c = self.config
        if not c.deep_supervision:
            return c.depth, [c.depth], "one"
        if self.training:
            return c.depth, head_columns(c), "heads"
        if c.mode == "fast":
            return c.pruned_depth, [c.pruned_depth], "one"
        return c.depth, head_columns(c), "mean"

    # -- forward and backward, mirror images ----------------------------------------------

    def _unit_forward(self, i, j, h, key):
        """H: conv3x3+ReLU, dropout, conv3x3+ReLU, dropout (the Keras code's standard_unit)."""
        conv0, drop0, conv1, drop1 = self.unit[i, j]
        k = 2 * nodes(self.config.depth).index((i, j))  # this unit's two dropout layers
        h = drop0.forward(conv0.forward(self.params, h), _dropout_key(key, k))
        return drop1.forward(conv1.forward(self.params, h), _dropout_key(key, k + 1))

    def _unit_backward(self, i, j, dh):
        conv0, drop0, conv1, drop1 = self.unit[i, j]
        dh = conv1.backward(self.grads, drop1.backward(dh))
        return conv0.backward(self.grads, drop0.backward(dh))

    def forward(self, x, dropout_key: int | None = None):
        """x: (N, in_channels, S, S') with S, S' multiples of 2^depth. Returns the logits
        (N, K, S, S') (K = 2: [0, z] for sigmoid heads), or in training with deep supervision
        a Heads of the logits of heads 1..depth.

        dropout_key: in training mode an int that seeds this step's dropout masks (same key,
        same masks, on CPU and GPU alike); ignored in eval mode.
        """
        self._begin_forward(x)
        if not self.training:
            dropout_key = None
        elif dropout_key is None and self.config.dropout > 0:
            raise ValueError("the model is in training mode, so its dropout needs a "
                             "dropout_key (an int); call model.eval() for inference")
        last, heads, output = self._plan()
        self._ran = (last, heads, output)
        p = self.params
        xs = {}  # (i, j) -> x^{i,j}, the node's output map (N, base * 2^i, S / 2^i, S' / 2^i)
        for i, j in nodes(last):
            if j == 0:  # encoder: x^{i,0} = H(pool(x^{i-1,0}))
                h = x if i == 0 else self.pool[i].forward(xs[i - 1, 0])
            else:  # x^{i,j} = H([U(x^{i+1,j-1}), x^{i,0}, ..., x^{i,j-1}])
                h = self.upconv[i, j].forward(p, xs[i + 1, j - 1])
                for m in range(j):
                    h = self.cat[i, j][m].forward(h, xs[i, m])
            xs[i, j] = self._unit_forward(i, j, h, dropout_key)
        logits = []
        for j in heads:  # a 1x1 convolution on x^{0,j}
            a = self.head[j].forward(p, xs[0, j])
            logits.append(self.binary[j].forward(a) if self.config.head == "sigmoid" else a)
        if output == "heads":
            return Heads(logits)
        if output == "mean":  # log of the heads' mean class probabilities (module doc)
            return self.mean.forward(*logits)
        return logits[0]

    def backward(self, dlogits):
        """dlogits: the gradient of the loss with respect to forward's output (a Heads where
        forward returned one). Adds every parameter gradient into self.grads."""
        if self._ran is None:
            raise ValueError("backward needs a forward first")
        last, heads, output = self._ran
        if isinstance(dlogits, Heads) != (output == "heads"):
            raise ValueError(f"forward returned {'a Heads' if output == 'heads' else 'logits'};"
                             f" backward got {type(dlogits).__name__}")
        self._ran = None
        g = self.grads
        if output == "heads":
            dheads = list(dlogits)
        elif output == "mean":
            dheads = list(self.mean.backward(dlogits))
        else:
            dheads = [dlogits]
        dxs = {}  # (i, j) -> dL/dx^{i,j}, summed over every later use of the node

        def accumulate(node, d):
            dxs[node] = d if node not in dxs else dxs[node] + d

        for j, d in reversed(list(zip(heads, dheads, strict=True))):  # the heads, in reverse
            if self.config.head == "sigmoid":
                d = self.binary[j].backward(d)
            accumulate((0, j), self.head[j].backward(g, d))
        for i, j in reversed(nodes(last)):  # the nodes, in reverse: every later use is done
            dh = self._unit_backward(i, j, dxs.pop((i, j)))
            if j == 0:
                if i > 0:  # the pool read x^{i-1,0}
                    accumulate((i - 1, 0), self.pool[i].backward(dh))
            else:
                for m in reversed(range(j)):  # the skips x^{i,j-1}, ..., x^{i,0}
                    dh, dskip = self.cat[i, j][m].backward(dh)
                    accumulate((i, m), dskip)
                accumulate((i + 1, j - 1), self.upconv[i, j].backward(g, dh))  # U's input
