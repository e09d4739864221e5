"""Overlap-tile inference (Ronneberger et al. 2015, Fig. 2) and test-time augmentation.

The unpadded U-Net's output is 184 px smaller than its input (depth 4): every
3x3 convolution eats one pixel per side. To segment an H x W image we mirror the
missing 92 px of context at the borders ("the missing input data is
extrapolated by mirroring the input image", Sec. 2) and run the network on
tiles whose outputs cover the image without gaps.

Exactness: why tile offsets must be multiples of 2^depth. A 2x2, stride-2
max-pool sees the windows (2i, 2i+1); a tile cut at offset t of the padded
image sees the windows (t+2i, t+2i+1). These are the same windows as in one
pass over the whole image only if t is even; after the second pool they agree
only if t/2 is even as well, and so on: after `depth` pools, only if t is a
multiple of 2^depth (16 for the paper's net). Convolutions, up-convolutions and
the centre crops of the skips are translation-equivariant (the crop offset is
a constant of the architecture, the same for every valid input size), so with
such offsets every tile computes exactly the numbers the whole-image pass
computes at the same place. Off the grid (e.g. at offset 8) a deeper pool
pairs up different pixels and the tile's output differs (tests/test_infer.py
shows it does).

Valid sizes are 16b + 124 (depth 4), so two valid sizes differ by a multiple of
16 and the last tile, flush with the end of a valid padded image, is on the
grid as well. We therefore pad to a VALID total size P >= H + 184, step the
tiles by the largest multiple of 16 that does not exceed the tile's output
size (so a tile that is stepped needs an output of at least 16 px: the smallest
is 204, output 20; 188, output 4, can only cover a whole axis), and stitch:
where outputs overlap they are identical, nothing is blended.
The stitched map equals `model.forward(padded image)` to float rounding
(tested in float64 to 1e-12), so the tile size changes speed and memory only.

Tiles are run `batch` at a time (tiles of all test-time transforms that share a
shape go into the same batches). With `tile=None` the tile side is chosen from
the free memory of the device (the whole padded image in one pass when it
fits). On the GPU the image is copied to the device once; padding, tiling,
stitching and the test-time transforms all happen there.
"""

from __future__ import annotations

import numpy as np

from . import backend
from .model import UNet, layer_table, standardize
from .sizes import (
    choose_tile,
    min_tile,
    output_size,
    padded_size,
    size_margin,
    tile_offsets,
    valid_sizes,
)

# Fraction of the free memory that one forward pass may plan to use, and the
# factor on the layer outputs that covers what the layers keep for backward
# (ReLU outputs, conv inputs) and the transient pre-activation buffers.
MEMORY_FRACTION = 0.6
ACTIVATION_FACTOR = 2.5
CPU_DEFAULT_BUDGET = 2 * 2**30  # when the free RAM cannot be read
CPU_MAX_BUDGET = 4 * 2**30  # larger CPU tiles are hardly faster; be kind to shared machines


def forward_bytes(config, size: int, batch: int = 1) -> int:
    """Planned memory of one inference forward pass on (batch, C, size, size): the layer
    outputs times ACTIVATION_FACTOR plus the largest im2col workspace."""
    rows = layer_table(config, size, batch)
    act = sum(r["act_mb"] for r in rows) * 2**20
    cols = max(r["im2col_mb"] for r in rows) * 2**20
    return int(ACTIVATION_FACTOR * act + cols)


def free_memory_bytes(xp) -> int:
    """Free memory: on the GPU the device's free bytes plus CuPy's cached free blocks; on
    the CPU MemAvailable (Linux), at most CPU_MAX_BUDGET / MEMORY_FRACTION."""
    if xp is np:
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        avail = int(line.split()[1]) * 1024
                        return min(avail, int(CPU_MAX_BUDGET / MEMORY_FRACTION))
        except OSError:
            pass
        return int(CPU_DEFAULT_BUDGET / MEMORY_FRACTION)
    free, _total = xp.cuda.Device().mem_info
    return int(free + xp.get_default_memory_pool().free_bytes())


def auto_tile(config, padded: tuple[int, int], batch: int, budget: int) -> int:
    """The largest valid tile side whose forward pass (batch tiles) fits in `budget` bytes;
    the whole padded image when it fits; `min_tile` if nothing fits."""
    smallest = min_tile(config.depth)
    sizes = valid_sizes(smallest, max(smallest, *padded), config.depth)
    best = sizes[0]
    for s in sizes:  # memory grows with s: stop at the first that does not fit
        if forward_bytes(config, s, batch) > budget:
            break
        best = s
    return best


def mirror_pad(image, top: int, bottom: int, left: int, right: int):
    """Mirror-pad the last two axes of image (..., H, W) -> (..., H+top+bottom, W+left+right).

    numpy 'reflect' (the edge pixel is not repeated: ... 2 1 | 0 1 2 ... n-1 | n-2 ...), and
    pads longer than the image keep reflecting back and forth (period 2n - 2); a single
    row or column is repeated. Done by gathering with index vectors, so it runs on the
    image's device (NumPy or CuPy) without a copy to the host.
    """
    xp = backend.xp_of(image)
    H, W = image.shape[-2:]
    iy = xp.asarray(_reflect_index(H, top, bottom))
    ix = xp.asarray(_reflect_index(W, left, right))
    return image.take(iy, axis=-2).take(ix, axis=-1)


def _reflect_index(n: int, before: int, after: int) -> np.ndarray:
    """Source index of each padded position along an axis of length n (see mirror_pad)."""
    i = np.arange(-before, n + after)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * n - 2
    i = np.mod(i, period)
    return np.where(i >= n, period - i, i)


def predict(model: UNet, image, tile: int | None = None, batch: int = 1, tta: int = 1):
    """Class probabilities (K, H, W) for one image (H, W) or (C, H, W), any size.

    model: a UNet (on the CPU or the GPU; the image is moved there once).
    tile:  the largest input tile side (a valid size, or rounded down to one);
           None: chosen from the device's free memory (the whole padded image in
           one pass when it fits).
    batch: tiles per forward pass.
    tta:   1 (none), 4 (the four rotations) or 8 (rotations and their mirror
           images); the probabilities of the transformed copies, transformed back,
           are averaged (the dihedral group of the square, as the paper's rotated
           copies).
    Returns probabilities in the model's array module (NumPy or CuPy) and dtype.
    """
    cfg = model.config
    xp = model.xp
    if getattr(image, "ndim", None) not in (2, 3):
        raise ValueError(f"predict expects an image (H, W) or (C, H, W), got shape "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    img = standardize(xp.asarray(image, dtype=cfg.dtype))  # the one host -> device copy
    if img.ndim == 2:
        img = img[None]  # (1, H, W)
    if img.shape[0] != cfg.in_channels:
        raise ValueError(f"predict expects an image (H, W) or (C, H, W) with C = "
                         f"{cfg.in_channels} (the model's in_channels), got shape "
                         f"{tuple(image.shape)}")
    if tta not in (1, 4, 8):
        raise ValueError(f"tta must be 1, 4 or 8, got {tta}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    was_training = model.training
    model.eval()  # no dropout; restored on the way out
    try:
        return _predict(model, img, tile, batch, tta)
    finally:
        model.training = was_training


def _predict(model, img, tile, batch, tta):
    """The body of `predict`: img (C, H, W) standardised, in the model's array module."""
    cfg = model.config
    xp = model.xp
    _, H, W = img.shape
    m = size_margin(cfg.depth)
    if tile is None:
        padded = (padded_size(H, cfg.depth), padded_size(W, cfg.depth))
        tile = auto_tile(cfg, padded, batch, int(MEMORY_FRACTION * free_memory_bytes(xp)))

    # One padded copy and one output buffer per transform; jobs = (transform, y, x).
    pads, outs, shapes, jobs = [], [], [], []
    for k in range(tta):
        t = _transform(img, k)  # (C, h, w): (H, W) or (W, H)
        _, h, w = t.shape
        ph, pw = padded_size(h, cfg.depth), padded_size(w, cfg.depth)
        top = left = m // 2
        pads.append(mirror_pad(t, top, ph - h - top, left, pw - w - left))  # (C, ph, pw)
        outs.append(xp.empty((cfg.n_classes, ph - m, pw - m), dtype=img.dtype))
        th, tw = choose_tile((ph, pw), cfg.depth, tile)
        shapes.append((th, tw))
        jobs += [(k, y, x) for y in tile_offsets(ph, th, cfg.depth)
                 for x in tile_offsets(pw, tw, cfg.depth)]

    # Run tiles of equal shape together, `batch` at a time, and stitch.
    for shape in sorted(set(shapes)):
        th, tw = shape
        oh, ow = output_size(th, cfg.depth), output_size(tw, cfg.depth)
        group = [j for j in jobs if shapes[j[0]] == shape]
        for i in range(0, len(group), batch):
            chunk = group[i : i + batch]
            xb = xp.stack([pads[k][:, y : y + th, x : x + tw] for k, y, x in chunk])  # (B,C,th,tw)
            pb = softmax(model.forward(xb))  # (B, K, oh, ow)
            model.release_caches()  # inference never runs the backward
            for (k, y, x), p in zip(chunk, pb, strict=True):
                outs[k][:, y : y + oh, x : x + ow] = p

    acc = None
    for k in range(tta):
        h, w = (W, H) if k % 2 else (H, W)  # odd k: a quarter turn swapped the axes
        p = _untransform(outs[k][:, :h, :w], k)  # (K, H, W)
        acc = p if acc is None else acc + p
    return acc / tta if tta > 1 else xp.ascontiguousarray(acc)


def _transform(img, k: int):
    """The k-th of the 8 dihedral transforms of (C, H, W): k % 4 quarter turns, then a
    left-right flip if k >= 4. k < 4 are the rotations (tta=4)."""
    xp = backend.xp_of(img)
    out = xp.rot90(img, k % 4, axes=(1, 2))
    return out[:, :, ::-1] if k >= 4 else out


def _untransform(p, k: int):
    """Inverse of `_transform` on (K, h, w) maps: flip back, then turn back."""
    xp = backend.xp_of(p)
    if k >= 4:
        p = p[:, :, ::-1]
    return xp.rot90(p, -(k % 4), axes=(1, 2))


def softmax(logits):
    """Softmax over axis 1 of (N, K, H, W), stable."""
    xp = backend.xp_of(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=1, keepdims=True)
