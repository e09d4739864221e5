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
coloured overlay; --threshold then applies only to --instances.

With --instances it also writes

    DIR/instances/STEM.tif          a label image: 0 = background, 1..N = one id per cell,
                                    16-bit (32-bit beyond 65535 cells); a stack: one page each
    DIR/instances_overlay/STEM.png  the image with each cell in its own colour

The cells are found in the cell probability (K > 2: 1 - p(class 0)) by minunet/instances.py:
threshold, a seeded watershed on the distance transform that splits blobs at narrow necks
(--split-neck), small blobs dropped (--min-size), separation borders given back to the cells
(--fill-borders). `python -m minunet.evaluate DIR/instances LABELS --instances` scores them.

Images are brought to [0, 1] as the model's training did: its checkpoint records --normalize
(by default 8-bit images / 255, 16-bit ones stretched between their percentiles 1 and 99.8;
checkpoints from before that option divide by the type's maximum).

Every file is written to a temporary name in its folder and renamed when complete, so an
interrupted run leaves no half-written file.

--out OUT.zarr predicts one INPUT of any size (a zarr or OME-Zarr array, a large TIFF, or any
image above) chunk by chunk into a zarr store, exactly as in memory, resumably, on this
machine's threads or a Dask cluster (--scheduler): see minunet/chunked.py. The store keeps a
digest of the input's bytes and a checksum per chunk: a rerun computes again what was damaged
on disk and refuses an input changed under the same name (--overwrite replaces the store).
--chunk and --overwrite belong to that mode and are refused with a folder --out.
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
from .instances import add_instance_options, colour_overlay, label_cells
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
                   help="output folder for prob/, mask/ and overlay/ (created if needed); "
                        "OUT.zarr: predict one INPUT of any size chunk by chunk into a zarr "
                        "store (minunet/chunked.py; needs the scale extra)")
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
    p.add_argument("--instances", action="store_true",
                   help="also write instance labels (instances/STEM.tif, 16- or 32-bit: one id "
                        "per cell) and a coloured overlay (instances_overlay/): cells where the "
                        "probability exceeds --threshold, split at narrow necks by a seeded "
                        "watershed on the distance transform")
    add_instance_options(p, "with --instances: ")
    zarr_opts = p.add_argument_group("chunked prediction into OUT.zarr (minunet/chunked.py)")
    zarr_opts.add_argument("--chunk", type=int, default=None,
                           help="output chunk side in px, a multiple of 16 (2^depth), at least "
                                "192 (each chunk also computes the network's 184 px margin); "
                                "default: the multiple of the tile step nearest 1024")
    zarr_opts.add_argument("--mask", action="store_true",
                           help="also write the mask array (p > --threshold: 255, else 0; "
                                "arg-max class for more than two classes)")
    zarr_opts.add_argument("--overwrite", action="store_true",
                           help="replace an existing OUT.zarr made with other settings or from "
                                "an input whose content changed (else refused; a store with "
                                "the same settings and input resumes)")
    zarr_opts.add_argument("--scheduler", default=None, metavar="ADDRESS",
                           help="run the chunks on a dask.distributed cluster: the scheduler's "
                                "address (tcp://HOST:8786), or 'processes' for a local cluster "
                                "of --workers processes; default: this process's threads")
    zarr_opts.add_argument("--workers", type=int, default=2,
                           help="threads (default scheduler) or processes (--scheduler "
                                "processes) that run chunks (default 2)")
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


# ----------------------------------------------------------------------------- instances


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


def checkpoint_normalize(ckpt) -> str:
    """How the checkpoint's model saw its images (TrainConfig.normalize); 'max' for
    checkpoints written before that option existed."""
    train = ckpt.config.get("train")
    return train.get("normalize", "max") if isinstance(train, dict) else "max"


# ----------------------------------------------------------------------------- main


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


def run(args) -> int:
    from tqdm import tqdm

    if not 0.0 <= args.threshold <= 1.0:
        raise DataError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.batch < 1:
        raise DataError(f"--batch must be >= 1, got {args.batch}")
    if args.out.rstrip("/\\").lower().endswith(".zarr") or args.scheduler:
        from .chunked import run_cli  # images of any size, chunk by chunk into zarr

        return run_cli(args)
    for flag, given in (("--chunk", args.chunk is not None), ("--overwrite", args.overwrite)):
        if given:  # said, not ignored: a folder of images has no chunks and is never replaced
            raise DataError(f"{flag} applies to chunked prediction into OUT.zarr; --out "
                            f"{args.out} is a folder: leave {flag} out, or give --out NAME.zarr")
    files = find_inputs(args.inputs)
    check_instance_options(args)
    ckpt = load_checkpoint(args.checkpoint)
    model = load_model(args.checkpoint, args.device, ckpt)
    normalize = checkpoint_normalize(ckpt)
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
            x = to_channels(page, cfg.in_channels, name, normalize)  # (C, H, W)
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
        if args.instances:
            save_instances(out, stem, item.stack, grays, probs_pages, args)
        written += len(item.pages)
        bar.update(1)
    bar.close()
    extra = f", {out}/instances, {out}/instances_overlay" if args.instances else ""
    print(f"wrote {written} prediction(s) to {out}/prob, {out}/mask, {out}/overlay{extra}",
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
