"""Export a trained model where microscopists work:
`python -m minunet.export --checkpoint CKPT --to onnx|safetensors|bioimageio --out PATH`.

    onnx          the U-Net as an ONNX graph built by hand from the trained weights (onnx.helper;
                  no PyTorch): any valid input size (dynamic batch, height and width; the skips'
                  centre-crop offsets computed in the graph from the tensors' shapes), softmax
                  output. Runs in onnxruntime, Fiji/deepImageJ, ilastik, any ONNX runtime.
    safetensors   the parameters under the contract's names and PyTorch's layouts
                  (docs/DESIGN.md, "Parameter names and layouts": Conv2d (Cout, Cin, k, k),
                  ConvTranspose2d (Cin, Cout, 2, 2)), float32, with the model config, the
                  architecture and the input normalisation as metadata.
    bioimageio    a bioimage.io model package (model description format 0.5): rdf.yaml, the
                  ONNX weights, with torch installed also `pytorch_state_dict` weights (the same
                  parameters, loaded by the stand-alone module minunet/exporters/bioimageio_torch.py
                  that goes with them; the spec has no safetensors weights format, so the
                  safetensors file rides along as an attachment), a test input and its expected
                  output (.npy), a cover image and documentation (README.md). --out PATH.zip writes
                  the zipped package, any other PATH a folder. When the bioimageio.spec package is
                  installed the package is validated before it is written (offline: all its files
                  are local).

The ONNX graph's contract (and the package's):

    input   "input"  float32 (N, C, H, W), the image in [0, 1] as minunet's training saw it
            (after the checkpoint's normalisation, TrainConfig.normalize); H and W valid sizes:
            min + k * step (188 + 16k at depth 4, `minunet.models.sizes`)
    output  "output" float32 (N, K, H - 184, W - 184), class probabilities (softmax over K),
            the centre of the input (92 px of context consumed on every side)

The standardisation (x - 0.5) / 0.25 of `minunet.models.unet.standardize` is INSIDE the graph (its
first two nodes, Sub and Mul), so the ONNX model takes images in [0, 1] as they are. The
bioimage.io package's preprocessing brings the raw image to [0, 1] as training did: 8-bit
images divided by 255 (scale_linear), 16-bit ones by their percentiles (scale_range, then clip
to [0, 1]), and leaves the standardisation to the graph.

Every file is written atomically; an --out that exists is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minunet.exits import usage_error
from minunet.exporters.bioimageio import (
    FORMAT_VERSION,
    _refuse_existing,
    export_bioimageio,
    minunet_probabilities,
    quiet_bioimageio,
    relative_difference,
)
from minunet.exporters.onnx import OPSET, check_onnx, onnx_model, run_onnx, save_onnx
from minunet.exporters.safetensors import export_metadata, float32_params, safetensors_bytes
from minunet.files import atomic_write, check_writable
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint

__all__ = ["build_parser", "check_onnx", "float32_params", "load_for_export", "main",
           "minunet_probabilities", "onnx_model", "quiet_bioimageio", "relative_difference",
           "run", "run_onnx"]

TARGETS = ("onnx", "safetensors", "bioimageio")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m minunet.export",
        description="Export a trained U-Net: ONNX (built by hand, any valid input size), "
                    "safetensors (PyTorch names and layouts), or a bioimage.io model package.")
    p.add_argument("--checkpoint", required=True,
                   help="a .npz written by python -m minunet.train (RUN/best.npz or last.npz)")
    p.add_argument("--to", required=True, choices=TARGETS, help="what to write")
    p.add_argument("--out", required=True,
                   help="the file (model.onnx, model.safetensors) or, for bioimageio, a folder "
                        "or a .zip; refused if it exists, unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--sample", default=None, metavar="IMAGE",
                   help="bioimageio: the gray image for the test input and the cover (default: "
                        "the first training image, or a synthetic one for synthetic data)")
    p.add_argument("--name", default=None,
                   help="bioimageio: the model's name (letters, digits, spaces, _+-()); "
                        "default from the training data")
    p.add_argument("--author", action="append", default=None,
                   help="bioimageio: an author's name (repeat for several; default: 'minunet "
                        "user')")
    return p


# ----------------------------------------------------------------------------- the model


def load_for_export(path: str):
    """(checkpoint, model in eval mode) of a minunet checkpoint; ValueError naming the problem
    (not a checkpoint, corrupt, an unknown architecture, a config that does not fit)."""
    ckpt = load_checkpoint(path)  # any architecture of the registry
    model = model_from_checkpoint(ckpt, path)
    return ckpt, model.eval()


# ----------------------------------------------------------------------------- ONNX


# ----------------------------------------------------------------------------- safetensors


# ----------------------------------------------------------------------------- bioimage.io


    # the raw type (bioimage.io 0.5 adds a final cast to data.type)


# ----------------------------------------------------------------------------- main


def run(args) -> int:
    out = Path(args.out)
    check_writable(out, "--out", file=True)
    _refuse_existing(out, args.overwrite)
    if args.to == "bioimageio" or args.to == "onnx":
        _require("onnx", "the ONNX export")
    if args.to in ("bioimageio", "safetensors"):
        _require("safetensors", "the safetensors export")
    ckpt, model = load_for_export(args.checkpoint)
    cfg = model.config
    if args.to == "onnx":
        meta = export_metadata(ckpt, cfg)
        proto = onnx_model(model, float32_params(model),
                           metadata={"minunet." + k: v for k, v in meta.items()})
        check_onnx(proto)
        save_onnx(proto, out)
        g = model.geometry
        print(f"wrote {out}: ONNX opset {OPSET}, input (N, {cfg.in_channels}, H, W) in [0, 1] "
              f"with H, W = {g.rule()}, output (N, {cfg.n_classes}, H - "
              f"{g.margin}, W - {g.margin}) probabilities; "
              "onnx.checker passed")
    elif args.to == "safetensors":
        data = safetensors_bytes(float32_params(model), export_metadata(ckpt, cfg))
        atomic_write(out, lambda f: f.write(data))
        print(f"wrote {out}: {len(model.params)} tensors ({model.num_parameters():,} "
              "parameters), float32, PyTorch layouts")
    else:
        fig = export_bioimageio(ckpt, model, out, args.sample, args.name, args.author,
                                args.overwrite)
        diff = fig["onnx_vs_minunet"]
        check = ("" if diff is None else
                 f"; onnxruntime vs minunet on it: relative difference {diff:.1e}")
        print(f"wrote {out}: bioimage.io model package (format {FORMAT_VERSION}), test input "
              f"{fig['test_input']}{check}\n{fig['validated']}")
    return 0


def _require(module: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the {module} package: pip install 'minunet[export]'")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, FileExistsError, ValueError, ImportError) as e:
        raise usage_error(e) from e
    except OSError as e:  # a file that cannot be written: named, one line
        raise usage_error(f"{e.filename or args.out}: {e.strerror or e}") from e


if __name__ == "__main__":
    sys.exit(main())
