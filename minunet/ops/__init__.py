"""The lesson: the U-Net's operations as plain forward/backward pairs.

Each op is one small file of whole-array NumPy/CuPy code that reads like its
derivation: no chunks, threads, workspaces or twins (those are in minunet/fast,
the speed, which has the same names, signatures and caches). Tutorials show
these ops, the coursework strips their bodies, `UNetConfig(ops="plain")` trains
on them.

The contracts they keep are in docs/DESIGN.md, "Tensors", "Op pairs and caches"
and "Dtypes".

Every op is `xxx_forward(inputs...) -> (out, cache)` and
`xxx_backward(dout, cache) -> gradients` in the order of the forward's
differentiable inputs (a tuple when there are several, the array when one).
Tensors are NCHW; float32 and float64; NumPy or CuPy is inferred from the inputs.
"""

from .conv import Conv2dCache, col2im, conv2d_backward, conv2d_forward, im2col
from .crop import (
    CenterCropCache,
    ConcatCache,
    center_crop_backward,
    center_crop_forward,
    concat_backward,
    concat_forward,
)
from .dropout import (
    DropoutCache,
    counter_uniform,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    dropout_mask_hashed,
)
from .pool import MaxPool2x2Cache, maxpool2x2_backward, maxpool2x2_forward
from .relu import ReluCache, relu_backward, relu_forward
from .softmax import (
    SoftmaxXentCache,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .upconv import Upconv2x2Cache, upconv2x2_backward, upconv2x2_forward

__all__ = [
    "Conv2dCache", "im2col", "col2im", "conv2d_forward", "conv2d_backward",
    "Upconv2x2Cache", "upconv2x2_forward", "upconv2x2_backward",
    "MaxPool2x2Cache", "maxpool2x2_forward", "maxpool2x2_backward",
    "ReluCache", "relu_forward", "relu_backward",
    "CenterCropCache", "center_crop_forward", "center_crop_backward",
    "ConcatCache", "concat_forward", "concat_backward",
    "SoftmaxXentCache", "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "DropoutCache", "dropout_mask", "dropout_mask_hashed", "counter_uniform",
    "dropout_forward", "dropout_backward",
]
