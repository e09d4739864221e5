"""Segment images: `python -m minunet.predict --checkpoint CKPT INPUT... --out DIR`.

INPUT is an image file (PNG or TIFF, 8/16-bit or float in [0, 1], gray or RGB), a multi-page
TIFF stack, or a folder of such files. The model is rebuilt from the checkpoint (its
architecture, config, parameters and buffers; minunet/checkpoint.py) and run by overlap-tile
inference (minunet/infer.py) on images of any size. Per image it writes

    DIR/prob/STEM.png      probability of 'cell' (class 1), 8-bit: round(255 p)
                           (--float: DIR/prob/STEM.tif, float32 in [0, 1])
    DIR/mask/STEM.png      p > --threshold: 255 = cell, 0 = boundary (the ISBI convention)
    DIR/overlay/STEM.png   the image in gray with the predicted boundary in red, to look at

A multi-page stack gives one multi-page TIFF each for prob and mask (STEM.tif) and one overlay
PNG per page (STEM_000.png, ...). `python -m minunet.evaluate DIR/prob LABELS` scores the
probabilities. A model with more than two classes writes all class probabilities
(prob/STEM.tif, pages = classes), the arg-max class per pixel as the mask (0..K-1), and a
coloured overlay; --threshold then does not apply.

Every file is written to a temporary name in its folder and renamed when complete, so an
interrupted run leaves no half-written file.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backend
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data.loaders import IMAGE_SUFFIXES, DataError, read_array, to_float_image
from .files import atomic_write
from .infer import predict
from .sizes import invalid_size_message, is_valid_size

TTA_CHOICES = (1, 4, 8)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minunet.predict",
        description="Predict cell probabilities, masks and overlays with a trained U-Net "
                    "(overlap-tile inference on images of any size).")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (PNG, TIFF, multi-page TIFF stacks) or folders of them")
    p.add_argument("--checkpoint", required=True,
                   help="a .npz written by python -m minunet.train (RUN/best.npz or last.npz)")
    p.add_argument("--out", required=True,
                   help="output folder for prob/, mask/ and overlay/ (created if needed)")
    p.add_argument("--tta", type=int, default=1, choices=TTA_CHOICES,
                   help="test-time augmentation: average over 1 (none), 4 rotations, or 8 "
                        "rotations and flips (default 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run (default auto: the GPU if CuPy sees one)")
    p.add_argument("--tile", type=int, default=None,
                   help="input tile side, a valid U-Net size (e.g. 572); default: chosen from "
                        "free memory (whole image in one pass when it fits)")
    p.add_argument("--batch", type=int, default=1, help="tiles per forward pass (default 1)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="cell probability above which a pixel is 'cell' in the mask (default 0.5)")
    p.add_argument("--float", dest="float_prob", action="store_true",
                   help="write probabilities as float32 TIFF instead of 8-bit PNG")
    return p


# ----------------------------------------------------------------------------- inputs


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


def to_channels(page: np.ndarray, in_channels: int, name: str) -> np.ndarray:
    """A page (H, W) or (H, W, C) as stored -> (in_channels, H, W) float32 in [0, 1].

    Integers are divided by their dtype's maximum, as in training (loaders.to_float_image);
    an alpha channel is dropped; RGB becomes gray for a one-channel model.
    """
    a = np.asarray(page)
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        a = a[..., :-1]  # drop alpha: gray+alpha -> gray, RGBA -> RGB
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    have = 1 if a.ndim == 2 else a.shape[-1]
    if in_channels == 1 and have in (1, 3):
        return to_float_image(a, name)[None]  # RGB -> gray (ITU-R 601 luma)
    if have == in_channels:
        chans = [a] if a.ndim == 2 else [a[..., c] for c in range(have)]
        return np.stack([to_float_image(c, name) for c in chans])
    raise DataError(f"{name} has {have} channel(s) (array shape {page.shape}) but the "
                    f"checkpoint's model expects in_channels={in_channels}; convert the image "
                    f"to {in_channels} channel(s)")


# ----------------------------------------------------------------------------- outputs


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


# ----------------------------------------------------------------------------- main


def load_model(checkpoint: str, device: str):
    """The trained model, rebuilt from the checkpoint (architecture, config, parameters and
    buffers), in eval mode (no dropout), on device."""
    model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    try:
        where = backend.resolve_device(device)
    except RuntimeError as e:  # --device cuda without a usable GPU
        raise DataError(str(e)) from e
    model.eval()
    return model.to(where)


def run(args) -> int:
    from tqdm import tqdm

    if not 0.0 <= args.threshold <= 1.0:
        raise DataError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.batch < 1:
        raise DataError(f"--batch must be >= 1, got {args.batch}")
    files = find_inputs(args.inputs)
    model = load_model(args.checkpoint, args.device)
    cfg = model.config
    if args.tile is not None and not is_valid_size(args.tile, cfg.depth):
        raise DataError(f"--tile: {invalid_size_message(args.tile, cfg.depth)}")
    out = Path(args.out)
    print(f"minunet.predict: {backend.device_info()}; {len(files)} file(s) -> {out}",
          file=sys.stderr)
    bar = tqdm(total=len(files), desc="predict", unit="image", disable=None, dynamic_ncols=True)
    written = 0
    for path in files:
        item = read_item(path)
        probs_pages, masks, grays = [], [], []
        for k, page in enumerate(item.pages):
            name = f"{path.name}[{k}]" if item.stack else path.name
            x = to_channels(page, cfg.in_channels, name)  # (C, H, W)
            probs = backend.to_host(predict(model, x, tile=args.tile, batch=args.batch,
                                            tta=args.tta)).astype(np.float32)  # (K, H, W)
            prob, mask = outputs(probs, args.threshold)
            probs_pages.append(prob)
            masks.append(mask)
            grays.append(x.mean(0))
        stem = path.stem
        if item.stack or cfg.n_classes > 2 or args.float_prob:
            prob = np.stack(probs_pages) if item.stack else probs_pages[0]
            save_tiff(out / "prob" / f"{stem}.tif",
                      prob.astype(np.float32) if args.float_prob else to_uint8(prob))
        else:
            save_png(out / "prob" / f"{stem}.png", to_uint8(probs_pages[0]))
        if item.stack:
            save_tiff(out / "mask" / f"{stem}.tif", np.stack(masks))
        else:
            save_png(out / "mask" / f"{stem}.png", masks[0])
        for k, (gray, mask) in enumerate(zip(grays, masks, strict=True)):
            name = f"{stem}_{k:03d}.png" if item.stack else f"{stem}.png"
            save_png(out / "overlay" / name, overlay(gray, mask, cfg.n_classes))
        written += len(item.pages)
        bar.update(1)
    bar.close()
    print(f"wrote {written} prediction(s) to {out}/prob, {out}/mask, {out}/overlay",
          file=sys.stderr)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        raise SystemExit(f"error: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
