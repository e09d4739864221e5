"""Parameter-holding wrappers of the ops: what the U-Net is built from.

A layer knows the names of its parameters and keeps the caches of its last
forward pass. Parameters and gradients live in the model's two dicts
(`params`, `grads`, keyed by the contract's names such as "down0.conv1.weight");
a layer's backward ADDS (+=) its parameter gradients into `grads`, which the
model zeroes in one place.
"""

from __future__ import annotations

from . import ops


class Conv:
    """k x k valid convolution + bias, optionally followed by ReLU.

    forward: x (N, Cin, H, W) -> (N, Cout, H-k+1, W-k+1).
    """

    def __init__(self, name: str, relu: bool = True):
        self.name = name
        self.relu = relu
        self.cache = None

    def forward(self, params, x):
        w, b = params[self.name + ".weight"], params[self.name + ".bias"]
        out, self.cache = ops.conv2d_forward(x, w, b, relu=self.relu)  # ReLU fused in
        return out

    def backward(self, grads, dout, need_dx: bool = True):
        dx, dw, db = ops.conv2d_backward(dout, self.cache, need_dx=need_dx)
        grads[self.name + ".weight"] += dw
        grads[self.name + ".bias"] += db
        self.cache = None  # free the activations
        return dx


class UpConv:
    """2x2 stride-2 transposed convolution + bias (optionally ReLU).

    forward: x (N, Cin, H, W) -> (N, Cout, 2H, 2W).
    """

    def __init__(self, name: str, relu: bool = False):
        self.name = name
        self.relu = relu
        self.cache = self.relu_cache = None

    def forward(self, params, x):
        w, b = params[self.name + ".weight"], params[self.name + ".bias"]
        out, self.cache = ops.upconv2x2_forward(x, w, b)
        if self.relu:
            out, self.relu_cache = ops.relu_forward(out)
        return out

    def backward(self, grads, dout):
        if self.relu:
            dout = ops.relu_backward(dout, self.relu_cache)
        dx, dw, db = ops.upconv2x2_backward(dout, self.cache)
        grads[self.name + ".weight"] += dw
        grads[self.name + ".bias"] += db
        self.cache = self.relu_cache = None
        return dx


class MaxPool:
    """2x2 max-pool, stride 2: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def forward(self, x):
        out, self.cache = ops.maxpool2x2_forward(x)
        return out

    def backward(self, dout):
        dx = ops.maxpool2x2_backward(dout, self.cache)
        self.cache = None
        return dx


class Dropout:
    """Inverted dropout with a mask drawn from a counter-based key (see ops.dropout)."""

    def __init__(self, p: float):
        self.p = p
        self.cache = None

    def forward(self, x, key):
        """x (any shape); key: int, or None for no dropout (inference)."""
        if key is None or self.p == 0:
            self.cache = None
            return x
        mask = ops.dropout_mask_hashed(x.shape, self.p, key, x.dtype, like=x)
        out, self.cache = ops.dropout_forward(x, mask)
        return out

    def backward(self, dout):
        if self.cache is None:
            return dout
        dx = ops.dropout_backward(dout, self.cache)
        self.cache = None
        return dx


class SkipConcat:
    """Centre-crop the encoder map to the decoder size and concatenate, skip first.

    forward: skip (N, Cs, Hs, Ws), up (N, Cu, H, W) -> (N, Cs+Cu, H, W).
    """

    def forward(self, skip, up):
        cropped, self.crop_cache = ops.center_crop_forward(skip, up.shape[2:])
        out, self.cat_cache = ops.concat_forward(cropped, up)
        return out

    def backward(self, dout):
        """Returns (dskip (N, Cs, Hs, Ws), dup (N, Cu, H, W))."""
        dcropped, dup = ops.concat_backward(dout, self.cat_cache)
        dskip = ops.center_crop_backward(dcropped, self.crop_cache)
        return dskip, dup
