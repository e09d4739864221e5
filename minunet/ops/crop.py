"""Centre crop and channel concatenation (the U-Net's skip connection), with adjoints.

Ronneberger et al. 2015, Sec. 2: the expansive path concatenates "the
correspondingly cropped feature map from the contracting path". Because the
convolutions are unpadded, the encoder map is larger than the decoder map and is
cropped at its centre. minunet puts the skip first: concat([crop(skip), up]).

The adjoint of a crop pads with zeros back to the original size; the adjoint of
a concat splits the gradient along the channels.
"""

from __future__ import annotations

from typing import NamedTuple

from ..backend.device import xp_of
from ._check import check_ndim, check_same_dtype


class CenterCropCache(NamedTuple):
    in_shape: tuple  # (N, C, H, W) of the input
    top: int  # first kept row
    left: int  # first kept column


class ConcatCache(NamedTuple):
    ca: int  # channels of the first input


def center_crop_forward(x, size):
    """Crop the centre size = (h, w) of x (N, C, H, W) -> (N, C, h, w).

    The margin H - h is split as (H - h) // 2 above and the rest below (same for
    W); the U-Net's margins are always even, so the crop is exactly centred there.
    """
    check_ndim("center_crop input x", x, 4, "N, C, H, W")
    h, w = size
    H, W = x.shape[2:]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"center_crop: cannot crop x of shape {x.shape} to {h}x{w}; "
                         f"the target must be positive and no larger than {H}x{W}")
    top, left = (H - h) // 2, (W - w) // 2
    out = x[:, :, top : top + h, left : left + w]
    return out, CenterCropCache(tuple(x.shape), top, left)


def center_crop_backward(dout, cache):
    """dout (N, C, h, w) -> dx (N, C, H, W): dout at the crop, zero elsewhere."""
    xp = xp_of(dout)
    N, C, H, W = cache.in_shape
    h, w = dout.shape[2:]
    # BEGIN SOLUTION center_crop.backward
    # canary: mu13-6a81ff7e8c02
    dx = xp.zeros((N, C, H, W), dtype=dout.dtype)
    dx[:, :, cache.top : cache.top + h, cache.left : cache.left + w] = dout
    return dx
    # END SOLUTION


def concat_forward(a, b):
    """Concatenate a (N, Ca, H, W) and b (N, Cb, H, W) along channels -> (N, Ca+Cb, H, W)."""
    check_ndim("concat input a", a, 4, "N, C, H, W")
    check_ndim("concat input b", b, 4, "N, C, H, W")
    check_same_dtype(a=a, b=b)
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(f"concat: shapes {a.shape} and {b.shape} differ outside the channel "
                         f"axis; crop the skip map to the decoder size first (center_crop)")
    xp = xp_of(a, b)
    return xp.concatenate([a, b], axis=1), ConcatCache(a.shape[1])


def concat_backward(dout, cache):
    """dout (N, Ca+Cb, H, W) -> (da (N, Ca, H, W), db (N, Cb, H, W))."""
    # BEGIN SOLUTION concat.backward
    # canary: mu13-393f539117e6
    return dout[:, : cache.ca], dout[:, cache.ca :]
    # END SOLUTION
