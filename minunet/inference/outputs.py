"""What prediction writes and reads: inputs found and read, channels, 8-bit probabilities,
masks, overlays, instance labels, and the model rebuilt from a checkpoint with its
normalisation. The library half of `python -m minunet.predict` (the command is argument
parsing plus calls to this module, minunet/inference/tiles.py and minunet/inference/chunked.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minunet import backend
from minunet.data.loaders import IMAGE_SUFFIXES, DataError, read_array, to_float_image
from minunet.files import atomic_write
from minunet.inference.instances import colour_overlay, label_cells
from minunet.training.checkpoint import (  # noqa: F401  (checkpoint_normalize: predict's)
    checkpoint_normalize,
    load_checkpoint,
    model_from_checkpoint,
)


@dataclass
class Item:
    """One input file: its pages (N, H, W[, C]) as stored, and whether it is a stack."""

    path: Path
    pages: np.ndarray
    stack: bool


def find_inputs(inputs: list[str]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(f for f in path.iterdir()
                           if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(f"{path} is not an image: expected one of "
                                f"{', '.join(IMAGE_SUFFIXES)}")
            files.append(path)
        else:
            raise DataError(f"input {path} does not exist")
    stems = {}
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise DataError(f"{stems[f.stem]} and {f} share the name {f.stem!r}, so their "
                            "outputs would overwrite each other; rename one or run them apart")
        stems[f.stem] = f
    return list(stems.values())


def read_item(path: Path) -> Item:
    """Read a file as pages (N, H, W) or (N, H, W, C); TIFF (N, H, W) with N not in 3..4 is a
    stack, (H, W, 3|4) a colour image."""
    a = read_array(path)  # DataError naming the file if it cannot be decoded
    is_tiff = path.suffix.lower() in (".tif", ".tiff")
    if a.ndim == 2:
        return Item(path, a[None], False)
    if a.ndim == 3 and (not is_tiff or (a.shape[-1] in (2, 3, 4) and a.shape[0] > 4)):
        return Item(path, a[None], False)  # one colour image (H, W, C)
    if a.ndim == 3:
        return Item(path, a, a.shape[0] > 1)  # pages (N, H, W)
    if a.ndim == 4 and is_tiff:
        return Item(path, a, a.shape[0] > 1)  # pages of colour images (N, H, W, C)
    raise DataError(f"{path}: cannot read an image from an array of shape {a.shape}")


def to_channels(page: np.ndarray, in_channels: int, name: str,
                normalize: str = "max") -> np.ndarray:
    """A page (H, W) or (H, W, C) as stored -> (in_channels, H, W) float32 in [0, 1].

    Gray values are normalised as in training (`normalize`, the checkpoint's; see
    loaders.normalize_image); an alpha channel is dropped; RGB becomes gray for a one-channel
    model.
    """
    a = np.asarray(page)
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        a = a[..., :-1]  # drop alpha: gray+alpha -> gray, RGBA -> RGB
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    have = 1 if a.ndim == 2 else a.shape[-1]
    if in_channels == 1 and have in (1, 3):
        return to_float_image(a, name, normalize)[None]  # RGB -> gray (ITU-R 601 luma)
    if have == in_channels:
        chans = [a] if a.ndim == 2 else [a[..., c] for c in range(have)]
        return np.stack([to_float_image(c, name, normalize) for c in chans])
    raise DataError(f"{name} has {have} channel(s) (array shape {page.shape}) but the "
                    f"checkpoint's model expects in_channels={in_channels}; convert the image "
                    f"to {in_channels} channel(s)")


def save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    return atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def save_tiff(path: Path, array: np.ndarray) -> Path:
    import tifffile

    return atomic_write(path, lambda f: tifffile.imwrite(f, array, photometric="minisblack"))


def to_uint8(p: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> 0..255 (round to nearest)."""
    return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)


_PALETTE = np.array([[0, 0, 0], [255, 40, 40], [40, 200, 40], [40, 90, 255], [240, 200, 0],
                     [200, 0, 200], [0, 200, 200], [255, 128, 0]], np.float32)


def overlay(gray: np.ndarray, mask: np.ndarray, n_classes: int) -> np.ndarray:
    """RGB uint8 (H, W, 3): the image in gray; two classes: boundary (mask 0) in red; more
    classes: classes 1.. in colours."""
    rgb = np.repeat((np.clip(gray, 0, 1) * 255.0)[..., None], 3, axis=2).astype(np.float32)
    if n_classes == 2:
        paint, colour = mask == 0, _PALETTE[1]
        rgb[paint] = 0.55 * rgb[paint] + 0.45 * colour
    else:
        for c in range(1, n_classes):
            paint = mask == c
            rgb[paint] = 0.55 * rgb[paint] + 0.45 * _PALETTE[1 + (c - 1) % (len(_PALETTE) - 1)]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def outputs(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(prob map to save, mask) of probs (K, H, W): K = 2: (p_cell (H, W), 255 = cell);
    K > 2: (probs (K, H, W), arg-max class (H, W) uint8)."""
    if probs.shape[0] == 2:
        return probs[1], np.where(probs[1] > threshold, 255, 0).astype(np.uint8)
    return probs, probs.argmax(0).astype(np.uint8)


def check_instance_options(args) -> None:
    """DataError for --split-neck, --min-size or --fill-borders out of range."""
    if not 0.0 <= args.split_neck <= 1.0:
        raise DataError(f"--split-neck must lie in [0, 1], got {args.split_neck}")
    for flag, v in (("--min-size", args.min_size), ("--fill-borders", args.fill_borders)):
        if v < 0:
            raise DataError(f"{flag} must be >= 0, got {v}")


def cell_probability(prob: np.ndarray) -> np.ndarray:
    """P(cell) (H, W) of what `outputs` saves: p_cell (H, W) for two classes; for K classes
    (K, H, W) every class but 0 (background) is cell: 1 - p_0."""
    return prob if prob.ndim == 2 else 1.0 - prob[0]


def save_instances(out: Path, stem: str, stack: bool, grays: list, probs: list, args) -> None:
    """instances/STEM.tif (one page per input page) and instances_overlay/STEM[_k].png."""
    labels = [label_cells(cell_probability(p), args.threshold, args.split_neck, args.min_size,
                          args.fill_borders) for p in probs]
    dtype = np.uint32 if any(lab.dtype == np.uint32 for lab in labels) else np.uint16
    save_tiff(out / "instances" / f"{stem}.tif",
              np.stack(labels).astype(dtype) if stack else labels[0].astype(dtype))
    for k, (gray, lab) in enumerate(zip(grays, labels, strict=True)):
        name = f"{stem}_{k:03d}.png" if stack else f"{stem}.png"
        save_png(out / "instances_overlay" / name, colour_overlay(gray, lab))


def load_model(checkpoint: str, device: str, ckpt=None):
    """The trained model, rebuilt from the checkpoint (architecture, config, parameters and
    buffers; `ckpt`: the checkpoint already read from that path), in eval mode (no dropout),
    on device."""
    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    model = model_from_checkpoint(ckpt, checkpoint)
    try:
        where = backend.resolve_device(device)
    except RuntimeError as e:  # --device cuda without a usable GPU
        raise DataError(str(e)) from e
    model.eval()
    return model.to(where)
