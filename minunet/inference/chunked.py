"""Chunked prediction into zarr: images beyond memory, on this machine or a Dask cluster.

    python -m minunet.predict --checkpoint CKPT INPUT --out OUT.zarr [--chunk 1536] [--mask]
                              [--scheduler tcp://HOST:8786 | processes]

INPUT is a zarr or OME-Zarr array, a TIFF of any size (read lazily: memory-mapped when it is
stored uncompressed in one piece, else through tifffile's zarr view, tile by tile), or any
image the CLI reads (read whole). 2-D images, and stacks (Z, Y, X) slice by slice (any leading
axes: OME's t and z; channels where the metadata says 'c' or the TIFF 'S'/'C').

OUT.zarr holds

    prob   the probabilities, the model's dtype: P(class 1) for two classes, shape (..., Y, X);
           all K classes (class axis 'c' first, after OME's 't') for more
    mask   (when asked) uint8: p > threshold -> 255 for two classes, the arg-max class for more
    done/  one JSON done-marker per complete chunk, with the size and CRC-32 of its prob (and
           mask) chunk files as stored (minunet/inference/chunk_store.py): what a rerun skips

chunked in Y and X like the chunk grid (every chunk a file, all-background ones too), with the
run's settings and a BLAKE2b digest of the input's bytes in the root attributes ("minunet")
and, when the input was OME-Zarr, OME-Zarr multiscales metadata (the version the input had: 0.4
in zarr format 2, 0.5 in format 3) naming `prob` as the image.

Exactness. Each chunk is one rectangle of the output, computed by `infer.predict_region`: the tiles
the in-memory `infer.predict` runs for those pixels, on the same pixels, so the chunk equals the
in-memory prediction bit for bit (float64 and float32 alike; same machine and MINUNET_CPU_THREADS,
since the row blocks of the fast ops round differently for other thread counts). Why the chunk grid
is tied to 16 = 2^depth: a 2x2 pool pairs pixels (2i, 2i+1), so a tile computes the whole-image
numbers only when it starts at a multiple of 2^depth of the padded frame (minunet/models/sizes.py),
and every boundary between the tiles' owned outputs lies on that grid (on multiples of the tile
step: 384 for tile 572). A chunk edge off the 16-grid would cut through the middle of a tile's
output wherever it is, so such chunk sizes are refused, naming the nearest multiples of 16; with the
chunk a multiple of the tile step (the default, or the tile chosen to fit a given chunk) each chunk
is made of whole tiles and no tile runs twice.

The halo. A chunk needs the real pixels around it: a tile's output pixel i lies on its input
pixel i + 92 (the 184 px margin, half on each side), and the tile that starts at a chunk's
first row reads rows y0 - 92 .. y0 + size - 93, i.e. 92 px before the chunk and 96 after its
end (the tile, 188 + step px, outputs 4 px more than its step). On an axis a test-time transform
reverses, the tiles start up to 15 px earlier (on the grid of the transformed image).
`infer.region_window` computes the window exactly; positions outside the image are mirrored
at its true border only, as the in-memory prediction does.

Resumable, and checked. A chunk's prob (and mask) are written first, then its done-marker
(zarr 3.1 writes each chunk file to a temporary name and renames it; the marker is written
atomically too): a run killed at any point leaves no chunk marked that is not complete. A rerun
with the same settings verifies every marker against its chunk files (their checksums, not their
pixels: one read of the output) and computes the chunks not marked or whose files were
deleted, truncated or overwritten since. A rerun with other settings (model, tile, chunk,
tta, ...) or from an input whose content changed under the same name is refused, before
anything is written (a half-done store never mixes two inputs): predict into a new OUT, or
pass overwrite=True (--overwrite) to replace the old store.

Errors are one line naming the file and the fix: an unreadable or truncated input is found
before OUT is created where its directory shows it (a TIFF whose strips or tiles run past the
end of the file), else when its pixels are read; an output that cannot be written is named
with its reason. A run that fails removes the store it created if no chunk was complete (or
if the input is damaged: the store records the damaged file's digest), and otherwise keeps it
and says so (a rerun resumes it).

Chunk size. Each chunk computes the 184 px context margin around its pixels (92 px on each
side, `sizes.size_margin`) besides the chunk itself; below the margin that context outweighs the
chunk (a chunk of c px computes about ((c + 184) / c)^2 times its pixels: 156x at 16, 3.8x at
192, 1.4x at 1152). `min_chunk` is the margin rounded up to the grid (192 at depth 4): the CLI
refuses --chunk below it, `predict_zarr` warns (SmallChunkWarning), except where one chunk
covers the whole axis.

Memory: per task one window (chunk + halo) of the image, one chunk of output and the tiles of
one forward pass, whatever the image's size. The chunks run as Dask tasks: by default on this
machine's threads (one forward pass at a time, the others reading and writing), with
scheduler="processes" on a LocalCluster of worker processes started here, or with the address
of a running dask.distributed scheduler on many machines. Each worker process builds the model
once (the parameters travel once per worker) and keeps it.

The extra: `pip install "minunet[scale]"` (zarr, dask, distributed). zarr 3, not 2: tifffile's
zarr view of a TIFF (tifffile >= 2025.5.21) speaks only zarr 3's store API; zarr 3 writes both
store formats (2 for OME-Zarr 0.4, 3 for 0.5) and, from 3.1, each chunk file atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
import warnings
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minunet import backend
from minunet.data.loaders import DataError
from minunet.inference import chunk_store
from minunet.inference.chunk_grid import (  # noqa: F401  (the grid and the inputs, named here too)
    DEFAULT_CHUNK,
    ChunkWarning,
    SmallChunkWarning,
    check_chunk,
    default_chunk,
    min_chunk,
    small_chunk_message,
    tile_for_chunk,
)
from minunet.inference.sources import (  # noqa: F401
    SCALE_EXTRA,
    InputError,
    Source,
    _gray_channels,
    _ome_attrs,
    ome_version,
    open_source,
    percentile_stats,
    require,
)
from minunet.inference.tiles import (
    auto_tile_halo,
    effective_tile,
    inference_geometry,
    predict_region,
    region_window,
    resolve_halo,
    seam_note,
)
from minunet.models import registry, standardize
from minunet.models.sizes import as_geometry

LOCAL_THREADS = 2  # threads of the default scheduler: one runs the network, one reads and writes
LAYOUT = 2  # the store's layout: 2 = JSON done-markers with checksums (1 had a `done` array)


# ----------------------------------------------------------------------------- the run


@dataclass
class ModelRef:
    """What a worker process needs to build the model once: config, parameters, device."""

    config: str  # the model config as JSON (its arch names the architecture)
    state: dict  # parameter name -> host array
    device: str  # "auto", "cpu" or "cuda", resolved on the worker
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


# the module caches of a (worker) process, evicted oldest first beyond CACHED entries: a long-
# lived Dask worker that predicts with many checkpoints or into many stores keeps only the
# last few models (their parameters) and open arrays
CACHED = 2
_MODELS: OrderedDict = OrderedDict()  # ModelRef.token -> (model, lock): this process's models
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> lock
_LOADS: dict = {}  # ModelRef.token -> times built in this process (the tests read it)
_GUARD = threading.Lock()


def model_loads() -> dict:
    """{token: times built} in this process (client.run(model_loads) asks every worker)."""
    return dict(_LOADS)


def _model(ref):
    """(model, lock): a model object itself, or the one this process built from a ModelRef.
    One forward pass at a time per model: its layers keep per-call state and the fast ops
    use every core already."""
    with _GUARD:
        if not isinstance(ref, ModelRef):
            return ref, _LOCKS.setdefault(ref, threading.Lock())
        if ref.token not in _MODELS:
            conf = json.loads(ref.config)  # any architecture of the registry
            model = registry.build_model(registry.config_for(conf["arch"], conf))
            model.load_state_dict(ref.state)
            model.eval().to(backend.resolve_device(ref.device))
            _MODELS[ref.token] = (model, threading.Lock())
            _LOADS[ref.token] = _LOADS.get(ref.token, 0) + 1
            _evict(_MODELS)
        _MODELS.move_to_end(ref.token)
        return _MODELS[ref.token]


def _evict(cache: OrderedDict) -> None:
    """Drop the oldest entries beyond CACHED (the caller holds _GUARD)."""
    while len(cache) > CACHED:
        cache.popitem(last=False)


@dataclass
class _Context:
    """Everything a chunk task needs (scattered once to every worker)."""

    model: object  # a UNet (threads) or a ModelRef (worker processes)
    source: Source
    out: str
    key: str  # settings fingerprint: the open output arrays are cached under it
    shape: tuple  # (*leading, H, W)
    chunk: tuple  # (cy, cx)
    tile: int
    batch: int
    tta: int
    halo: int  # a padded network's overlap halo (infer.inference_geometry); 0 for the U-Net
    threshold: float
    mask: bool
    classes: int
    normalize: str  # the checkpoint's normalisation (loaders.normalize_image)
    stats: dict | None  # percentile normalisation: {leading index: [(p_lo, p_hi) per channel]}


_ARRAYS: OrderedDict = OrderedDict()  # store key -> (prob, mask) arrays opened for writing


def _outputs(ctx: _Context):
    with _GUARD:
        if ctx.key not in _ARRAYS:
            zarr = require("zarr")
            g = zarr.open_group(ctx.out, mode="r+")
            every = {"write_empty_chunks": True}  # runtime config, not stored: a chunk all
            # background (all fill value) must still be a file, or it is never counted done
            _ARRAYS[ctx.key] = (g["prob"].with_config(every),
                                g["mask"].with_config(every) if ctx.mask else None)
            _evict(_ARRAYS)
        _ARRAYS.move_to_end(ctx.key)
        return _ARRAYS[ctx.key]


def _chunk_keys(arrays: dict, job: tuple, lead_axes: str, classes: int) -> dict:
    """{array name: key of the chunk file of `job` = (*leading, iy, ix)} (prob of more than
    two classes has the class axis, in one chunk, after OME's 't')."""
    at = _class_axis(lead_axes)
    return {name: a.metadata.encode_chunk_key(
        job[:at] + (0,) + job[at:] if name == "prob" and classes > 2 else job)
        for name, a in arrays.items()}


def _reader(ctx: _Context, model, lead: tuple):
    """read(rect) -> the standardised pixels (C, h, w) of slice `lead` in rect (y0, y1, x0,
    x1), on the model's device."""
    from minunet.data.loaders import stretch
    from minunet.inference.outputs import to_channels

    cfg = model.config
    label = f"{ctx.source.name}{list(lead) if lead else ''}"

    def read(rect):
        raw = ctx.source.read(lead, rect)
        if ctx.stats is None:  # value by value: the window converts like the whole image
            x = to_channels(raw, cfg.in_channels, label, ctx.normalize)  # (C, h, w)
        else:
            x = np.stack([stretch(c.astype(np.float32), *st) for c, st in
                          zip(_gray_channels(raw), ctx.stats[lead], strict=True)])
        return standardize(model.xp.asarray(x, dtype=cfg.dtype))
    return read


def _run_chunk(job: tuple, ctx: _Context) -> int:
    """Compute, write and mark one chunk; returns its pixel count. job = (*leading, iy, ix)."""
    from minunet.inference.outputs import outputs

    model, lock = _model(ctx.model)
    *lead, iy, ix = job
    lead = tuple(lead)
    H, W = ctx.shape[-2:]
    cy, cx = ctx.chunk
    region = (iy * cy, min(H, (iy + 1) * cy), ix * cx, min(W, (ix + 1) * cx))
    read = _reader(ctx, model, lead)
    geometry = inference_geometry(model.geometry, ctx.halo)
    rect = region_window((H, W), region, effective_tile(model, ctx.tile), geometry, ctx.tta)
    window = read(rect)  # read before taking the lock: I/O overlaps another chunk's forward

    def from_window(r):
        if r == rect:
            return window
        return read(r)  # after an out-of-memory retry: a smaller tile's window

    with lock:
        p = backend.to_host(predict_region(model, from_window, (H, W), region, ctx.tile,
                                           ctx.batch, ctx.tta, ctx.halo))  # (K, h, w)
    window = None  # noqa: F841 -- free the window before writing
    prob_a, mask_a = _outputs(ctx)
    prob, mask = outputs(p, ctx.threshold)
    sel = lead + (slice(region[0], region[1]), slice(region[2], region[3]))
    try:
        if ctx.classes > 2:
            at = _class_axis(ctx.source.lead_axes)
            prob_a[sel[:at] + (slice(None),) + sel[at:]] = np.moveaxis(prob, 0, at)
        else:
            prob_a[sel] = prob
        if mask_a is not None:
            mask_a[sel] = mask
        arrays = {"prob": prob_a} | ({"mask": mask_a} if mask_a is not None else {})
        keys = _chunk_keys(arrays, tuple(job), ctx.source.lead_axes, ctx.classes)
        chunk_store.write_marker(ctx.out, tuple(job), keys)  # last: the chunk is complete
    except OSError as e:  # PermissionError, a full disk, ...
        raise DataError(f"cannot write chunk {tuple(job)} into {ctx.out} "
                        f"({_os_reason(e)}); make it writable or choose another --out") from e
    return (region[1] - region[0]) * (region[3] - region[2])


def _os_reason(e: OSError) -> str:
    """'Permission denied: PATH' of an OSError, in one line."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror}{where}" if e.strerror else f"{type(e).__name__}: {e}"


def _class_axis(lead_axes: str) -> int:
    """Where the class axis goes among the leading axes: after OME's 't', before the rest."""
    return len(lead_axes) - len(lead_axes.lstrip("t"))


@dataclass
class Summary:
    """What a run did."""

    out: str
    chunks: int  # in the grid
    skipped: int  # complete before this run
    computed: int  # by this run
    megapixels: float  # computed by this run (per slice; all slices added)
    seconds: float
    tile: int
    chunk: tuple
    halo: int = 0  # a padded network's overlap halo (0 for the U-Net)
    seam: str | None = None  # the measured seam error when the halo is not exact (seam_note)

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / self.seconds if self.seconds > 0 else float("nan")


def predict_zarr(model, input, out, *, chunk=None, tile: int | None = None, batch: int = 1,
                 tta: int = 1, threshold: float = 0.5, mask: bool = False, scheduler=None,
                 workers: int = LOCAL_THREADS, device: str = "auto", progress: bool = True,
                 normalize: str = "max", name: str | None = None, overwrite: bool = False,
                 log=None, halo: int | None = None) -> Summary:
    """Predict `input` chunk by chunk into the zarr store `out` (module doc); resumes.

    model:     a UNet (eval mode is set per call, as infer.predict does).
    input:     a Source, a path (zarr, OME-Zarr, TIFF, PNG) or an in-memory array.
    chunk:     side (or (cy, cx)) of the output chunks, multiples of 2^depth; None: the
               multiple of the tile step nearest 1024 (`default_chunk`).
    tile:      the largest tile side; None: chosen from the free memory of the model's device,
               then lowered to the largest whose step divides the chunk.
    normalize: how stored gray values become [0, 1] (loaders.normalize_image; the CLI passes
               the checkpoint's); "max": integers / their type's maximum, floats as they are.
    scheduler: None or "threads" (this process, `workers` threads), "processes" (a
               LocalCluster of `workers` processes started here), or the address of a running
               dask.distributed scheduler ("tcp://host:8786"; `device` is then resolved on
               each worker: one GPU each when every worker sees one GPU).
    overwrite: replace an existing store made with other settings or from another input
               (else refused, naming this).
    halo:      a padded network's overlap halo (infer.predict; None: exact, its receptive
               radius rounded up to the grid); one below the radius is measured on the
               first slice (`seam_note`: logged, and in the Summary).
    Returns a Summary (chunks computed and skipped, megapixels per second). Errors are
    DataError (a ValueError) in one line, saying whether OUT was removed or kept to resume.
    """
    require("zarr")
    require("dask")
    cfg = model.config
    src = input if isinstance(input, Source) else open_source(input, name)
    try:  # the input's file is closed whatever happens
        shape = src.shape
        H, W = shape[-2:]
        for c in _pair(chunk) if chunk is not None else ():
            check_chunk(c, model.geometry)
        if tile is None:
            tile, halo = auto_tile_halo(model, (H, W), batch, halo)
            if chunk is not None:
                tile = tile_for_chunk((H, W), _pair(chunk), tile,
                                      inference_geometry(model.geometry, halo))
        halo = resolve_halo(model, halo, tile, (H, W))
        geo = inference_geometry(model.geometry, halo)  # the network's own for the U-Net
        geo.choose_tile((geo.padded_size(H),), tile)  # refuses tiles too small
        chunk = _pair(chunk) if chunk is not None else default_chunk((H, W), tile, geo)
        _warn_if_tiles_run_twice((H, W), chunk, tile, geo)
        if (small := small_chunk_message(chunk, (H, W), geo)) is not None:
            warnings.warn(small, SmallChunkWarning, stacklevel=2)
        _check_first_pixels(src, cfg, normalize)

        settings = {
            "layout": LAYOUT,
            "input": src.fingerprint(),  # reads the input once: a digest of its bytes
            "model": json.loads(cfg.to_json()),
            "parameters_sha256": _parameters_sha256(model),
            "tile": int(tile), "chunk": list(chunk), "tta": int(tta),
            "threshold": float(threshold), "mask": bool(mask), "dtype": cfg.dtype,
            "normalize": normalize,
        } | ({"halo": int(halo)} if model.geometry.margin == 0 else {})  # padded networks
        grid = tuple(shape[:-2]) + (-(-H // chunk[0]), -(-W // chunk[1]))
        out = str(Path(out).absolute())
        created = _open_output(out, src, settings, grid, chunk, cfg, mask, overwrite)
        try:
            done = _complete(out, grid, src.lead_axes, cfg.n_classes, mask)
            todo = [tuple(int(i) for i in j) for j in zip(*np.nonzero(~done), strict=True)]
            ctx = _Context(model=model, source=src, out=out, key=hashlib.sha256(
                json.dumps(settings, sort_keys=True).encode()).hexdigest() + out, shape=shape,
                chunk=chunk, tile=int(tile), batch=batch, tta=tta, halo=halo,
                threshold=threshold, mask=mask,
                classes=cfg.n_classes, normalize=normalize, stats=None)
            if log:
                log(f"{src.name} {'x'.join(map(str, shape))} ({src.axes}, {src.dtype}) -> {out}: "
                    f"chunks {chunk[0]}x{chunk[1]}, tile {tile}, tta {tta}; {done.size} chunk(s), "
                    f"{done.size - len(todo)} already complete")
            t0 = time.perf_counter()
            seam = None
            if todo:
                ctx.stats = percentile_stats(src, cfg, normalize)
                seam = seam_note(model, _reader(ctx, model, (0,) * len(src.lead_axes)),
                                 (H, W), tile, batch, halo)
                if seam and log:
                    log(seam)
            pixels = _run(todo, ctx, scheduler, workers, device, progress)
        except Exception as e:
            state = _after_failure(out, created, int(np.prod(grid)), scheduler,
                                   isinstance(e, InputError))
            if isinstance(e, (ValueError, OSError)):  # DataError is a ValueError
                kind = InputError if isinstance(e, InputError) else DataError
                raise kind(f"{_one_line(e)}; {state}") from e
            e.add_note(state)
            raise
    finally:
        src.close()
    seconds = time.perf_counter() - t0
    return Summary(out=out, chunks=int(done.size), skipped=int(done.size) - len(todo),
                   computed=len(todo), megapixels=pixels / 1e6, seconds=seconds,
                   tile=int(tile), chunk=tuple(chunk), halo=int(halo), seam=seam)


def _complete(out: str, grid: tuple, lead_axes: str, classes: int, mask: bool) -> np.ndarray:
    """(*grid) bool per chunk: its done-marker agrees with its prob (and mask) chunk files as
    they lie on disk (chunk_store: a chunk deleted, truncated or overwritten since is
    computed again)."""
    zarr = require("zarr")
    g = zarr.open_group(out, mode="r")
    arrays = {name: g[name] for name in (("prob", "mask") if mask else ("prob",))}
    return chunk_store.complete_chunks(
        out, grid, lambda job: _chunk_keys(arrays, job, lead_axes, classes))


def _after_failure(out: str, created: bool, total: int, scheduler, bad_input: bool) -> str:
    """Say what became of OUT after a failed run. A store this run created is removed when
    no chunk of it was complete, or when the input is damaged (the store records the damaged
    file's digest: the mended file would need --overwrite anyway); only once no task can
    still write into it (this process's threads have stopped, not a cluster's workers)."""
    complete = chunk_store.count_markers(out)
    if created and (complete == 0 or bad_input) and scheduler in (None, "threads"):
        shutil.rmtree(out, ignore_errors=True)
        why = "made from the damaged input" if complete else "no chunk was complete"
        return f"{out} was removed ({why})"
    if bad_input:
        return (f"{out} is kept ({complete} of {total} chunk(s) complete, from the damaged "
                "input): replace the input, then rerun with --overwrite")
    return (f"{out} is kept and resumable ({complete} of {total} chunk(s) complete): fix "
            "the cause and rerun the same command to finish it, or delete it")


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, DataError) else (
        _os_reason(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}")
    return " ".join(text.split())


def _pair(chunk) -> tuple[int, int]:
    if isinstance(chunk, (int, np.integer)):
        return int(chunk), int(chunk)
    cy, cx = chunk
    return int(cy), int(cx)


def _warn_if_tiles_run_twice(shape, chunk, tile, geometry):
    geo = as_geometry(geometry)  # a Geometry (or a depth: the valid U-Net's)
    for n, c in zip(shape, chunk, strict=True):
        P = geo.padded_size(n)
        T = geo.choose_tile((P,), tile)[0]
        if T < P and c < n and c % geo.tile_step(T):
            s = geo.tile_step(T)
            warnings.warn(f"chunk {c} is not a multiple of the tile step {s} (tile {T}): exact, "
                          f"but the tiles across chunk edges run twice; --chunk "
                          f"{max(s, c // s * s)} or {(c // s + 1) * s}, or no --tile, avoids "
                          f"that", ChunkWarning, stacklevel=3)
            return


def _check_first_pixels(src: Source, cfg, normalize: str):
    """Fail before writing anything if the input's channels do not fit the model."""
    from minunet.inference.outputs import to_channels

    lead = (0,) * len(src.lead_axes)
    to_channels(src.read(lead, (0, 1, 0, 1)), cfg.in_channels, src.name, normalize)

#
# The CLI brings each image to [0, 1] as training did (loaders.normalize_image, the
# checkpoint's --normalize). Dividing by the type's maximum works value by value, so a window
# converts exactly like the whole image. Percentile stretching does not: it needs the whole
# slice's percentiles. One pass over each slice (band by band) counts its gray values, the two
# order statistics around each percentile come from the counts, and NumPy's own quantile of
# those two values gives p_lo and p_hi bit for bit as np.percentile over the whole slice
# (tests/test_chunked.py checks it). Counting needs integer gray values of at most 16 bits.


def _parameters_sha256(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).data)
    return h.hexdigest()


def _open_output(out: str, src: Source, settings: dict, grid: tuple, chunk: tuple, cfg, mask,
                 overwrite: bool = False) -> bool:
    """Create OUT (group with its attributes first, then the arrays), or check that an
    existing one was made with the same settings from the same input content (the run then
    resumes it, creating any array a killed first run did not get to); with `overwrite`, an
    existing minunet store is removed first. Returns whether this call created OUT."""
    zarr = require("zarr")
    fmt = 2 if src.ome is not None and ome_version(src.ome.get("version", "0.4")) < (0, 5) else 3
    lead_axes, lead = src.lead_axes, tuple(src.shape[:-2])
    H, W = src.shape[-2:]
    chunks = (1,) * len(lead) + tuple(chunk)
    dims = list(lead_axes) + ["y", "x"]
    if cfg.n_classes > 2:
        at = _class_axis(lead_axes)
        pshape = lead[:at] + (cfg.n_classes,) + lead[at:] + (H, W)
        pchunks = chunks[:at] + (cfg.n_classes,) + chunks[at:]
        pdims = dims[:at] + ["c"] + dims[at:]
    else:
        pshape, pchunks, pdims = lead + (H, W), chunks, dims
    attrs = {"minunet": settings} | (_ome_attrs(src, pdims) if src.ome is not None else {})
    created = not Path(out).exists()
    if not created:
        try:
            g = zarr.open_group(out, mode="r+")
        except Exception as e:  # a file, or a folder that is no zarr group
            raise DataError(f"{out} exists and is not a zarr group; choose another --out") from e
        have = dict(g.attrs).get("minunet")
        if have is None:
            raise DataError(f"{out} exists and holds no minunet prediction; choose another "
                             "--out")
        if have != settings and not overwrite:
            raise DataError(_mismatch(out, have, settings))
        if overwrite:
            shutil.rmtree(out)  # a minunet store (checked above), made from something else
            created = True
    try:
        if created:
            g = zarr.open_group(out, mode="w-", zarr_format=fmt, attributes=attrs)

        def make(name, shp, chk, dtype, dim, **kw):
            if name in g:
                return
            extra = {} if fmt == 2 else {"dimension_names": dim}
            g.create_array(name, shape=shp, chunks=chk, dtype=dtype, fill_value=0, **extra,
                           **kw)

        make("prob", pshape, pchunks, cfg.dtype, pdims)
        if mask:
            make("mask", lead + (H, W), chunks, "uint8", dims)
        _probe_writable(Path(out) / chunk_store.MARKERS)
    except OSError as e:  # a read-only folder, a path through a file, a name too long, ...
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise DataError(f"cannot write {out} ({_os_reason(e)}); make it writable or choose "
                        "another --out") from e
    return created


def _probe_writable(folder: Path) -> None:
    """OSError now, not in the middle of a run, if `folder` cannot take new files."""
    folder.mkdir(exist_ok=True)
    probe = folder / f".probe.{uuid.uuid4().hex}.tmp"
    probe.open("xb").close()
    probe.unlink()


def _mismatch(out: str, have: dict, settings: dict) -> str:
    """Why an existing store cannot be resumed, and what to do (one line)."""
    fix = "predict into a new --out, or add --overwrite to replace it"
    if have.get("layout") != settings["layout"]:
        return f"{out} was written by an older minunet (no chunk checksums); {fix}"
    a, b = have.get("input", {}), settings["input"]
    content = [k for k in ("blake2b", "sha256", "repr") if a.get(k) != b.get(k)]
    if content and all(a.get(k) == b.get(k) for k in set(a) | set(b) if k not in content):
        return (f"{out} was predicted from other contents of {b['name']} (it changed since "
                f"that run: its {content[0]} digest differs); {fix}")
    diff = sorted(k for k in set(have) | set(settings) if have.get(k) != settings.get(k))
    return (f"{out} holds a prediction made with other settings ({', '.join(diff)} differ); "
            f"resume it with the same ones, or {fix}")


def _run(todo, ctx: _Context, scheduler, workers: int, device: str, progress: bool) -> int:
    """Run the chunk tasks on the chosen Dask scheduler with a progress bar; pixels done."""
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc="predict", unit="chunk", disable=None if progress else True,
               dynamic_ncols=True)
    t0, pixels = time.perf_counter(), 0

    def tick(px):
        nonlocal pixels
        pixels += px
        bar.update(1)
        bar.set_postfix_str(f"{pixels / 1e6 / max(time.perf_counter() - t0, 1e-9):.2f} MP/s")

    try:
        if not todo:
            return 0
        if scheduler in (None, "threads"):
            _run_threads(todo, ctx, workers, tick)
        else:
            _run_distributed(todo, ctx, scheduler, workers, device, tick)
    finally:
        bar.close()
    return pixels


def _run_threads(todo, ctx, workers, tick):
    dask = require("dask")
    from dask.callbacks import Callback

    class Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            tick(result)

    tasks = [dask.delayed(_run_chunk, pure=False)(job, ctx) for job in todo]
    pool = ThreadPoolExecutor(max(1, workers))  # ours, to wait for: after a failed task no
    try:  # other may still be writing when the caller cleans up
        with Progress():
            dask.compute(*tasks, scheduler="threads", num_workers=max(1, workers), pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_distributed(todo, ctx, scheduler, workers, device, tick):
    distributed = require("distributed")
    model = ctx.model
    ref = ModelRef(model.config.to_json(), model.state_dict(), device)
    remote = _Context(**{**ctx.__dict__, "model": ref})
    cluster = None
    if scheduler == "processes":
        n = max(1, workers)  # the cores shared out among the processes (unless set already)
        env = {"MINUNET_CPU_THREADS": os.environ.get("MINUNET_CPU_THREADS",
                                                     str(max(1, backend.workers(np) // n)))}
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, env=env)
        address = cluster.scheduler_address
    else:
        address = scheduler
    try:
        try:
            client = distributed.Client(address, timeout="30s")
        except (OSError, TimeoutError) as e:
            raise ValueError(f"cannot reach a Dask scheduler at {address} ({e}); start one "
                             "with `dask scheduler` and workers with `dask worker ADDRESS`, "
                             "or leave --scheduler out to run here") from e
        with client:
            if not client.scheduler_info().get("workers"):
                client.wait_for_workers(1, timeout=60)
            shared = client.scatter(remote, broadcast=True, hash=False)
            futures = client.map(_run_chunk, todo, ctx=shared, pure=False)
            try:
                for fut in distributed.as_completed(futures):
                    tick(fut.result())
            except BaseException:
                client.cancel(futures)
                raise
    finally:
        if cluster is not None:
            cluster.close()
