"""Loaders: ISBI 2012 (TIFF stacks or a folder of slices), generic image/mask folders, and the
`load_dataset(spec)` entry point of the training CLI.

Everything comes out in one format (`Sample`): image (H, W) float32 in [0, 1] (RGB converted to
gray; integers brought to [0, 1] as `normalize_image` says: by default 8-bit images divided by
255, 16- and 32-bit images stretched between their percentiles 1 and 99.8), label (H, W) int64
class indices
(ISBI 2012: 1 = cell, 0 = membrane), instances (H, W) int64 or None. Bad input raises `DataError`
(a ValueError) with a message that says what was found and how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .weightmap import instances_to_mask

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
MASK_KINDS = ("binary", "classes", "instances")


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the fix."""


@dataclass
class Sample:
    """One image with its ground truth.

    image:     (H, W) float32 in [0, 1].
    label:     (H, W) int64 class indices (binary: 1 = cell / foreground, 0 = background), or None.
    instances: (H, W) int64 instance ids (0 = background), or None (ISBI: the weight map uses the
               connected components of the cell label).
    name:      where it came from (file stem or slice index), for messages and plots.
    """

    image: np.ndarray
    label: np.ndarray | None
    instances: np.ndarray | None = None
    name: str = ""


@dataclass
class Dataset:
    """Training and validation samples (plus unlabelled test images where the source has them)."""

    train: list[Sample]
    val: list[Sample]
    n_classes: int = 2
    source: str = ""
    test: list[Sample] = field(default_factory=list)
    holdout: list[Sample] = field(default_factory=list)  # labelled, kept out to score afterwards

    def stack(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        """Images (n, H, W) float32 and labels (n, H, W) int64 of a split of equal-size samples."""
        samples = getattr(self, split)
        shapes = {s.image.shape for s in samples}
        if len(shapes) > 1:
            raise DataError(f"{split} images differ in size ({sorted(shapes)}): use the lists")
        return np.stack([s.image for s in samples]), np.stack([s.label for s in samples])


# ----------------------------------------------------------------------------- reading files


def read_array(path: str | Path, mask: bool = False) -> np.ndarray:
    """Pixel array of a PNG or TIFF file as stored: (H, W) or (H, W, C), or (pages, H, W).

    Palette PNGs give their indices when `mask` (class ids, as in many label sets), else colours.
    A file that cannot be decoded raises DataError naming it.
    """
    path = Path(path)
    try:
        a = _read_array(path, mask)
    except DataError:
        raise
    except Exception as e:  # PIL.UnidentifiedImageError, tifffile.TiffFileError, truncated files
        raise DataError(f"{path} is not a readable image ({type(e).__name__}: {e}); "
                        "replace or remove it") from e
    if a.ndim < 2 or a.size == 0:  # tifffile reads some broken files as empty arrays
        raise DataError(f"{path} is not a readable image (it holds no pixels, array shape "
                        f"{a.shape}); replace or remove it")
    return a


def _read_array(path: Path, mask: bool) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tf:
            check_tiff_complete(tf, path)
            return np.asarray(tf.asarray())
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "P":  # palette: keep the indices for masks (class ids), colours otherwise
            return np.asarray(im) if mask else np.asarray(im.convert("RGB"))
        if im.mode == "1":
            return np.asarray(im.convert("L")) > 0
        if im.mode in ("I", "I;16", "I;16B", "I;16L"):
            return np.asarray(im).astype(np.uint16, copy=False)
        return np.asarray(im)


def check_tiff_complete(tf, path) -> None:
    """DataError naming the file if the pixel data of a TIFF's first series (its strips or
    tiles, page by page) run past the end of the file: a truncated copy or download. Reads
    only the file's directories, not its pixels."""
    size = Path(path).stat().st_size
    end = 0
    for page in tf.series[0].pages:
        if page is not None and len(page.dataoffsets):
            end = max(end, int(np.max(np.add(page.dataoffsets, page.databytecounts,
                                              dtype=np.int64))))
    if end > size:
        raise DataError(f"{path} is truncated: its pixel data run to byte {end:,} but the file "
                        f"holds {size:,} bytes; copy or save it again")


# ----------------------------------------------------------------------------- normalisation

# How an image's gray values become [0, 1] (TrainConfig.normalize; recorded in the checkpoint's
# config["train"]["normalize"], so that predict and export do what training did):
#   auto                8-bit (and bool) images: divided by 255 (by the type's maximum);
#                       16- and 32-bit integer images: 'percentile' (their gray values rarely
#                       span the type's range: a 12-bit camera fills 1/16 of it);
#                       float images: kept, they must lie in [0, 1]
#   max                 integers divided by their type's maximum, floats kept (checkpoints
#                       written before the option existed did this)
#   percentile:LO,HI    every image: (x - p_LO) / (p_HI - p_LO), clipped to [0, 1], with p_q its
#                       own q-th percentile ('percentile' alone: 1, 99.8)
NORMALIZE_DEFAULT = "auto"
PERCENTILES = (1.0, 99.8)


def parse_normalize(spec: str) -> tuple[str, tuple[float, float] | None]:
    """'auto' | 'max' | 'percentile[:LO,HI]' -> (kind, (lo, hi) or None); DataError if unknown."""
    kind, _, rest = str(spec).partition(":")
    if kind in ("auto", "max") and not rest:
        return kind, None
    if kind == "percentile":
        if not rest:
            return kind, PERCENTILES
        try:
            lo, hi = (float(v) for v in rest.split(","))
        except ValueError:
            lo = hi = math.nan
        if 0 <= lo < hi <= 100:
            return kind, (lo, hi)
    raise DataError(f"normalisation {spec!r} not understood; use auto, max, percentile or "
                    "percentile:LO,HI with 0 <= LO < HI <= 100 (e.g. percentile:1,99.8)")


def resolved_normalize(dtype, spec: str = NORMALIZE_DEFAULT) -> str:
    """What `spec` does to an image of this dtype: 'max', 'float' (kept as it is) or
    'percentile:LO,HI'."""
    kind, q = parse_normalize(spec)
    dtype = np.dtype(dtype)
    if kind == "auto":
        if dtype.kind in "bf" or (dtype.kind in "iu" and dtype.itemsize == 1):
            kind = "max"
        else:
            kind, q = "percentile", PERCENTILES
    if kind == "max":
        return "float" if dtype.kind == "f" else "max"
    return f"percentile:{q[0]:g},{q[1]:g}"


def percentile_range(how: str) -> tuple[float, float]:
    """(LO, HI) of a resolved normalisation 'percentile:LO,HI' (`resolved_normalize`)."""
    lo, hi = how.partition(":")[2].split(",")
    return float(lo), float(hi)


def stretch(x: np.ndarray, p_lo, p_hi) -> np.ndarray:
    """Float32 gray values x -> (x - p_lo) / (p_hi - p_lo), clipped to [0, 1] (all 0 when
    p_hi == p_lo): the percentile normalisation once the percentiles are known."""
    scale = np.float32(1.0 / (p_hi - p_lo)) if p_hi > p_lo else np.float32(0.0)
    return np.clip((x - np.float32(p_lo)) * scale, 0.0, 1.0)


def normalize_image(a: np.ndarray, spec: str = NORMALIZE_DEFAULT, name: str = "image"):
    """Gray values (any shape) -> float32 in [0, 1] as `spec` says (see NORMALIZE_DEFAULT)."""
    a = np.asarray(a)
    how = resolved_normalize(a.dtype, spec)
    if a.dtype.kind in "fc" and a.size and not np.isfinite(a).all():
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        raise DataError(f"{name}: {bad} of {a.size} pixels are NaN or infinite; replace them "
                        "(with 0, or the image's median) before training or predicting")
    if how.startswith("percentile"):
        x = a.astype(np.float32)
        if x.size and not np.isfinite(x).all():  # a float64 beyond float32's range
            raise DataError(f"{name}: values up to {np.abs(a).max():g} exceed float32's range; "
                            "rescale the image")
        p_lo, p_hi = np.percentile(x, percentile_range(how)) if x.size else (0.0, 1.0)
        return stretch(x, p_lo, p_hi)
    if a.dtype == bool:
        return a.astype(np.float32)
    if how == "max":
        return a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    x = a.astype(np.float32)
    if x.size and (x.min() < 0 or x.max() > 1):
        raise DataError(
            f"{name}: float image with values in [{x.min():g}, {x.max():g}]; "
            "float images must lie in [0, 1] (or save it as 8- or 16-bit integers, or "
            "normalise it by percentiles: --normalize percentile)"
        )
    return x


def to_float_image(array: np.ndarray, name: str = "image",
                   normalize: str = NORMALIZE_DEFAULT) -> np.ndarray:
    """Image array to (H, W) float32 in [0, 1].

    RGB(A) becomes gray with the ITU-R 601 luma weights, then the gray values are normalised as
    `normalize` says (`normalize_image`: by default 8-bit images divided by 255, 16- and 32-bit
    images stretched between their percentiles 1 and 99.8, floats kept in [0, 1]).
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3]  # drop alpha
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise DataError(f"{name}: expected a 2-D gray or RGB image, got shape {a.shape}")
    if a.ndim == 3 and resolved_normalize(a.dtype, normalize).startswith("percentile"):
        return normalize_image(a.astype(np.float32) @ LUMA, normalize, name)  # of the gray
    a = normalize_image(a, normalize, name)  # 'max' or a float image: value by value
    return a @ LUMA if a.ndim == 3 else a  # (H, W, 3) -> (H, W)


LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601: RGB -> gray


def _values(a: np.ndarray, limit: int = 10) -> str:
    v = np.unique(a)
    shown = ", ".join(str(x) for x in v[:limit].tolist())
    return "{" + shown + (f", ... ({v.size} values)" if v.size > limit else "") + "}"


def to_label(
    array: np.ndarray, kind: str, name: str = "mask"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask array to (label (H, W) int64, instances (H, W) int64 or None), checked against `kind`.

    binary:    at most one non-zero value (e.g. {0, 1}, {0, 255}, bool); label = mask != 0.
    classes:   non-negative integer class indices, label = mask.
    instances: non-negative integer ids, 0 = background; label = cells minus the separation
               borders between touching cells (`instances_to_mask`).
    """
    if kind not in MASK_KINDS:
        raise DataError(f"mask kind {kind!r} unknown: use one of {', '.join(MASK_KINDS)}")
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        rgb = a[..., :3]
        gray = np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        if not gray:
            raise DataError(
                f"{name}: colour mask (shape {a.shape}); save masks as single-channel images "
                "with one integer value per class or instance"
            )
        a = rgb[..., 0]
    if a.ndim != 2:
        raise DataError(f"{name}: expected a 2-D mask, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise DataError(f"{name}: mask values must be integers, found {_values(a)}")
    if a.size and a.min() < 0:
        raise DataError(f"{name}: negative mask values found {_values(a)}; ids must be >= 0")
    a = a.astype(np.int64)
    if kind == "binary":
        nonzero = np.unique(a[a != 0])
        if nonzero.size > 1:
            hint = "use mask kind 'classes' or 'instances'"
            raise DataError(f"{name}: a binary mask has at most one non-zero value, found "
                            f"{_values(a)}; {hint}")
        return (a != 0).astype(np.int64), None
    if kind == "classes":
        v = np.unique(a)
        if v.size == 2 and v[0] == 0 and v[1] in (255, 65535):
            raise DataError(f"{name}: class-index mask with values {_values(a)} looks binary; "
                            "use mask kind 'binary' (or store classes as 0..K-1)")
        if v[-1] > 255:
            raise DataError(f"{name}: class-index mask with values up to {v[-1]} ({_values(a)}); "
                            "is it an instance map? use mask kind 'instances'")
        return a, None
    ids = np.unique(a[a != 0])
    if ids.size == 1:  # one id: one cell, or a binary mask of many cells
        from scipy import ndimage

        n = ndimage.label(a != 0, structure=np.ones((3, 3)))[1]
        if n > 1:
            raise DataError(f"{name}: an instance mask gives every cell its own id, but this one "
                            f"has the single value {ids[0]} on {n} separate objects: it looks "
                            "binary; use mask kind 'binary', or label the cells 1, 2, 3, ...")
    return instances_to_mask(a), a


MAX_CLASSES = 32  # more class indices than this in --mask-kind classes masks: a gray image?


def check_class_indices(values: np.ndarray, where) -> None:
    """DataError unless the class indices `values` found in all masks are 0..K-1 with K <=
    MAX_CLASSES: a K-class model learns every class, and masks with many gray values (an image,
    or instance ids) are not class indices."""
    k = int(values.max()) + 1
    if values.size > MAX_CLASSES:
        raise DataError(f"{where}: the masks hold {values.size} different values "
                        f"{_values(values)}, more than {MAX_CLASSES} classes: are they gray "
                        "images or instance ids? use --mask-kind instances, or store class "
                        "indices 0..K-1")
    missing = sorted(set(range(k)) - set(values.tolist()))
    if missing:
        raise DataError(f"{where}: class indices {_values(values)} leave out "
                        f"{', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}"
                        f": with --mask-kind classes the masks hold 0..K-1, each class in some "
                        "mask; renumber the classes")


# ----------------------------------------------------------------------------- splits


def isbi_default_split(n: int) -> tuple[list[int], list[int]]:
    """(validation, held-out) slices of an ISBI 2012 stack of n when neither is given: the
    protocol of docs/DESIGN.md, "ISBI 2012 protocol". The last sixth (rounded) is held out for
    scoring, never trained on nor used to choose a checkpoint; the round(n/15) slices before it
    choose best.npz; the rest train. 30 slices: train 00-22, validation 23-24, scored 25-29.
    Each part keeps at least one slice while one is left to train on."""
    test = max(1, round(n / 6)) if n > 2 else 0
    val = max(1, round(n / 15)) if n - test > 1 else 0
    return list(range(n - test - val, n - test)), list(range(n - test, n))


def split_indices(n: int, val, holdout=()) -> tuple[list[int], list[int]]:
    """Train and validation indices of n items, none of them in `holdout`.

    val: a sequence of indices (held out as given), a fraction 0 <= f < 1 (the last round(f*m)
    of the m items not in `holdout`, at least one when f > 0 and m > 1; none of a single item),
    an int count (the last `val` of them), or None (none held out).
    holdout: indices kept out of both (labelled images to score afterwards).
    The last items rather than random ones: neighbouring EM sections are correlated, so a
    contiguous block keeps validation honest.
    """
    out = {int(i) for i in holdout}
    bad = sorted(i for i in out if not 0 <= i < n)
    if bad:
        raise DataError(f"held-out indices {bad} out of range for {n} images (0..{n - 1})")
    pool = [i for i in range(n) if i not in out]
    m = len(pool)
    if val is None:
        held = []
    elif isinstance(val, float):
        if not 0.0 <= val < 1.0:
            raise DataError(f"validation fraction {val} must lie in [0, 1)")
        k = 0 if val == 0 or m < 2 else max(1, round(val * m))  # never all of them by default
        held = pool[m - k:]
    elif isinstance(val, int | np.integer):
        if not 0 <= val < m:
            raise DataError(f"validation count {val} must lie in [0, {m - 1}] for {m} images")
        held = pool[m - int(val):]
    else:
        held = sorted({int(i) for i in val})
        bad = [i for i in held if not 0 <= i < n]
        if bad:
            raise DataError(f"validation indices {bad} out of range for {n} images (0..{n - 1})")
        both = sorted(set(held) & out)
        if both:
            raise DataError(f"images {both} are both validation and held out; give each "
                            "image one role (--val, --holdout)")
    taken = set(held)
    train = [i for i in pool if i not in taken]
    if not train:
        raise DataError(f"validation and held-out images take all {n} images; hold out fewer")
    return train, held


# ----------------------------------------------------------------------------- ISBI 2012


def _isbi_label(lab: np.ndarray, name: str) -> np.ndarray:
    """ISBI label (255 = cell, 0 = membrane; {0, 1} also accepted) to int64 1 = cell."""
    v = np.unique(lab)
    if not (set(v.tolist()) <= {0, 255} or set(v.tolist()) <= {0, 1}):
        raise DataError(f"{name}: ISBI 2012 labels are binary {{0, 255}}, found {_values(lab)}; "
                        "for other masks use 'folder:PATH' with a mask kind")
    return (lab != 0).astype(np.int64)


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} {str(path)!r} does not exist; check the path")
    return path


def load_isbi2012(path: str | Path, val=None, normalize: str = NORMALIZE_DEFAULT,
                  holdout=None) -> Dataset:
    """ISBI 2012 training slices with validation and held-out slices, plus the test slices if
    present.

    path: a folder with images/NN.png + labels/NN.png (+ test/NN.png), or one with the original
    stacks train-volume.tif + train-labels.tif (+ test-volume.tif), or train-volume.tif itself.
    val:  validation slices, which choose best.npz (see `split_indices`); None: the default of
          `isbi_default_split` (of 30: 23, 24) less any in `holdout`.
    holdout: slices kept out of training and validation, to be scored afterwards; None: the
          default of `isbi_default_split` (of 30: 25..29) less any in `val`.
    Labels: 1 = cell (255 in the files), 0 = membrane; instances None (connected components are
    taken by the weight map).
    """
    path = _require_dir(Path(path), "ISBI 2012 path")
    root = path.parent if path.is_file() else path
    if (root / "train-volume.tif").exists():
        if not (root / "train-labels.tif").exists():
            raise DataError(f"{root}: train-volume.tif without train-labels.tif next to it")
        images = read_array(root / "train-volume.tif")
        labels = read_array(root / "train-labels.tif", mask=True)
        if images.ndim == 2:
            images, labels = images[None], labels[None]
        if images.shape != labels.shape:
            raise DataError(f"train-volume.tif {images.shape} and train-labels.tif "
                            f"{labels.shape} differ in shape")
        names = [f"slice {i}" for i in range(len(images))]
        test_path = root / "test-volume.tif"
        test = read_array(test_path) if test_path.exists() else np.zeros((0, 1, 1), np.uint8)
        test_images = list(test if test.ndim == 3 else test[None])
    elif (root / "images").is_dir() and (root / "labels").is_dir():
        pairs = _pair_files(root / "images", root / "labels")
        images = [read_array(a) for a, _ in pairs]
        labels = [read_array(b, mask=True) for _, b in pairs]
        for (a, b), im, lab in zip(pairs, images, labels, strict=True):
            _check_same_size(im, lab, a, b)
        names = [a.stem for a, _ in pairs]
        test_images = [read_array(f) for f in _image_files(root / "test")] \
            if (root / "test").is_dir() else []
    else:
        raise DataError(
            f"{root}: not an ISBI 2012 folder; expected images/ and labels/ subfolders of "
            "slices, or train-volume.tif and train-labels.tif"
        )
    samples = [
        Sample(to_float_image(im, n, normalize), _isbi_label(lab, n), None, n)
        for im, lab, n in zip(images, labels, names, strict=True)
    ]
    default_val, default_out = isbi_default_split(len(samples))
    given_val = set() if val is None or isinstance(val, int | float) else set(val)
    if holdout is None:
        holdout = [i for i in default_out if i not in given_val]
    if val is None:
        val = [i for i in default_val if i not in set(holdout)]
    train, held = split_indices(len(samples), val, holdout)
    test = [Sample(to_float_image(t, f"test {i}", normalize), None, None, f"test {i}")
            for i, t in enumerate(test_images)]
    return Dataset([samples[i] for i in train], [samples[i] for i in held], 2, f"isbi2012:{path}",
                   test, [samples[i] for i in sorted(set(holdout))])


# ----------------------------------------------------------------------------- generic folders


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def files_by_stem(folder: Path, what: str = "images") -> dict[str, Path]:
    """Image files of a folder keyed by file name without extension; errors for none or twins."""
    found = _image_files(folder)
    if not found:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)} files) for the "
                        f"{what}; "
                        "put the files there or point to another folder")
    by_stem: dict[str, Path] = {}
    for f in found:
        if f.stem in by_stem:
            raise DataError(f"two files in {folder} share the name {f.stem!r}: "
                            f"{by_stem[f.stem].name} and {f.name}; keep one")
        by_stem[f.stem] = f
    return by_stem


def pair_by_stem(dir_a: Path, dir_b: Path, a: str = "images",
                 b: str = "masks") -> list[tuple[str, Path, Path]]:
    """(stem, file in dir_a, file in dir_b) for files paired by name; errors list the unpaired.

    a, b: what the two folders hold, for the messages ("images", "masks").
    """
    fa, fb = files_by_stem(dir_a, a), files_by_stem(dir_b, b)
    only_a, only_b = sorted(set(fa) - set(fb)), sorted(set(fb) - set(fa))
    if only_a or only_b:
        msg = [f"{a} and {b} are paired by file name (without extension), but"]
        if only_a:
            msg.append(f"  {a} without a partner in {dir_b}: {', '.join(only_a)}")
        if only_b:
            msg.append(f"  {b} without a partner in {dir_a}: {', '.join(only_b)}")
        msg.append("rename or remove these files")
        raise DataError("\n".join(msg))
    return [(stem, fa[stem], fb[stem]) for stem in sorted(fa)]


def _pair_files(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs matched by file stem; errors list what is missing."""
    return [(i, m) for _, i, m in pair_by_stem(image_dir, mask_dir, "images", "masks")]


def _check_same_size(image: np.ndarray, mask: np.ndarray, image_file: Path, mask_file: Path):
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"size mismatch: image {image_file.name} is {image.shape[0]}x{image.shape[1]} "
            f"(shape {image.shape}) but mask {mask_file.name} is {mask.shape[0]}x{mask.shape[1]} "
            f"(shape {mask.shape}); resize or crop one to match"
        )


def find_mask_dir(root: Path) -> Path:
    """The mask folder of a dataset folder: masks/ or labels/."""
    found = [root / d for d in ("masks", "labels") if (root / d).is_dir()]
    if len(found) != 1:
        what = "both masks/ and labels/" if found else "no masks/ or labels/ subfolder"
        raise DataError(f"{root}: found {what}; a dataset folder holds images/ and one of "
                        "masks/ or labels/")
    return found[0]


def load_folder(
    path: str | Path,
    mask_kind: str = "binary",
    val=0.2,
    image_dir: str = "images",
    mask_dir: str | None = None,
    normalize: str = NORMALIZE_DEFAULT,
    holdout=(),
) -> Dataset:
    """A folder of images and masks paired by file stem.

    path:      folder with images/ and masks/ (or labels/); PNG or TIFF, 8- or 16-bit, gray or RGB.
    mask_kind: 'binary' (one non-zero value = foreground), 'classes' (class indices 0..K-1) or
               'instances' (instance ids, 0 = background; touching cells get separation borders).
    val:       validation samples (see `split_indices`), default the last 20 % in name order.
    holdout:   indices (in name order) kept out of training and validation.
    normalize: how images become [0, 1] (`normalize_image`; by default 16-bit images by their
               percentiles 1 and 99.8).
    """
    if mask_kind not in MASK_KINDS:
        raise DataError(f"mask kind {mask_kind!r} unknown: use one of {', '.join(MASK_KINDS)}")
    root = _require_dir(Path(path), "dataset folder")
    images_path = _require_dir(root / image_dir, "image folder")
    masks_path = find_mask_dir(root) if mask_dir is None else _require_dir(root / mask_dir,
                                                                          "mask folder")
    samples = []
    for image_file, mask_file in _pair_files(images_path, masks_path):
        image, mask = read_array(image_file), read_array(mask_file, mask=True)
        _check_same_size(image, mask, image_file, mask_file)
        label, instances = to_label(mask, mask_kind, mask_file.name)
        samples.append(Sample(to_float_image(image, image_file.name, normalize), label, instances,
                              image_file.stem))
    n_classes = max(2, max(int(s.label.max()) for s in samples) + 1)
    if mask_kind == "classes":
        check_class_indices(np.unique(np.concatenate([np.unique(s.label) for s in samples])),
                            masks_path)
    train, held = split_indices(len(samples), val, holdout)
    return Dataset([samples[i] for i in train], [samples[i] for i in held], n_classes,
                   f"folder:{path}", holdout=[samples[i] for i in sorted(set(holdout))])


# ----------------------------------------------------------------------------- synthetic


def load_synthetic(n: int = 30, size: int = 512, seed: int = 0, val=5, kind: str = "em",
                   normalize: str = NORMALIZE_DEFAULT, holdout=()) -> Dataset:
    """Built-in synthetic data: `synthetic_em` slices (kind 'em') or `touching_cells` ('cells')."""
    from tqdm import tqdm

    from .synthetic import synthetic_em, touching_cells

    samples = []
    for i in tqdm(range(n), desc=f"synthetic {kind}", unit="slice", disable=None, leave=False):
        if kind == "em":
            s = synthetic_em(size, seed=(seed, i))
            samples.append(Sample(to_float_image(s.image, normalize=normalize),
                                  (s.label > 0).astype(np.int64),
                                  s.instances.astype(np.int64), f"synthetic {i}"))
        elif kind == "cells":
            c = touching_cells(size, seed=(seed, i))
            samples.append(Sample(to_float_image(c.image, normalize=normalize),
                                  (c.mask > 0).astype(np.int64),
                                  c.instances.astype(np.int64), f"cells {i}"))
        else:
            raise DataError(f"synthetic kind {kind!r} unknown: use 'em' or 'cells'")
    train, held = split_indices(n, val, holdout)
    return Dataset([samples[i] for i in train], [samples[i] for i in held], 2,
                   f"synthetic:{kind}", holdout=[samples[i] for i in sorted(set(holdout))])


def _parse_options(text: str, allowed: dict) -> dict:
    """'n=8,size=256' -> {'n': 8, 'size': 256}, typed like the defaults in `allowed`."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            keys = ", ".join(f"{k}=..." for k in allowed)
            raise DataError(f"synthetic option {part!r} not understood; use {keys}, "
                            "e.g. synthetic:n=8,size=256")
        out[key] = type(allowed[key])(value)
    return out


def load_dataset(spec: str, val=None, mask_kind: str = "binary",
                 normalize: str = NORMALIZE_DEFAULT, holdout=None) -> Dataset:
    """The training CLI's data spec to a Dataset.

    spec: 'synthetic' or 'synthetic:n=30,size=512,seed=0' (EM-like slices),
          'cells' or 'cells:n=..,size=..,seed=..' (touching cells, instance labels),
          'isbi2012:PATH' (ISBI 2012 slices or stacks), 'folder:PATH' (images/ + masks/ or labels/).
    val:  validation, which chooses best.npz (indices, fraction or count; see `split_indices`);
          None takes the default of the source (ISBI: of 30 slices 23, 24; folders: the last
          20 %; synthetic: the last sixth rounded up, 1 to 5).
    holdout: indices kept out of training and validation, to score afterwards; None takes the
          default of the source (ISBI: the last sixth, of 30 slices 25..29; others: none).
    mask_kind: for 'folder': 'binary', 'classes' or 'instances' (what the masks hold); the
          other sources know their masks ('cells' takes 'instances' too, as it has them).
    normalize: how images become [0, 1] (`normalize_image`).
    """
    kind, _, rest = spec.partition(":")
    parse_normalize(normalize)  # DataError if not understood
    if mask_kind not in MASK_KINDS:
        raise DataError(f"mask kind {mask_kind!r} unknown: use one of {', '.join(MASK_KINDS)}")
    own = {"synthetic": "binary", "isbi2012": "binary", "cells": "instances"}.get(kind)
    if own and mask_kind not in ("binary", own):
        raise DataError(f"mask kind {mask_kind!r} does not fit {kind} data, whose masks are "
                        f"{own}; --mask-kind is for folder:PATH data")
    if kind in ("synthetic", "cells"):
        defaults = {"n": 30, "size": 512, "seed": 0}
        opts = {**defaults, **_parse_options(rest, defaults)}
        n = opts["n"]
        if n < 2:
            raise DataError(f"{kind}: need n >= 2 (one to train, one to validate), got {n}")
        v = (min(5, max(1, math.ceil(n / 6))) if val is None else val)
        return load_synthetic(opts["n"], opts["size"], opts["seed"], v,
                              "em" if kind == "synthetic" else "cells", normalize,
                              holdout or ())
    if kind in ("isbi2012", "folder") and not rest:
        raise DataError(f"data spec {spec!r} needs a path: {kind}:PATH")
    if kind == "isbi2012":
        return load_isbi2012(rest, val, normalize, holdout)
    if kind == "folder":
        return load_folder(rest, mask_kind, 0.2 if val is None else val, normalize=normalize,
                           holdout=holdout or ())
    raise DataError(f"data spec {spec!r} not understood; use one of: synthetic, "
                    "synthetic:n=30,size=512, cells, isbi2012:PATH, folder:PATH")


def _indices(text: str, flag: str) -> list[int]:
    """'25,26' -> [25, 26], '25-29' -> [25, ..., 29], '7' -> [7]; a DataError naming `flag` for
    a reversed range, an index given twice or a list with no index in it."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, dash, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi if dash else lo)
        except ValueError:
            raise DataError(f"{flag} {text!r} not understood: give image indices '25,26,27', a "
                            "range '25-29' or 'none'") from None
        if last < first:
            raise DataError(f"{flag} {text!r}: the range {part} runs backwards; write it "
                            f"{last}-{first}")
        out += range(first, last + 1)
    twice = sorted({i for i in out if out.count(i) > 1})
    if twice:
        raise DataError(f"{flag} {text!r} names image(s) {', '.join(map(str, twice))} more than "
                        "once; give each index once")
    return out


def as_index_list(val: str | Sequence[int] | float | None, flag: str = "--val"):
    """Parse a CLI --val value: '25,26,27' -> [25, 26, 27], '23-24' -> [23, 24], '0.2' -> 0.2,
    '5' -> 5, 'none' -> [] (no image), '' -> None (the source's default). Reversed ranges,
    repeated indices and lists with nothing in them are DataErrors."""
    if val is None or isinstance(val, int | float | list | tuple):
        return val
    text = val.strip()
    if not text:
        return None
    if text.lower() == "none":
        return []
    if "," in text or "-" in text.lstrip("-"):
        return _indices(text, flag)
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise DataError(f"{flag} {val!r} not understood: give slice indices '25,26,27', a "
                        "range '23-24', a fraction '0.2' or a count '5'") from None


def as_holdout(text: str | Sequence[int] | None) -> list[int] | None:
    """Parse a CLI --holdout value: '25,26' -> [25, 26], '25-29' -> [25, ..., 29], '7' -> [7],
    'none' -> [], '' -> None (the source's default). Reversed ranges, repeated indices and lists
    with nothing in them are DataErrors."""
    if text is None or isinstance(text, list | tuple):
        return None if text is None else list(text)
    if not text.strip():
        return None
    return [] if text.strip().lower() == "none" else _indices(text.strip(), "--holdout")
