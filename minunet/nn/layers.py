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


class Layer:
    """What every layer has: its op module, and `release()` to drop its caches."""

    cache_names = ("cache",)

    def __init__(self, ops):
        self.ops = ops
        self.release()

    def release(self) -> None:
        for name in self.cache_names:
            setattr(self, name, None)


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
