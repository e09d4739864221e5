"""Parameter-holding wrappers of the ops: what the U-Net is built from.

A layer knows the names of its parameters and keeps the caches of its last
forward pass. Parameters and gradients live in the model's two dicts
(`params`, `grads`, keyed by the contract's names such as "down0.conv1.weight");
a layer's backward ADDS (+=) its parameter gradients into `grads`, which the
model zeroes in one place (docs/DESIGN.md, "Gradients accumulate").

Every layer is given the op module it runs on: `minunet.ops` (the lesson: plain
whole-array ops) or `minunet.fast` (the speed: the same names and signatures,
chunked, threaded and fused). `op_module(config.ops)` picks it, in one place.
"""

from __future__ import annotations

import importlib


def op_module(kind: str):
    """'plain' -> minunet.ops, 'fast' -> minunet.fast (same functions, same caches)."""
    if kind not in ("plain", "fast"):
        raise ValueError(f"ops must be 'plain' or 'fast', got {kind!r}")
    return importlib.import_module("minunet.ops" if kind == "plain" else "minunet.fast")


# The U-Net family's ops live in their own modules (minunet/ops/<module>.py, with a fast twin
# at minunet/fast/<module>.py where one exists: minunet/fast/__init__.py says which), not in
# the op modules' top-level names: op name -> module
FAMILY_MODULES = {
    "conv2d_general": "conv_general", "add": "elementwise", "channel_scale": "elementwise",
    "sigmoid": "activation", "relu6": "activation", "silu": "activation",
    "batchnorm2d": "norm", "maxpool": "pool_general", "global_avgpool": "pool_general",
    "global_maxpool": "pool_general", "bilinear_upsample": "resample",
    "nearest_upsample2": "resample", "binary_logits": "elementwise",
    "log_mean_softmax": "elementwise",
}


def family_op(ops, name: str):
    """`ops.<name>` (e.g. "add_forward"), or the family op of that name: from the door's own
    module (minunet.fast.<module>) where it has one, else the plain op (minunet.ops.<module>).
    Works on an op module and on the trace's namespaces (minunet/nn/trace.py) alike."""
    fn = getattr(ops, name, None)
    if fn is not None:
        return fn
    base = name.rsplit("_", 1)[0]
    module = FAMILY_MODULES.get(base)
    if module is None:
        raise AttributeError(f"{getattr(ops, '__name__', ops)} has no op {name!r}")
    try:
        mod = importlib.import_module(f"{ops.__name__}.{module}")
    except ImportError:  # the door has no twin of this op: the plain op serves both
        mod = importlib.import_module(f"minunet.ops.{module}")
    return getattr(mod, name)


class Layer:
    """What every layer has: its op module, and `release()` to drop its caches."""

    cache_names = ("cache",)
    parts = ()  # a composite's sub-layers (attribute names), released with it

    def __init__(self, ops):
        self.ops = ops
        self.release()

    def release(self) -> None:
        for name in self.cache_names:
            setattr(self, name, None)
        for name in self.parts:  # absent (not built yet) or None (an optional part): skipped
            layer = getattr(self, name, None)
            if layer is not None:
                layer.release()


class Conv(Layer):
    """k x k valid convolution + bias, optionally followed by ReLU.

    forward: x (N, Cin, H, W) -> (N, Cout, H-k+1, W-k+1).
    """

    def __init__(self, ops, name: str, relu: bool = True):
        super().__init__(ops)
        self.name = name
        self.relu = relu

    def forward(self, params, x):
        w, b = params[self.name + ".weight"], params[self.name + ".bias"]
        out, self.cache = self.ops.conv2d_forward(x, w, b, relu=self.relu)  # ReLU fused in
        return out

    def backward(self, grads, dout, need_dx: bool = True):
        dx, dw, db = self.ops.conv2d_backward(dout, self.cache, need_dx=need_dx)
        grads[self.name + ".weight"] += dw
        grads[self.name + ".bias"] += db
        self.release()  # free the activations
        return dx


class UpConv(Layer):
    """2x2 stride-2 transposed convolution + bias (optionally ReLU).

    forward: x (N, Cin, H, W) -> (N, Cout, 2H, 2W).
    """

    cache_names = ("cache", "relu_cache")

    def __init__(self, ops, name: str, relu: bool = False):
        super().__init__(ops)
        self.name = name
        self.relu = relu

    def forward(self, params, x):
        w, b = params[self.name + ".weight"], params[self.name + ".bias"]
        out, self.cache = self.ops.upconv2x2_forward(x, w, b)
        if self.relu:
            out, self.relu_cache = self.ops.relu_forward(out)
        return out

    def backward(self, grads, dout):
        if self.relu:
            dout = self.ops.relu_backward(dout, self.relu_cache)
        dx, dw, db = self.ops.upconv2x2_backward(dout, self.cache)
        grads[self.name + ".weight"] += dw
        grads[self.name + ".bias"] += db
        self.release()
        return dx


class MaxPool(Layer):
    """2x2 max-pool, stride 2: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def forward(self, x):
        out, self.cache = self.ops.maxpool2x2_forward(x)
        return out

    def backward(self, dout):
        dx = self.ops.maxpool2x2_backward(dout, self.cache)
        self.release()
        return dx


class Dropout(Layer):
    """Inverted dropout with a mask drawn from a counter-based key (see ops/dropout.py)."""

    def __init__(self, ops, p: float):
        super().__init__(ops)
        self.p = p

    def forward(self, x, key):
        """x (any shape); key: int, or None for no dropout (inference)."""
        if key is None or self.p == 0:
            self.release()
            return x
        mask = self.ops.dropout_mask_hashed(x.shape, self.p, key, x.dtype, like=x)
        out, self.cache = self.ops.dropout_forward(x, mask)
        return out

    def backward(self, dout):
        if self.cache is None:
            return dout
        dx = self.ops.dropout_backward(dout, self.cache)
        self.release()
        return dx


class SkipConcat(Layer):
    """Centre-crop the encoder map to the decoder size and concatenate, skip first.

    forward: skip (N, Cs, Hs, Ws), up (N, Cu, H, W) -> (N, Cs+Cu, H, W).
    """

    cache_names = ("crop_cache", "cat_cache")

    def forward(self, skip, up):
        cropped, self.crop_cache = self.ops.center_crop_forward(skip, up.shape[2:])
        out, self.cat_cache = self.ops.concat_forward(cropped, up)
        return out

    def backward(self, dout):
        """Returns (dskip (N, Cs, Hs, Ws), dup (N, Cu, H, W))."""
        dcropped, dup = self.ops.concat_backward(dout, self.cat_cache)
        dskip = self.ops.center_crop_backward(dcropped, self.crop_cache)
        self.release()
        return dskip, dup


# --- layers of the U-Net family (padded convolutions, activations, residual sums) ----------


class ConvGeneral(Layer):
    """k x k convolution with padding, stride and groups + bias (minunet/ops/conv_general.py),
    optionally followed by ReLU: (N, Cin, H, W) -> (N, Cout, (H + 2p - k) // s + 1, ...)."""

    cache_names = ("cache", "relu_cache")

    def __init__(self, ops, name: str, padding: int = 1, stride: int = 1, groups: int = 1,
                 relu: bool = True):
        super().__init__(ops)
        self.name, self.padding, self.stride, self.groups = name, padding, stride, groups
        self.relu = relu

    def forward(self, params, x):
        w, b = params[self.name + ".weight"], params.get(self.name + ".bias")  # bias optional
        out, self.cache = family_op(self.ops, "conv2d_general_forward")(
            x, w, b, stride=self.stride, padding=self.padding, groups=self.groups)
        if self.relu:
            out, self.relu_cache = self.ops.relu_forward(out)
        return out

    def backward(self, grads, dout):
        if self.relu:
            dout = self.ops.relu_backward(dout, self.relu_cache)
        dx, dw, db = family_op(self.ops, "conv2d_general_backward")(dout, self.cache)
        grads[self.name + ".weight"] += dw
        if db is not None:
            grads[self.name + ".bias"] += db
        self.release()
        return dx


class Relu(Layer):
    """ReLU: any shape."""

    def forward(self, x):
        out, self.cache = self.ops.relu_forward(x)
        return out

    def backward(self, dout):
        dx = self.ops.relu_backward(dout, self.cache)
        self.release()
        return dx


class Add(Layer):
    """a + b (a residual connection): backward returns (da, db)."""

    def forward(self, a, b):
        out, self.cache = family_op(self.ops, "add_forward")(a, b)
        return out

    def backward(self, dout):
        grads = family_op(self.ops, "add_backward")(dout, self.cache)
        self.release()
        return grads


class Concat(Layer):
    """[a, b] along channels (same spatial size): backward returns (da, db)."""

    def forward(self, a, b):
        out, self.cache = self.ops.concat_forward(a, b)
        return out

    def backward(self, dout):
        grads = self.ops.concat_backward(dout, self.cache)
        self.release()
        return grads


class Act(Layer):
    """An activation without parameters, any shape: "relu", "relu6", "silu" or "sigmoid"
    (minunet/ops/relu.py, minunet/ops/activation.py)."""

    KINDS = ("relu", "relu6", "silu", "sigmoid")

    def __init__(self, ops, kind: str):
        if kind not in self.KINDS:
            raise ValueError(f"activation must be one of {', '.join(self.KINDS)}, got {kind!r}")
        super().__init__(ops)
        self.kind = kind

    def forward(self, x):
        out, self.cache = family_op(self.ops, self.kind + "_forward")(x)
        return out

    def backward(self, dout):
        dx = family_op(self.ops, self.kind + "_backward")(dout, self.cache)
        self.release()
        return dx


class BatchNorm(Layer):
    """Batch normalisation per channel (minunet/ops/norm.py): (N, C, H, W) -> the same.

    Its scale and shift are the parameters `name.weight` and `name.bias` (gamma, beta); its
    running statistics are the model's buffers `name.running_mean`, `name.running_var` and
    `name.num_batches_tracked` (PyTorch's names: minunet/nn/model.py, `norm_shapes`), updated
    in place in training mode. `model` is the network that owns it: its `training` flag picks
    batch statistics (training) or running statistics (eval)."""

    def __init__(self, ops, name: str, model, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__(ops)
        self.name, self.model, self.momentum, self.eps = name, model, momentum, eps

    def forward(self, params, x):
        b, n = self.model.buffers, self.name
        out, self.cache = family_op(self.ops, "batchnorm2d_forward")(
            x, params[n + ".weight"], params[n + ".bias"], b[n + ".running_mean"],
            b[n + ".running_var"], b[n + ".num_batches_tracked"], training=self.model.training,
            momentum=self.momentum, eps=self.eps)
        return out

    def backward(self, grads, dout):
        dx, dgamma, dbeta = family_op(self.ops, "batchnorm2d_backward")(dout, self.cache)
        grads[self.name + ".weight"] += dgamma
        grads[self.name + ".bias"] += dbeta
        self.release()
        return dx


class ConvNormAct(Layer):
    """The successors' unit: k x k convolution (no bias) -> BatchNorm -> activation (or none).

    Parameters `name.conv.weight` (Cout, Cin/groups, k, k), `name.bn.weight`, `name.bn.bias`;
    buffers `name.bn.running_*` (`conv_norm_shapes` in minunet/nn/model.py makes their shapes).
    (N, Cin, H, W) -> (N, Cout, (H + 2p - k) // s + 1, ...)."""

    cache_names = ()
    parts = ("conv", "bn", "act")

    def __init__(self, ops, name: str, model, k: int = 3, stride: int = 1, padding=None,
                 groups: int = 1, act: str | None = "relu"):
        super().__init__(ops)
        self.conv = ConvGeneral(ops, name + ".conv", padding=k // 2 if padding is None
                                else padding, stride=stride, groups=groups, relu=False)
        self.bn = BatchNorm(ops, name + ".bn", model)
        self.act = Act(ops, act) if act else None

    def forward(self, params, x):
        h = self.bn.forward(params, self.conv.forward(params, x))
        return self.act.forward(h) if self.act else h

    def backward(self, grads, dout):
        if self.act:
            dout = self.act.backward(dout)
        return self.conv.backward(grads, self.bn.backward(grads, dout))



class Pool(Layer):
    """k x k max-pool, stride k, optionally in ceil mode (minunet/ops/pool_general.py):
    (N, C, H, W) -> (N, C, H // k, W // k) (ceil: rounded up)."""

    def __init__(self, ops, k: int = 2, ceil_mode: bool = False):
        super().__init__(ops)
        self.k, self.ceil_mode = k, ceil_mode

    def forward(self, x):
        out, self.cache = family_op(self.ops, "maxpool_forward")(x, k=self.k,
                                                                 ceil_mode=self.ceil_mode)
        return out

    def backward(self, dout):
        dx = family_op(self.ops, "maxpool_backward")(dout, self.cache)
        self.release()
        return dx


class Upsample(Layer):
    """Up-sampling without weights (minunet/ops/resample.py): "nearest" by 2, or "bilinear" by
    an integer factor: (N, C, H, W) -> (N, C, f*H, f*W)."""

    def __init__(self, ops, mode: str = "bilinear", factor: int = 2,
                 align_corners: bool = False):
        if mode not in ("nearest", "bilinear") or (mode == "nearest" and factor != 2):
            raise ValueError(f"Upsample: 'nearest' by 2 or 'bilinear' by any integer factor, got "
                             f"{mode!r} by {factor}")
        super().__init__(ops)
        self.mode, self.factor, self.align_corners = mode, factor, align_corners

    def forward(self, x):
        if self.mode == "nearest":
            out, self.cache = family_op(self.ops, "nearest_upsample2_forward")(x)
        else:
            out, self.cache = family_op(self.ops, "bilinear_upsample_forward")(
                x, self.factor, align_corners=self.align_corners)
        return out

    def backward(self, dout):
        name = "nearest_upsample2" if self.mode == "nearest" else "bilinear_upsample"
        dx = family_op(self.ops, name + "_backward")(dout, self.cache)
        self.release()
        return dx


class GlobalAvgPool(Layer):
    """The mean over each channel's H x W (minunet/ops/pool_general.py): (N, C, H, W) ->
    (N, C, 1, 1)."""

    def forward(self, x):
        out, self.cache = family_op(self.ops, "global_avgpool_forward")(x)
        return out

    def backward(self, dout):
        dx = family_op(self.ops, "global_avgpool_backward")(dout, self.cache)
        self.release()
        return dx


class ChannelScale(Layer):
    """x * s per channel (squeeze-excitation's gate, minunet/ops/elementwise.py): x (N, C, H, W),
    s (N, C) -> (N, C, H, W); backward returns (dx, ds)."""

    def forward(self, x, s):
        out, self.cache = family_op(self.ops, "channel_scale_forward")(x, s)
        return out

    def backward(self, dout):
        grads = family_op(self.ops, "channel_scale_backward")(dout, self.cache)
        self.release()
        return grads


class BinaryHead(Layer):
    """The logits of a sigmoid head as two-class logits [0, z] (minunet/ops/elementwise.py,
    `binary_logits`): z (N, 1, H, W) -> (N, 2, H, W). With it a one-output network (UNet++,
    UNet 3+ as published) serves every command that reads class probabilities."""

    def forward(self, z):
        out, self.cache = family_op(self.ops, "binary_logits_forward")(z)
        return out

    def backward(self, dout):
        dz = family_op(self.ops, "binary_logits_backward")(dout, self.cache)
        self.release()
        return dz


class LogMeanSoftmax(Layer):
    """The log of the mean of J heads' class probabilities (minunet/ops/elementwise.py,
    `log_mean_softmax`): J logits (N, K, H, W) -> logits (N, K, H, W) whose softmax is the mean
    of the heads' softmaxes (UNet++'s deep supervision averaged at inference). backward returns
    the J gradients as a tuple."""

    def forward(self, *logits):
        out, self.cache = family_op(self.ops, "log_mean_softmax_forward")(*logits)
        return out

    def backward(self, dout):
        grads = family_op(self.ops, "log_mean_softmax_backward")(dout, self.cache)
        self.release()
        return grads
