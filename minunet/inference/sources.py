"""The inputs of chunked prediction (minunet/inference/chunked.py): zarr and OME-Zarr arrays,
large TIFFs read lazily, any image; their axes; OME-Zarr metadata in (and for the output, in
the input's version); and the percentiles of a whole slice read band by band, for inputs
normalised by percentiles."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
from pathlib import Path

import numpy as np

from minunet.data.loaders import DataError, check_tiff_complete
from minunet.inference import chunk_store

SCALE_EXTRA = 'pip install "minunet[scale]"'


def require(module: str):
    """Import a module of the `scale` extra, or say how to install it."""

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"chunked prediction into zarr needs {module.split('.')[0]}, which "
                          f"comes with the scale extra: {SCALE_EXTRA}") from e


class InputError(DataError):
    """The input's pixels cannot be read (a damaged file): a store made from it is no use."""


class Source:
    """An image read lazily window by window; picklable (each process reopens the file).

    kind: "zarr" (path, key = the array inside the store), "tiff" (path; memory-mapped or
    tifffile's zarr view), "array" (an in-memory array, carried along). axes: the stored
    array's axes, one letter each: y, x, c (channels) and leading axes (z, t, ...).
    """

    def __init__(self, kind: str, name: str, axes: str, shape: tuple, dtype, path=None,
                 key: str = "", array=None, ome: dict | None = None):
        if axes.count("y") != 1 or axes.count("x") != 1 or axes.count("c") > 1 \
                or axes.index("y") > axes.index("x") or len(axes) != len(shape):
            raise ValueError(f"{name}: cannot use axes {axes!r} for an array of shape {shape} "
                             "(need y and x, at most one channel axis c)")
        self.kind, self.name, self.axes, self.path, self.key = kind, name, axes, path, key
        self.stored_shape, self.dtype, self.ome = tuple(shape), np.dtype(dtype), ome
        self._array = array

    @property
    def lead_axes(self) -> str:
        return "".join(a for a in self.axes if a not in "cyx")

    @property
    def shape(self) -> tuple:
        """(*leading, H, W): the axes prediction walks over, channels left out."""
        return tuple(n for a, n in zip(self.axes, self.stored_shape, strict=True) if a != "c")

    @property
    def channels(self) -> int | None:
        return self.stored_shape[self.axes.index("c")] if "c" in self.axes else None

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.kind != "array":
            state["_array"] = state["_store"] = None  # file handles stay; reopened where needed
        return state

    _store = None  # tifffile's zarr store while open (it holds the file)

    def array(self):
        if self._array is None:
            self._array, self._store = _open_array(self)
        return self._array

    def close(self) -> None:
        """Close the file (a later read opens it again); in-memory arrays stay."""
        if self.kind != "array":
            if self._store is not None:
                self._store.close()
            self._array = self._store = None

    def read(self, lead: tuple, rect) -> np.ndarray:
        """The stored pixels of slice `lead` in rect (y0, y1, x0, x1): (h, w) or (h, w, C)."""
        y0, y1, x0, x1 = rect
        it = iter(lead)
        index = tuple(slice(y0, y1) if a == "y" else slice(x0, x1) if a == "x"
                      else slice(None) if a == "c" else next(it) for a in self.axes)
        try:
            a = np.asarray(self.array()[index])
        except Exception as e:  # a damaged file: tifffile, zarr and the codecs raise many types
            raise InputError(f"{self.name}: cannot read rows {y0}..{y1 - 1}, columns {x0}.."
                            f"{x1 - 1} ({type(e).__name__}: {e}); the input is damaged or "
                            "truncated: copy or save it again") from e
        if "c" in self.axes:  # the remaining axes keep their stored order: put c last
            order = [x for x in self.axes if x in "cyx"]
            a = np.moveaxis(a, order.index("c"), -1)
        return a

    def fingerprint(self) -> dict:
        d = {"kind": self.kind, "name": self.name, "axes": self.axes,
             "shape": list(self.stored_shape), "dtype": str(self.dtype), "key": self.key}
        if self.kind == "tiff":  # the content, not only the name (chunk_store)
            d["blake2b"] = chunk_store.path_digest(self.path)
        elif self.kind == "zarr":
            d["blake2b"] = chunk_store.path_digest(Path(self.path) / self.key)
        elif self.kind == "array" and isinstance(self._array, np.ndarray):
            d["sha256"] = hashlib.sha256(np.ascontiguousarray(self._array).data).hexdigest()
        elif self.kind == "array":  # an array-like that makes its pixels when sliced
            d["repr"] = repr(self._array)
        return d


def _open_array(src: Source):
    """(array, store to close or None) of a zarr or TIFF source."""
    if src.kind == "zarr":
        zarr = require("zarr")
        return zarr.open_array(src.path, path=src.key or None, mode="r"), None
    if src.kind == "tiff":
        import tifffile

        with tifffile.TiffFile(src.path) as tf:
            contiguous = tf.series[0].dataoffset is not None
        if contiguous:  # uncompressed in one piece: the operating system pages it in
            return tifffile.memmap(src.path, series=0, mode="r"), None
        zarr = require("zarr")
        store = tifffile.imread(src.path, aszarr=True, series=0, level=0)
        return zarr.open_array(store, mode="r"), store
    raise ValueError(f"cannot reopen a source of kind {src.kind!r}")


def _guess_axes(shape, name: str) -> str:
    """Axes of an array without metadata: (Y, X), (Y, X, C) for C in 2..4 after a side > 4,
    (Z, Y, X)."""
    if len(shape) == 2:
        return "yx"
    if len(shape) == 3:
        return "yxc" if shape[-1] in (2, 3, 4) and shape[0] > 4 else "zyx"
    raise ValueError(f"{name}: an array of shape {tuple(shape)} without OME-Zarr axes "
                     "metadata; give a 2-D image, a (Z, Y, X) stack, or OME-Zarr")


def ome_version(text) -> tuple[int, ...]:
    """An OME-Zarr version as numbers, compared as numbers ("0.10" after "0.5", never before
    it as the strings would be): "0.5" -> (0, 5), "0.4.1-dev" -> (0, 4, 1)."""
    parts = []
    for piece in str(text).split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
    return tuple(parts) or (0,)


def _ome_of(attrs: dict) -> dict | None:
    """The first multiscale of OME-Zarr group attributes (0.4: top level; 0.5: under 'ome'),
    with its version; None if there is none."""
    if "ome" in attrs and isinstance(attrs["ome"], dict) and "multiscales" in attrs["ome"]:
        ms = dict(attrs["ome"]["multiscales"][0])
        ms["version"] = attrs["ome"].get("version", "0.5")
        return ms
    if "multiscales" in attrs:
        ms = dict(attrs["multiscales"][0])
        ms.setdefault("version", "0.4")
        return ms
    return None


def open_source(input, name: str | None = None) -> Source:
    """A Source for a path (zarr or OME-Zarr store or array, TIFF, other image), an in-memory
    array ((H, W), (H, W, C) or (Z, H, W)), or an array-like with .shape, .dtype and numpy
    slicing that makes its pixels when sliced (minunet.bench's generated image)."""
    if not isinstance(input, (str, os.PathLike)):
        lazy = hasattr(input, "shape") and hasattr(input, "__getitem__")
        a = input if lazy and not isinstance(input, np.ndarray) else np.asarray(input)
        return Source("array", name or "array", _guess_axes(a.shape, name or "array"),
                      a.shape, a.dtype, array=a)
    path = Path(input)
    name = name or str(path)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if path.is_dir():  # a zarr store
        zarr = require("zarr")
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as e:  # not a zarr store (zarr raises several types)
            raise ValueError(f"{path} is a folder but no zarr array or group "
                             f"({type(e).__name__}: {e})") from e
        if hasattr(node, "shape"):
            return Source("zarr", name, _guess_axes(node.shape, name), node.shape, node.dtype,
                          path=str(path), array=node)
        ome = _ome_of(dict(node.attrs))
        if ome is not None:
            key = ome["datasets"][0]["path"]
            arr = node[key]
            axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].lower()
                           for a in ome["axes"])
            return Source("zarr", name, axes, arr.shape, arr.dtype, path=str(path), key=key,
                          array=arr, ome=ome)
        arrays = [k for k, v in node.members() if hasattr(v, "shape")]
        if len(arrays) != 1:
            raise ValueError(f"{path} is a zarr group with arrays {arrays or 'none'} and no "
                             f"OME-Zarr metadata: name the array, e.g. {path}/"
                             f"{arrays[0] if arrays else 'ARRAY'}")
        arr = node[arrays[0]]
        return Source("zarr", name, _guess_axes(arr.shape, name), arr.shape, arr.dtype,
                      path=str(path), key=arrays[0], array=arr)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                tiff_axes, shape, dtype = series.axes, series.shape, series.dtype
                check_tiff_complete(tf, path)  # before any store is made
        except DataError:
            raise
        except Exception as e:  # tifffile.TiffFileError and friends
            raise DataError(f"{path} is not a readable TIFF ({type(e).__name__}: {e}); copy "
                            "or save it again") from e
        axes = "".join({"Y": "y", "X": "x", "S": "c", "C": "c"}.get(a, a.lower())
                       for a in tiff_axes)
        if axes.count("c") > 1:
            axes = _guess_axes(shape, name)
        return Source("tiff", name, axes, shape, dtype, path=str(path))
    from minunet.data.loaders import read_array

    a = read_array(path)
    return Source("array", name, _guess_axes(a.shape, name), a.shape, a.dtype, array=a)


BAND_BYTES = 64 * 2**20  # rows read at a time by the percentile pass


def _gray_channels(raw: np.ndarray) -> list[np.ndarray]:
    """The channels that predict.to_channels normalises one by one: alpha dropped, (h, w, 1)
    squeezed. (RGB to gray for a one-channel model goes through float luma values, which the
    percentile pass cannot count: refused in `percentile_stats`.)"""
    a = raw
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    return [a] if a.ndim == 2 else [a[..., c] for c in range(a.shape[-1])]


def percentile_stats(src: Source, cfg, normalize: str) -> dict | None:
    """{leading index: [(p_lo, p_hi) per channel]} when `normalize` stretches the input's
    dtype between percentiles; None when it converts value by value."""
    from minunet.data.loaders import DataError, percentile_range, resolved_normalize

    how = resolved_normalize(src.dtype, normalize)
    if not how.startswith("percentile"):
        return None
    lo, hi = percentile_range(how)
    C = src.channels or 1
    have = C - (1 if C in (2, 4) else 0)
    if src.dtype.kind not in "iub" or src.dtype.itemsize > 2 or (
            cfg.in_channels == 1 and have == 3):
        raise DataError(f"{src.name}: normalisation {how} of a {src.dtype} "
                        f"{'colour ' if have == 3 else ''}image can be done chunk by chunk only "
                        "for gray or per-channel integer images of 8 or 16 bits (their gray "
                        "values are counted to find the percentiles); convert the image, or "
                        "predict it in memory (--out FOLDER)")
    H, W = src.shape[-2:]
    band = max(1, BAND_BYTES // max(1, W * C * src.dtype.itemsize))
    offset = -np.iinfo(src.dtype).min if src.dtype.kind == "i" else 0
    bins = 2 ** (8 * src.dtype.itemsize)
    stats = {}
    for lead in np.ndindex(*src.shape[:-2]):
        hists = None
        for y0 in range(0, H, band):
            chans = _gray_channels(src.read(lead, (y0, min(H, y0 + band), 0, W)))
            counts = [np.bincount((c.astype(np.int64) + offset).ravel(), minlength=bins)
                      for c in chans]
            hists = counts if hists is None else [h + c for h, c in zip(hists, counts,
                                                                          strict=True)]
        stats[tuple(int(i) for i in lead)] = [
            tuple(_percentiles_from_counts(h, H * W, (lo, hi), offset)) for h in hists]
    return stats


def _percentiles_from_counts(hist: np.ndarray, n: int, q: tuple, offset: int) -> list:
    """np.percentile(values.astype(float32), q) of n integer values given by their counts
    (value v + offset in bin v + offset), bit for bit: NumPy's linear method interpolates
    between the order statistics floor(v) and floor(v) + 1 at v = (n - 1) q / 100; its own
    quantile of those two values, at the same fraction, does the same arithmetic."""
    cum = np.cumsum(hist)
    out = []
    for v in (n - 1) * np.true_divide(np.asarray(q, dtype=np.float64), 100):
        prev = int(np.floor(v))
        a = np.searchsorted(cum, prev, side="right") - offset
        b = np.searchsorted(cum, min(prev + 1, n - 1), side="right") - offset
        out.append(np.quantile(np.array([a, b], np.float32), v - prev))
    return out


def _ome_attrs(src: Source, pdims: list[str]) -> dict:
    """OME-Zarr multiscales for OUT, in the input's version, with its axes (names, types,
    units) and its level-0 scale and translation for the axes that remain."""
    ome = src.ome
    axes_in = [a if isinstance(a, dict) else {"name": a} for a in ome["axes"]]
    by_letter = {str(a["name"])[0].lower(): (i, a) for i, a in enumerate(axes_in)}
    transforms = ome["datasets"][0].get("coordinateTransformations", [])
    axes, cts = [], []
    for d in pdims:
        if d == "c":
            axes.append({"name": "c", "type": "channel"})
        else:
            axes.append(by_letter[d][1])
    for t in transforms:
        key = t.get("type")
        if key in ("scale", "translation") and key in t:  # not the 'path' form
            fill = 1.0 if key == "scale" else 0.0
            vals = [fill if d == "c" else t[key][by_letter[d][0]] for d in pdims]
            cts.append({"type": t["type"], key: vals})
    if not cts:
        cts = [{"type": "scale", "scale": [1.0] * len(pdims)}]
    ms = {"name": "minunet prediction", "axes": axes,
          "datasets": [{"path": "prob", "coordinateTransformations": cts}],
          "type": "minunet.predict",
          "metadata": {"description": "class probabilities predicted by minunet from "
                                      f"{src.name}"}}
    version = str(ome.get("version", "0.4"))
    if ome_version(version) < (0, 5):
        return {"multiscales": [{"version": version, **ms}]}
    return {"ome": {"version": version, "multiscales": [ms]}}
