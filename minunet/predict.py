"""Segment images: `python -m minunet.predict --checkpoint CKPT INPUT... --out DIR`.

INPUT is an image file (PNG or TIFF, 8/16-bit or float in [0, 1], gray or RGB), a multi-page TIFF
stack, or a folder of such files. The model is rebuilt from the checkpoint (its architecture,
config, parameters and buffers; minunet/training/checkpoint.py) and run by overlap-tile inference
(minunet/inference/tiles.py) on images of any size. Per image it writes

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

The cells are found in the cell probability (K > 2: 1 - p(class 0)) by
minunet/inference/instances.py: threshold, a seeded watershed on the distance transform that splits
blobs at narrow necks (--split-neck), small blobs dropped (--min-size), separation borders given
back to the cells (--fill-borders). `python -m minunet.evaluate DIR/instances LABELS --instances`
scores them.

Images are brought to [0, 1] as the model's training did: its checkpoint records --normalize
(by default 8-bit images / 255, 16-bit ones stretched between their percentiles 1 and 99.8;
checkpoints from before that option divide by the type's maximum).

Every file is written to a temporary name in its folder and renamed when complete, so an
interrupted run leaves no half-written file.

--out OUT.zarr predicts one INPUT of any size (a zarr or OME-Zarr array, a large TIFF, or any
image above) chunk by chunk into a zarr store, exactly as in memory, resumably, on this machine's
threads or a Dask cluster (--scheduler): see minunet/inference/chunked.py. The store keeps a digest
of the input's bytes and a checksum per chunk: a rerun computes again what was damaged on disk and
refuses an input changed under the same name (--overwrite replaces the store).
--chunk and --overwrite belong to that mode and are refused with a folder --out.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from minunet import backend
from minunet.data.loaders import DataError
from minunet.exits import usage_error
from minunet.inference.chunked import (
    check_chunk,
    min_chunk,
    predict_zarr,
    require,
    small_chunk_message,
)
from minunet.inference.instances import add_instance_options
from minunet.inference.outputs import (
    check_instance_options,
    checkpoint_normalize,
    find_inputs,
    load_checkpoint,
    load_model,
    outputs,
    overlay,
    read_item,
    save_instances,
    save_png,
    save_tiff,
    to_channels,
    to_uint8,
)
from minunet.inference.tiles import (
    auto_tile_halo,
    default_halo,
    inference_geometry,
    predict,
    seam_note,
)

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
                        "store (minunet/inference/chunked.py; needs the scale extra)")
    p.add_argument("--tta", type=int, default=1, choices=TTA_CHOICES,
                   help="test-time augmentation: average over 1 (none), 4 rotations, or 8 "
                        "rotations and flips (default 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run (default auto: the GPU if CuPy sees one)")
    p.add_argument("--tile", type=int, default=None,
                   help="input tile side, a valid U-Net size (e.g. 572); default: chosen from "
                        "free memory (whole image in one pass when it fits)")
    p.add_argument("--batch", type=int, default=1, help="tiles per forward pass (default 1)")
    p.add_argument("--halo", type=int, default=None, metavar="PX",
                   help="padded networks (the family): the overlap around each tile, cropped "
                        "from its output; default: the network's receptive radius rounded up "
                        "to its grid (tiles exact); a smaller one is faster, and the measured "
                        "seam error is printed once (the valid U-Net's margin is its halo)")
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
    zarr_opts = p.add_argument_group(
        "chunked prediction into OUT.zarr (minunet/inference/chunked.py)")
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


# ----------------------------------------------------------------------------- outputs


# ----------------------------------------------------------------------------- main


def run(args) -> int:
    from tqdm import tqdm

    if not 0.0 <= args.threshold <= 1.0:
        raise DataError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.batch < 1:
        raise DataError(f"--batch must be >= 1, got {args.batch}")
    if args.out.rstrip("/\\").lower().endswith(".zarr") or args.scheduler:
        return run_cli(args)  # images of any size, chunk by chunk into zarr
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
    if args.tile is not None and not model.geometry.is_valid(args.tile):
        raise DataError(f"--tile: {model.geometry.invalid_size_message(args.tile)}")
    check_halo(model, args.halo)
    out = Path(args.out)
    print(f"minunet.predict: {backend.device_info()}; {len(files)} file(s) -> {out}",
          file=sys.stderr)
    bar = tqdm(total=len(files), desc="predict", unit="image", disable=None, dynamic_ncols=True)
    written, measured = 0, False
    for path in files:
        item = read_item(path)
        probs_pages, masks, grays = [], [], []
        for k, page in enumerate(item.pages):
            name = f"{path.name}[{k}]" if item.stack else path.name
            x = to_channels(page, cfg.in_channels, name, normalize)  # (C, H, W)
            probs = backend.to_host(predict(model, x, tile=args.tile, batch=args.batch,
                                            tta=args.tta, halo=args.halo)
                                    ).astype(np.float32)  # (K, H, W)
            if not measured:  # an inexact halo: the seam error, measured once
                measured = True
                if (note := seam_of(model, x, args)) is not None:
                    print(f"{name}: {note}", file=sys.stderr)
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


def check_halo(model, halo) -> None:
    """--halo: an integer >= 0, for a padded network only (usage error otherwise)."""
    if halo is not None:
        try:
            inference_geometry(model.geometry, halo)
        except ValueError as e:
            raise DataError(f"--halo: {e}") from e


def seam_of(model, x, args) -> str | None:
    """The seam line of image x (C, H, W) with this run's tile and halo (tiles.seam_note)."""
    from minunet.models import standardize

    if model.geometry.margin > 0 or (args.halo is None and default_halo(model.config) is not None):
        return None  # the valid U-Net, or the default halo: exact
    img = standardize(model.xp.asarray(x, dtype=model.config.dtype))
    shape = img.shape[1:]
    tile, halo = args.tile, args.halo
    if tile is None:
        tile, halo = auto_tile_halo(model, shape, args.batch, halo)
    return seam_note(model, lambda r: img[:, r[0] : r[1], r[2] : r[3]], shape, tile,
                     args.batch, halo)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:  # DataError is a ValueError
        raise usage_error(e) from e


def run_cli(args) -> int:
    """`python -m minunet.predict ... --out OUT.zarr`: chunk by chunk into a zarr store
    (minunet/inference/chunked.py)."""
    for module in ("zarr", "dask") + (("distributed",) if args.scheduler else ()):
        try:
            require(module)
        except ImportError as e:
            raise DataError(str(e)) from e
    if len(args.inputs) != 1:
        raise DataError(f"--out {args.out} takes one INPUT (got {len(args.inputs)}); run once "
                        "per image, or use --out FOLDER for many small images")
    if args.workers < 1:
        raise DataError(f"--workers must be >= 1, got {args.workers}")
    ckpt = load_checkpoint(args.checkpoint)
    model = load_model(args.checkpoint, args.device, ckpt)
    if args.tile is not None and not model.geometry.is_valid(args.tile):
        raise DataError(f"--tile: {model.geometry.invalid_size_message(args.tile)}")
    check_halo(model, args.halo)
    if args.chunk is not None:
        try:
            check_chunk(args.chunk, model.geometry)
        except ValueError as e:
            raise DataError(f"--chunk: {e}") from e
        if args.chunk < min_chunk(model.geometry):  # refused whatever the image (module doc)
            why = small_chunk_message((args.chunk,), (math.inf,), model.geometry)
            raise DataError(f"--chunk: {why}")
    where = (f"a LocalCluster of {args.workers} worker process(es)"
             if args.scheduler == "processes" else args.scheduler
             or f"{args.workers} thread(s) here")
    print(f"minunet.predict: {backend.device_info()}; chunks on {where}", file=sys.stderr)
    summary = predict_zarr(
        model, args.inputs[0], args.out, chunk=args.chunk, tile=args.tile, batch=args.batch,
        tta=args.tta, threshold=args.threshold, mask=args.mask, scheduler=args.scheduler,
        workers=args.workers, device=args.device, normalize=checkpoint_normalize(ckpt),
        overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr), halo=args.halo)
    arrays = "prob, mask" if args.mask else "prob"
    print(f"wrote {summary.computed} chunk(s) ({summary.megapixels:.1f} MP) of {arrays} to "
          f"{summary.out} in {summary.seconds:.1f} s: {summary.mp_per_s:.2f} MP/s"
          + (f"; {summary.skipped} were complete already" if summary.skipped else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

