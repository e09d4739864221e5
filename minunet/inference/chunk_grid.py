"""The chunk grid of chunked prediction (minunet/inference/chunked.py, "Exactness"): chunk sides
on the network's tile grid (its Geometry, minunet/nn/geometry.py), the smallest chunk worth
running, the default chunk, and the tile that makes each chunk whole tiles."""

from __future__ import annotations

import math

from minunet.models.sizes import as_geometry

DEFAULT_CHUNK = 1024  # target chunk side; the default is the multiple of the tile step nearest it


def check_chunk(chunk: int, geometry=4) -> int:
    """A chunk side must be a positive multiple of 2^depth (module doc); else ValueError
    naming the nearest valid sides."""
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    g = geo.grid
    if chunk >= g and chunk % g == 0:
        return chunk
    below, above = (chunk // g) * g, (chunk // g + 1) * g
    near = f"{below} or {above}" if below >= g else f"{above}"
    raise ValueError(f"chunk size {chunk} breaks the pooling grid: chunk edges must lie on "
                     f"multiples of {g} px ({geo.name}), the grid the tiles start on and their "
                     f"outputs meet on (an edge off it splits a tile in every chunk); the "
                     f"nearest valid chunk sizes are {near}")


def min_chunk(geometry=4) -> int:
    """The smallest chunk side worth running: the network's context margin (184 px at depth
    4) rounded up to the grid, 192 (module doc: below it the margin outweighs the chunk)."""
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    g = geo.grid
    return -(-geo.margin // g) * g


def small_chunk_message(chunk, shape, geometry=4) -> str | None:
    """Why the chunk (cy, cx) wastes most of its work on an image of `shape` (H, W), or None:
    a side below `min_chunk` on an axis it does not cover whole."""
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    lo, m = min_chunk(geo), geo.margin
    for c, n in zip(chunk, shape, strict=True):
        if c < lo and c < n:
            return (f"chunk {c} is below {lo}, the smallest worth running: each chunk also "
                    f"computes the {m} px context margin around it, so {c} px chunks compute "
                    f"about {((c + m) / c) ** 2:.0f}x the pixels they keep (the default, near "
                    f"{DEFAULT_CHUNK}, about 1.4x); use a chunk of {lo} or more")
    return None


def default_chunk(shape, tile: int, geometry=4, target: int = DEFAULT_CHUNK):
    """(cy, cx): per axis the whole axis (rounded up to the grid) when one tile covers it, else
    the multiple of the tile step nearest `target` (each chunk then made of whole tiles)."""
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    g = geo.grid
    out = []
    for n in shape:
        P = geo.padded_size(n)
        T = geo.choose_tile((P,), tile)[0]
        if T >= P:
            out.append(-(-n // g) * g)
        else:
            s = geo.tile_step(T)
            out.append(s * max(1, round(target / s)))
    return tuple(out)


def tile_for_chunk(shape, chunk, tile: int, geometry=4) -> int:
    """The largest valid tile <= `tile` whose step divides the chunk sides (on the axes that
    one tile does not cover whole), so that no tile runs twice; `tile` if none does."""
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    g = geo.grid
    steps = [c for n, c in zip(shape, chunk, strict=True)
             if geo.choose_tile((geo.padded_size(n),), tile)[0] < geo.padded_size(n)]
    if not steps:
        return tile
    common = math.gcd(*steps)
    s_max = geo.tile_step(geo.choose_tile((10**9,), tile)[0])
    for s in range(min(s_max, common) // g * g, 0, -g):
        if common % s == 0 and geo.tile_step(geo.padded_size(s)) == s:
            return geo.padded_size(s)
    return tile


class ChunkWarning(UserWarning):
    """A chunk size that is exact but makes some tiles run twice."""


class SmallChunkWarning(UserWarning):
    """A chunk side below `min_chunk`: exact, but most of the work goes into the margin."""
