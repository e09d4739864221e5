"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) and test-time augmentation.

The unpadded U-Net's output is 184 px smaller than its input (depth 4), so to
segment an H x W image we mirror the missing 92 px of context at the borders and
run the network on tiles whose outputs cover the image.

Exactness. A tile at offset t of the padded image gives exactly the same
numbers as one pass over the whole padded image if every 2x2 pool sees the same
windows in both: the tile's origin must lie on the pooling grid of every level,
i.e. t must be a multiple of 2^depth (16). Valid sizes are 16b + 124 (depth 4),
so two valid sizes differ by a multiple of 16 and the last tile, flush with the
end of a valid padded image, is aligned as well. We therefore pad to a VALID
total size P >= H + 184, step the tiles by a multiple of 16 no larger than the
tile's output, and stitch: where outputs overlap they are identical. The
stitched map equals `model.forward(padded image)` to float rounding.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .model import UNet, is_valid_size, nearest_valid_sizes, output_size


def padded_size(n: int, depth: int) -> int:
    """Smallest valid network input P with P - margin >= n (the output covers n pixels)."""
    m = _margin(depth)
    s = n + m
    return s if is_valid_size(s, depth) else nearest_valid_sizes(s, depth)[1]


def _margin(depth: int) -> int:
    s = nearest_valid_sizes(1, depth)[1]
    return s - output_size(s, depth)


def tile_offsets(total: int, tile: int, depth: int) -> list[int]:
    """Input-tile offsets along one axis of a padded image of valid size `total`.

    Steps are the largest multiple of 2^depth not exceeding the tile's output
    size, and the last tile ends flush with `total`; all offsets are multiples
    of 2^depth (the pooling grid), which makes the stitch exact.
    """
    if tile >= total:
        return [0]
    g = 2**depth
    step = max(g, (output_size(tile, depth) // g) * g)
    offs = list(range(0, total - tile, step))
    return offs + [total - tile]


def choose_tile(padded: tuple[int, int], depth: int, max_tile: int) -> tuple[int, int]:
    """Tile size per axis: the whole padded axis if it is <= max_tile, else the largest
    valid size <= max_tile."""
    out = []
    for p in padded:
        if p <= max_tile:
            out.append(p)
        else:
            below, _ = nearest_valid_sizes(max_tile, depth)
            if below is None:
                raise ValueError(f"--tile {max_tile} is smaller than the smallest valid tile")
            out.append(below)
    return tuple(out)


def mirror_pad(image, top, bottom, left, right):
    """Mirror-pad the last two axes (numpy 'reflect': the edge pixel is not repeated).

    Works for pads larger than the image by reflecting repeatedly. image (..., H, W).
    """
    xp = backend.xp_of(image)
    pad = [(0, 0)] * (image.ndim - 2) + [(top, bottom), (left, right)]
    if min(image.shape[-2:]) < 2:  # a single row/column cannot be reflected: repeat it
        return xp.pad(image, pad, mode="symmetric")
    return xp.pad(image, pad, mode="reflect")


def predict(model: UNet, image, tile: int | None = None, batch: int = 1, tta: int = 1):
    """Class probabilities (K, H, W) for one image (H, W) or (C, H, W), any size.

    model: a UNet (on the CPU or the GPU; the image is moved there once).
    tile:  the largest input tile side (valid size); None: the whole padded image
           in one pass on the GPU, 572 on the CPU (bounded memory).
    batch: tiles per forward pass. tta: 1 (none), 4 (rotations) or 8 (rotations
           and flips); the probabilities are averaged over the transformed copies.
    Returns probabilities in the model's array module and dtype.
    """
    cfg = model.config
    xp = model.xp
    img = xp.asarray(image, dtype=cfg.dtype)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] != cfg.in_channels:
        raise ValueError(f"predict expects an image (H, W) or (C, H, W) with C = "
                         f"{cfg.in_channels}, got shape {tuple(image.shape)}")
    if tta not in (1, 4, 8):
        raise ValueError(f"tta must be 1, 4 or 8, got {tta}")
    acc = None
    for k in range(tta):
        t = _transform(img, k)
        p = _predict_once(model, t, tile, batch)
        p = _untransform(p, k)
        acc = p if acc is None else acc + p
    return acc / tta if tta > 1 else acc


def _transform(img, k):
    """The k-th of 8 dihedral transforms of (C, H, W): k % 4 quarter turns, then a flip if k >= 4."""
    xp = backend.xp_of(img)
    out = xp.rot90(img, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def _untransform(p, k):
    xp = backend.xp_of(p)
    if k >= 4:
        p = p[:, :, ::-1]
    return xp.rot90(p, -(k % 4), axes=(1, 2))


def _predict_once(model, img, tile, batch):
    cfg = model.config
    xp = model.xp
    C, H, W = img.shape
    m = _margin(cfg.depth)
    PH, PW = padded_size(H, cfg.depth), padded_size(W, cfg.depth)
    top, left = m // 2, m // 2
    padded = mirror_pad(img, top, PH - H - top, left, PW - W - left)  # (C, PH, PW)
    if tile is None:
        tile = 10**9 if xp is not np else 572
    th, tw = choose_tile((PH, PW), cfg.depth, tile)
    oh, ow = output_size(th, cfg.depth), output_size(tw, cfg.depth)
    probs = xp.empty((cfg.n_classes, PH - m, PW - m), dtype=img.dtype)
    origins = [(y, x) for y in tile_offsets(PH, th, cfg.depth)
               for x in tile_offsets(PW, tw, cfg.depth)]
    for i in range(0, len(origins), batch):
        group = origins[i : i + batch]
        xb = xp.stack([padded[:, y : y + th, x : x + tw] for y, x in group])  # (B, C, th, tw)
        pb = softmax(model.forward(xb))  # (B, K, oh, ow)
        for (y, x), p in zip(group, pb, strict=True):
            probs[:, y : y + oh, x : x + ow] = p
    return probs[:, :H, :W]


def softmax(logits):
    """Softmax over axis 1 of (N, K, H, W), stable."""
    xp = backend.xp_of(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)
