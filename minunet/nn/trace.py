"""A network read off its own forward: run `forward` on a shape-only op namespace, which
computes no numbers but records every op with its inputs, attributes, output shape, FLOPs and
parameters. What describes a network then follows from that one record, never from a copy:

    trace(cls, config, size)     the Trace: nodes in forward order (docs/DESIGN.md,
                                 "Each architecture described once")
    layer_table(cls, config, s)  one row per op: output shape, parameters, GFLOP, memory
    describe(cls, config, size)  the table as text (train --describe, bench)
    minunet/exporters/onnx.py    the ONNX graph, node by node from the trace

Why a shape-only namespace rather than a tape recorded during a real forward: it costs no
arithmetic (the paper's 572 x 572 U-Net at base 64 is traced in milliseconds, where a real
forward is 300 GFLOP), needs no parameters (the model is not even initialised), and sees the
network exactly as its forward is written, because the op module is already swappable
(minunet/nn/layers.py): the layers call `ops.xxx_forward`, and here `ops` is `ShapeOps`.

Values are named: the input "input", a parameter by its contract name ("down0.conv1.weight"),
every op output "v<k>". A shape carries the name of the value it was read from, so a centre
crop "to the size of up" records which value gave the size (the ONNX graph computes the crop
from that value's runtime shape: H and W stay free).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from minunet import backend


class ShapeTuple(tuple):
    """A shape that remembers which value it was read from (`of`) and from which axis
    (`start`), so an op given `up.shape[2:]` knows it was given up's spatial size."""

    of: str = ""
    start: int = 0

    def __getitem__(self, key):
        out = tuple.__getitem__(self, key)
        if isinstance(key, slice) and key.step in (None, 1):
            out = ShapeTuple(out)
            out.of, out.start = self.of, self.start + (key.start or 0)
        return out


class ShapeArray:
    """An array with a shape, a dtype and a name, and no data."""

    def __init__(self, shape, dtype, name: str):
        self.shape = ShapeTuple(int(s) for s in shape)
        self.shape.of = name
        self.dtype = np.dtype(dtype)
        self.name = name

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))

    def __repr__(self):
        return f"ShapeArray({self.name}, {tuple(self.shape)}, {self.dtype})"


@dataclass
class Node:
    """One op of a traced forward: op name (without _forward), input value names, attributes,
    its output value's name and shape, forward FLOPs (2 per multiply-add), parameter names."""

    op: str
    inputs: tuple
    attrs: dict
    out: str
    shape: tuple
    flops: int = 0
    params: tuple = ()


@dataclass
class Trace:
    input: tuple
    nodes: list = field(default_factory=list)
    output: str = ""
    dtype: str = "float32"
    param_shapes: dict = field(default_factory=dict)
    buffer_shapes: dict = field(default_factory=dict)

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.out == name), None)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


class ShapeOps:
    """The shape-only op namespace: the same `xxx_forward` names and signatures as minunet/ops
    (and the family's ops), each returning (ShapeArray, None) and appending a Node."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.nodes: list[Node] = []
        self.__name__ = "minunet.nn.trace.ShapeOps"

    def _add(self, op, inputs, shape, attrs=None, flops=0, params=()):
        name = f"v{len(self.nodes)}"
        self.nodes.append(Node(op, tuple(getattr(a, "name", None) for a in inputs),
                               attrs or {}, name, tuple(shape), int(flops),
                               tuple(p.name for p in params if p is not None)))
        return ShapeArray(shape, self.dtype, name), None

    def __getattr__(self, name):
        if name.endswith("_forward"):
            raise NotImplementedError(f"the shape-only op namespace has no rule for {name}: "
                                      f"add one to minunet/nn/trace.py (ShapeOps)")
        raise AttributeError(name)

    # -- convolutions ------------------------------------------------------------------

    def conv2d_forward(self, x, w, b, relu=False):
        n, cin, h, wd = x.shape
        cout, _, k, _ = w.shape
        shape = (n, cout, h - k + 1, wd - k + 1)
        return self._add("conv2d", (x, w, b), shape, {"kernel": k, "relu": bool(relu)},
                         2 * math.prod(shape) * cin * k * k, (w, b))

    def conv2d_general_forward(self, x, w, b=None, stride: int = 1, padding=0, groups: int = 1):
        n, cin, h, wd = x.shape
        cout, cin_g, kh, kw = w.shape
        (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
        shape = (n, cout, _conv_out(h, kh, sh, ph), _conv_out(wd, kw, sw, pw))
        return self._add("conv2d_general", (x, w, b), shape,
                         {"kernel": (kh, kw), "stride": (sh, sw), "padding": (ph, pw),
                          "groups": groups}, 2 * math.prod(shape) * cin_g * kh * kw, (w, b))

    def upconv2x2_forward(self, x, w, b):
        n, cin, h, wd = x.shape
        shape = (n, w.shape[1], 2 * h, 2 * wd)
        return self._add("upconv2x2", (x, w, b), shape, {}, 2 * math.prod(shape) * cin, (w, b))

    # -- pools, resampling, shapes -------------------------------------------------------

    def maxpool2x2_forward(self, x):
        n, c, h, w = x.shape
        return self._add("maxpool2x2", (x,), (n, c, h // 2, w // 2))

    def maxpool_forward(self, x, k: int = 2, ceil_mode: bool = False):
        n, c, h, w = x.shape
        r = (lambda v: -(-v // k)) if ceil_mode else (lambda v: v // k)
        return self._add("maxpool", (x,), (n, c, r(h), r(w)), {"k": k, "ceil_mode": ceil_mode})

    def global_avgpool_forward(self, x):
        return self._add("global_avgpool", (x,), (*x.shape[:2], 1, 1))

    def global_maxpool_forward(self, x):
        return self._add("global_maxpool", (x,), (*x.shape[:2], 1, 1))

    def nearest_upsample2_forward(self, x):
        n, c, h, w = x.shape
        return self._add("nearest_upsample2", (x,), (n, c, 2 * h, 2 * w))

    def bilinear_upsample_forward(self, x, factor: int, align_corners: bool = False):
        n, c, h, w = x.shape
        return self._add("bilinear_upsample", (x,), (n, c, factor * h, factor * w),
                         {"factor": factor, "align_corners": align_corners})

    def center_crop_forward(self, x, size):
        of = getattr(size, "of", "") if getattr(size, "start", 0) == 2 else ""
        return self._add("center_crop", (x,), (*x.shape[:2], *size), {"size": tuple(size),
                                                                        "like": of})

    def concat_forward(self, a, b):
        return self._add("concat", (a, b), (a.shape[0], a.shape[1] + b.shape[1], *a.shape[2:]))

    # -- elementwise ---------------------------------------------------------------------

    def _same(self, op, x, *more, **attrs):
        return self._add(op, (x, *more), x.shape, attrs)

    def relu_forward(self, x):
        return self._same("relu", x)

    def sigmoid_forward(self, x):
        return self._same("sigmoid", x)

    def relu6_forward(self, x):
        return self._same("relu6", x)

    def silu_forward(self, x):
        return self._same("silu", x)

    def add_forward(self, a, b):
        return self._same("add", a, b)

    def channel_scale_forward(self, x, s):
        return self._same("channel_scale", x, s, gate_ndim=len(s.shape))  # (N, C) or (N, C, 1, 1)

    def dropout_forward(self, x, scale_mask):
        return self._same("dropout", x)

    def batchnorm2d_forward(self, x, gamma, beta, running_mean, running_var, num_batches,
                            training: bool = True, momentum: float = 0.1, eps: float = 1e-5):
        return self._add("batchnorm2d", (x, gamma, beta, running_mean, running_var), x.shape,
                         {"momentum": momentum, "eps": eps}, 4 * math.prod(x.shape),
                         (gamma, beta))

    def binary_logits_forward(self, z):
        return self._add("binary_logits", (z,), (z.shape[0], 2, *z.shape[2:]))

    def log_mean_softmax_forward(self, *logits):
        return self._add("log_mean_softmax", logits, logits[0].shape)

    def dropout_mask_hashed(self, shape, p, key, dtype, like=None):
        return ShapeArray(shape, dtype, "mask")


def abstract_model(cls, config, ops=None):
    """A model of class `cls` for `config`, built on the shape-only namespace with shape-only
    parameters (nothing allocated, nothing initialised), in eval mode."""
    ops = ops or ShapeOps(config.dtype)
    model = cls.__new__(cls)
    model.config = config
    shapes = model.parameter_shapes()
    model.params = {k: ShapeArray(s, config.dtype, k) for k, s in shapes.items()}
    model.grads, model.training = {}, False
    model.buffers = {k: ShapeArray(s, config.dtype, k) for k, s in model.buffer_shapes().items()}
    model.ops = ops
    model.build(ops)
    return model


def trace(cls, config, size: int | tuple, batch: int = 1) -> Trace:
    """The Trace of the network (model class `cls`, its `config`) on an input
    (batch, C, size, size)."""
    hw = _pair(size)
    ops = ShapeOps(config.dtype)
    model = abstract_model(cls, config, ops)
    x = ShapeArray((batch, config.in_channels, *hw), config.dtype, "input")
    out = model.forward(x)
    return Trace(input=tuple(x.shape), nodes=ops.nodes, output=out.name, dtype=config.dtype,
                 param_shapes={k: tuple(v.shape) for k, v in model.params.items()},
                 buffer_shapes={k: tuple(v.shape) for k, v in model.buffers.items()})


# --- the per-layer table -----------------------------------------------------------------

WORKSPACE_BYTES = backend.WORKSPACE_BYTES


# ops that copy, combine or act elementwise ride along in the table with the op before them
# (their outputs are counted by the op that consumes them); short names of ops without
# parameters that make a new map
RIDE_ALONG = ("relu", "dropout", "sigmoid", "relu6", "silu", "center_crop", "concat", "add",
              "channel_scale", "batchnorm2d", "binary_logits", "log_mean_softmax")
SHORT = {"maxpool2x2": "pool", "maxpool": "pool", "global_avgpool": "gap",
         "global_maxpool": "gmp", "nearest_upsample2": "upsample", "bilinear_upsample": "upsample"}


def layer_table(cls, config, size: int, batch: int = 1) -> list[dict]:
    """One row per op that makes a new map (module doc; RIDE_ALONG ops have no row): name,
    output shape, parameters, forward GFLOP (2 per multiply-add), output MB, im2col workspace
    MB. Read off the traced forward. An op without parameters is named after the layer of the
    op that made its input ("down0.pool" after "down0.conv1")."""
    t = trace(cls, config, size, batch)
    item = np.dtype(config.dtype).itemsize
    rows, labels = [], {"input": "input"}
    for n in t.nodes:
        if n.params:
            labels[n.out] = n.params[0].rsplit(".", 1)[0]
        else:
            owner = labels.get(n.inputs[0], n.op).rsplit(".", 1)[0]
            labels[n.out] = labels.get(n.inputs[0], n.op) if n.op in RIDE_ALONG else \
                f"{owner}.{SHORT.get(n.op, n.op)}"
        params = sum(math.prod(t.param_shapes[p]) for p in n.params)
        if n.op in RIDE_ALONG:
            if rows and (params or n.flops):  # a BatchNorm's parameters and FLOPs: its conv's
                rows[-1]["params"] += params
                rows[-1]["gflop"] += n.flops / 1e9
            continue
        cols = 0
        if n.op in ("conv2d", "conv2d_general"):
            k = n.attrs["kernel"]
            kk = k * k if isinstance(k, int) else k[0] * k[1]
            cin = t.param_shapes[n.params[0]][1]
            if kk > 1:
                cols = min(WORKSPACE_BYTES, cin * kk * n.shape[2] * n.shape[3] * item)
        rows.append({"layer": labels[n.out], "op": n.op, "out": n.shape, "params": params,
                     "gflop": n.flops / 1e9, "act_mb": math.prod(n.shape) * item / 2**20,
                     "im2col_mb": cols / 2**20})
    return rows


def describe(cls, config, size: int, batch: int = 1, title: str = "") -> str:
    """The per-layer table as text, with totals (forward GFLOP, about 3x for a training step)."""
    geometry = cls.geometry_of(config)
    if not geometry.is_valid(size):
        raise ValueError(geometry.invalid_size_message(size))
    rows = layer_table(cls, config, size, batch)
    lines = [title or f"{config.arch}, {config.in_channels} -> {config.n_classes} classes, "
             f"{config.dtype}, input {batch}x{size}x{size} -> output "
             f"{geometry.output_size(size)}",
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


# --- the kinks of a real forward: where the network is not smooth -------------------------


def _windows_argmax(x, k: int):
    n, c, h, w = x.shape
    ho, wo = h // k, w // k
    win = x[:, :, :ho * k, :wo * k].reshape(n, c, ho, k, wo, k)  # (N, C, Ho, k, Wo, k)
    return win.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, k * k).argmax(-1)


# op name -> what decides its piece of the piecewise-linear network, from (args, kwargs, out)
KINKS = {
    "conv2d_forward": lambda a, kw, out: (out[0] > 0) if kw.get("relu", False) else None,
    "relu_forward": lambda a, kw, out: a[0] > 0,
    "relu6_forward": lambda a, kw, out: (a[0] > 0) & (a[0] < 6),
    "maxpool2x2_forward": lambda a, kw, out: _windows_argmax(a[0], 2),
    "maxpool_forward": lambda a, kw, out: _windows_argmax(a[0], kw.get("k", a[1] if len(a) > 1
                                                                       else 2)),
    "global_maxpool_forward": lambda a, kw, out: out[1].arg,  # each channel's winner (N, C)
}


class KinkRecorder:
    """A real op module, wrapped: every op runs as it would, and where an op has a kink (ReLU,
    ReLU6, max-pool) the side of it each element is on goes into a hash. Two forward passes
    with the same `digest()` lie in one linear piece of the network, so a central difference
    between them is exact up to rounding: the whole-network gradient check
    (minunet/nn/gradcheck.py, `model_gradcheck`) needs no list of the network's layers."""

    def __init__(self, ops):
        import hashlib

        self._ops, self._hash = ops, hashlib.sha1()
        self.__name__ = getattr(ops, "__name__", "ops")

    def digest(self) -> str:
        return self._hash.hexdigest()

    def reset(self) -> None:
        import hashlib

        self._hash = hashlib.sha1()

    def __getattr__(self, name):
        from minunet.nn.layers import family_op

        fn = family_op(self._ops, name)
        rule = KINKS.get(name)
        if rule is None:
            return fn

        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            side = rule(args, kwargs, out)
            if side is not None:
                self._hash.update(backend.to_host(side).tobytes())
            return out
        return wrapped


# --- the receptive radius: how much overlap makes the tiles of a padded network exact -----

# How each op moves dependencies (receptive_radius's docstring). "read": output position o
# reads the input positions reads(o, n_in, n_out, attrs, axis) -> (n_out, taps) int array;
# "pointwise": o reads position o of every traced input; "global": every position reads the
# whole image; "refuse": the op is not translation-equivariant (a reason). Another op joins by
# adding its entry here.
def _taps(k, s, p):
    return lambda o, a: s * o[:, None] - p + np.arange(k)[None, :]


def _conv_reads(o, n_in, attrs, ax):
    k, s, p = (_pair(attrs[name])[ax] for name in ("kernel", "stride", "padding"))
    return _taps(k, s, p)(o, attrs)


def _bilinear_reads(o, n_in, attrs, ax):
    f = attrs["factor"]
    i0 = (2 * o + 1 - f) // (2 * f)  # floor((o + 1/2) / f - 1/2), before the border clamp
    return np.stack([i0, i0 + 1], axis=1)


RADIUS_RULES = {
    "conv2d": ("read", lambda o, n, a, ax: _taps(a["kernel"], 1, 0)(o, a)),
    "conv2d_general": ("read", _conv_reads),
    "maxpool2x2": ("read", lambda o, n, a, ax: _taps(2, 2, 0)(o, a)),
    "maxpool": ("read", lambda o, n, a, ax: _taps(a["k"], a["k"], 0)(o, a)),
    "upconv2x2": ("read", lambda o, n, a, ax: (o // 2)[:, None]),
    "nearest_upsample2": ("read", lambda o, n, a, ax: (o // 2)[:, None]),
    "bilinear_upsample": ("read", _bilinear_reads),
    "center_crop": ("read", lambda o, n, a, ax: (o + (n - len(o)) // 2)[:, None]),
    **{op: ("pointwise", None) for op in (
        "relu", "sigmoid", "relu6", "silu", "dropout", "batchnorm2d", "binary_logits",
        "concat", "add", "channel_scale", "log_mean_softmax")},
    "global_avgpool": ("global", None),
    "global_maxpool": ("global", None),
}


@dataclass(frozen=True)
class Reach:
    """What `reach` found: `radius` (None when no halo makes tiles exact, `reason` says why),
    `blind` the radius a grid-blind count gives (the widest reach of any output pixel from
    the pixel it sits on, over all positions modulo the grid), `size` the traced tile side."""

    radius: int | None
    reason: str
    blind: int | None = None
    size: int = 0


def receptive_radius(cls, config) -> int | None:
    """The receptive radius of the network (model class `cls`, its `config`) for tiling: the
    smallest halo h such that a tile on the network's grid, its output cropped by h on each
    side, computes exactly the numbers of one pass over the whole image; None when no halo
    does (global pooling, align_corners=True: `reach(cls, config).reason`). Read off the
    traced forward (docs/DESIGN.md, "Exact tiling"); 92 for the paper's U-Net (its margin/2).

    Dependencies. A value of the forward is a map whose position i (along one axis) depends
    on the input pixels [lo(i), hi(i)]. In closed form, for a map of jump j (input pixels per
    position: 1 for the input, 2^d after d strides, a fraction after up-sampling) position i
    depends on [j*i - a, j*i + j - 1 + b] (its own cell of j pixels widened by the extents
    (a, b)), with (a, b) = (0, 0) at the input and

        conv (kernel k, stride s, padding p; valid: p = 0): o reads s*o - p .. s*o - p + k - 1
                        a' = a + j*p,  b' = b + j*(k - 1 - p) - j*(s - 1),  j' = j*s
        max-pool k (stride k; ceil mode is the same inside the image): the conv, p = 0, s = k
        up-conv 2x2, nearest x2: o reads o // 2
                        a' = a + j/2,  b' = b + j/2,  j' = j/2
        bilinear x f, align_corners False: o reads i0 = floor((o + 1/2)/f - 1/2) and i0 + 1
                        a' = a + j*max_o(o/f - i0),  b' = b + j*max_o(i0 + 2 - (o + 1)/f),
                        j' = j/f  (f = 2: a' = a + j, b' = b + j)
        centre crop by c = (S - So) // 2: o reads o + c
                        a' = a - j*c,  b' = b + j*c
        concat, add, channel scale, log-mean-softmax: the max of the inputs' extents
        elementwise ops, BatchNorm (eval mode: pointwise), binary logits: unchanged
        global pooling: the whole image (None: cannot tile exactly)
        bilinear, align_corners True: o reads o*(S-1)/(So-1), which depends on the map's size
                        S and not only on o: not translation-equivariant (None)

    The closed form's extents are a maximum over positions, though: after an up-sampling the
    even and the odd positions reach differently far (j/2 apart), and a tile on the grid fixes
    every position's phase. So the rules are applied per position: each value carries the
    arrays lo, hi over its positions on a traced tile of side T (`RADIUS_RULES`: which input
    positions each output position reads), and a position that reads outside its map (a zero
    of the padding, a clamped interpolation tap, a partial ceil-mode window) is marked as
    reaching outside the tile (lo = -inf or hi = +inf): in one pass over a larger image it
    would read real neighbours. Output position o sits on input pixel o + (T - To)/2; the
    radius is the smallest h such that every output pixel on [h, T - h) reaches only [0, T).
    T starts at 4 grid steps and doubles until T >= 2h + 4 grid steps (so the left and the
    right border cannot both reach one pixel).

    The paper's U-Net (valid convolutions, margin 184): every output pixel of a tile reaches
    inside it by construction, and the one just beyond does not, so the radius is 92 =
    margin/2, exactly. The closed form (its grid-blind radius, `Reach.blind`) gives 107 at
    depth 4 and 9 at depth 1, one more than the margin/2 of 8: its extents are (15, 199)
    around the output pixel's input position o (the four up-convs add j/2 = 8 + 4 + 2 + 1 on
    the left), i.e. the window [o - 15, o + 199] that minunet/models/sizes.py's input_window
    finds as the union over the 16 phases (receptive_field: 204 px for one phase). On the grid
    the pixels that see 15 px further left are 15 px further from the tile's edge.
    """
    return reach(cls, config).radius


def reach(cls, config, max_size: int = 1 << 14) -> Reach:
    """The receptive radius with its reason (`receptive_radius`)."""
    geometry = cls.geometry_of(config)
    g = geometry.grid
    size = geometry.padded_size(4 * g)
    while True:
        t = trace(cls, config, size)
        found = _reach_of(t, config)
        if found.radius is None or size >= 2 * found.radius + 4 * g:
            return Reach(found.radius, found.reason, found.blind, size)
        if size >= max_size:
            return Reach(None, f"the receptive radius exceeds {max_size // 2} px", size=size)
        size = geometry.padded_size(2 * size)


def _reach_of(t: Trace, config) -> Reach:
    """The radius on the traced tile t (both axes; the larger)."""
    radius = blind = 0
    for ax in (0, 1):
        T = t.input[2 + ax]
        pos = np.arange(T, dtype=float)
        values = {"input": (pos, pos)}  # name -> (lo, hi) per position; None: global
        why = {}
        for n in t.nodes:
            kind, reads = RADIUS_RULES.get(n.op, (None, None))
            if kind is None:
                raise NotImplementedError(
                    f"receptive_radius has no rule for op {n.op!r}: add one to RADIUS_RULES "
                    f"in minunet/nn/trace.py")
            ins = [i for i in n.inputs if i in values]
            if any(values[i] is None for i in ins) or kind == "global":
                values[n.out] = None
                why.setdefault("", f"{n.op} ({n.out}) depends on the whole image: the "
                                   f"network cannot tile exactly")
                continue
            if kind == "refuse" or (n.op == "bilinear_upsample" and n.attrs["align_corners"]):
                return Reach(None, f"{n.op} ({n.out}) with align_corners=True is not "
                                   f"translation-equivariant: the network cannot tile exactly")
            n_out = n.shape[2 + ax]
            if kind == "pointwise":
                lo = np.min([values[i][0] for i in ins], axis=0)
                hi = np.max([values[i][1] for i in ins], axis=0)
            else:
                lo_in, hi_in = values[ins[0]]
                idx = reads(np.arange(n_out), len(lo_in), n.attrs, ax)  # (n_out, taps)
                inside = (idx >= 0) & (idx < len(lo_in))
                at = np.clip(idx, 0, len(lo_in) - 1)
                edge = np.where(idx < 0, -np.inf, np.inf)  # reads a padding: outside the tile
                lo = np.where(inside, lo_in[at], edge).min(axis=1)
                hi = np.where(inside, hi_in[at], edge).max(axis=1)
            values[n.out] = (lo, hi)
        if values[t.output] is None:
            return Reach(None, why[""])
        lo, hi = values[t.output]
        shift2 = T - len(lo)
        if shift2 < 0 or shift2 % 2:
            raise ValueError(f"{config.arch}: the output ({len(lo)} px) is not the input "
                             f"({T} px) less an even margin: no tiling radius")
        x = np.arange(len(lo)) + shift2 // 2  # the input pixel each output pixel sits on
        exact = (lo >= 0) & (hi <= T - 1)
        left, right = x < T // 2, x >= T // 2
        h = max([0, shift2 // 2, *(x[left & ~exact] + 1), *(T - x[right & ~exact])])
        radius = max(radius, int(h))
        mid = exact & (x >= h + T // 8) & (x < T - h - T // 8)  # away from both borders
        if mid.any():
            blind = max(blind, int(max((x - lo)[mid].max(), (hi - x)[mid].max())))
    return Reach(radius, "read off the traced forward", blind)
