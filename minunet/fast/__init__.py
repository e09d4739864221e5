"""The speed: the U-Net's ops with the names, signatures and caches of minunet/ops.

`minunet/ops` is the lesson (plain whole-array forward/backward pairs that read
like their derivations); this package computes the same numbers faster, and
the network runs on it by default (`UNetConfig(ops="fast")`). Every module here
says which tricks it uses and what each buys, and points to its plain op:

    conv.py     row chunks in cache-sized workspaces, worker threads, Numba/CUDA
                im2col and col2im twins, fused bias + ReLU epilogue
    upconv.py   products in row blocks on every core, twin 2x2 interleave
    pool.py     one-pass twin for the window max and its arg-max
    relu.py     one-pass twin backward
    softmax.py  one-pass twin softmax + weighted cross-entropy and its gradient

Crop, concat and dropout have nothing to speed up (a view, one copy, one
multiply), so the plain ops serve both doors. tests/fast/test_agree.py proves
the two doors agree, op by op and for the whole U-Net.

The U-Net family's ops (issue 25), imported by module (minunet.fast.<name>, the
plain op's module name, as gradcheck_family picks them):

    conv_general.py  padded/strided dense conv on conv.py's row chunks (padded im2col
                     and gather col2im twins); depthwise conv without im2col (direct
                     loop, dx gather, float64 dw/db); other groups: the plain op
    norm.py          BatchNorm: one-pass float64 per-channel sums (fixed order), fused
                     normalise/affine and dx epilogues
    resample.py      bilinear: 4-tap gather forward, banded adjoint gather backward;
                     nearest x2 is the plain pair

The family's other ops stay plain on both doors, because a fast pair would not buy
much: the wider max-pools and global pools (k > 2; one reshaped max or mean, run on
small maps after the encoder), the activations (sigmoid, ReLU6, SiLU: one elementwise
pass each), the residual add and the channel scale (one pass), and the losses (run once
per step on the output map, a few elementwise passes).
"""

from ..ops.crop import (
    CenterCropCache,
    ConcatCache,
    center_crop_backward,
    center_crop_forward,
    concat_backward,
    concat_forward,
)
from ..ops.dropout import (
    DropoutCache,
    counter_uniform,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    dropout_mask_hashed,
)
from .conv import Conv2dCache, conv2d_backward, conv2d_forward
from .pool import MaxPool2x2Cache, maxpool2x2_backward, maxpool2x2_forward
from .relu import ReluCache, relu_backward, relu_forward
from .softmax import (
    SoftmaxXentCache,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from .upconv import Upconv2x2Cache, upconv2x2_backward, upconv2x2_forward

__all__ = [
    "Conv2dCache", "conv2d_forward", "conv2d_backward",
    "Upconv2x2Cache", "upconv2x2_forward", "upconv2x2_backward",
    "MaxPool2x2Cache", "maxpool2x2_forward", "maxpool2x2_backward",
    "ReluCache", "relu_forward", "relu_backward",
    "CenterCropCache", "center_crop_forward", "center_crop_backward",
    "ConcatCache", "concat_forward", "concat_backward",
    "SoftmaxXentCache", "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "DropoutCache", "dropout_mask", "dropout_mask_hashed", "counter_uniform",
    "dropout_forward", "dropout_backward",
]
