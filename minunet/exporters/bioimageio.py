"""A bioimage.io model package (model description format 0.5): rdf.yaml, the ONNX weights
(minunet/exporters/onnx.py), with torch installed also `pytorch_state_dict` weights (loaded by
the stand-alone module minunet/exporters/bioimageio_torch.py, copied into the package with the
network's traced graph), the
safetensors file as an attachment, a test input and its expected output, a cover image and a
README. `python -m minunet.export --to bioimageio` calls `export_bioimageio`.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np

from minunet.data.loaders import (
    DataError,
    percentile_range,
    read_array,
    resolved_normalize,
    to_float_image,
)
from minunet.exporters.onnx import OPSET, check_onnx, onnx_model, run_onnx, save_onnx
from minunet.exporters.safetensors import export_metadata, float32_params, safetensors_bytes
from minunet.files import atomic_write, atomic_write_text, default_dir_mode
from minunet.inference.outputs import save_tiff
from minunet.models.unet import channels, standardize
from minunet.training.checkpoint import checkpoint_normalize

FORMAT_VERSION = "0.5.4"  # bioimage.io model description; later 0.5.x readers update it


PAPER = ("Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for "
         "Biomedical Image Segmentation. MICCAI 2015, LNCS 9351, 234-241")


PAPER_DOI = "10.1007/978-3-319-24574-4_28"


def minunet_probabilities(model, x01: np.ndarray) -> np.ndarray:
    """minunet's own forward pass on x01 (N, C, H, W) in [0, 1]: softmax of the logits,
    float32 (N, K, H - 184, W - 184)."""
    from minunet import backend
    from minunet.inference.tiles import softmax

    cfg = model.config
    logits = model.forward(backend.to_device(standardize(x01.astype(cfg.dtype)), "cpu"))
    model.release_caches()
    return softmax(backend.to_host(logits)).astype(np.float32)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (Frobenius norms, in float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def default_sample(ckpt) -> tuple[np.ndarray, str]:
    """(raw image as stored, where from) for the package's test input: the first training
    image of a folder or ISBI 2012 run, a synthetic image for synthetic data."""
    from minunet.data.loaders import files_by_stem
    from minunet.data.synthetic import synthetic_em, touching_cells

    train = ckpt.config.get("train") if isinstance(ckpt.config.get("train"), dict) else {}
    spec = str(train.get("data", "synthetic"))
    kind, _, rest = spec.partition(":")
    seed = int(train.get("seed", 0))
    if kind == "synthetic":
        return synthetic_em(316, seed=(seed, 0)).image, "synthetic EM image (synthetic_em)"
    if kind == "cells":
        return touching_cells(316, seed=(seed, 0)).image, "synthetic touching cells"
    root = Path(rest)
    if kind == "folder" and (root / "images").is_dir():
        first = next(iter(files_by_stem(root / "images").values()))
        return read_array(first), str(first)
    if kind == "isbi2012" and (root / "images").is_dir():
        first = next(iter(files_by_stem(root / "images").values()))
        return read_array(first), str(first)
    if kind == "isbi2012" and (root / "train-volume.tif").is_file():
        stack = read_array(root / "train-volume.tif")
        return (stack[0] if stack.ndim == 3 else stack), str(root / "train-volume.tif")
    raise DataError(f"the checkpoint was trained on {spec!r}, which is not here to take a "
                    "sample image from; give one with --sample IMAGE")


def test_input(raw: np.ndarray, in_channels: int, geometry, name: str,
               smallest: int | None = None) -> np.ndarray:
    """The raw sample as the package's test input (1, C, S_h, S_w), in its own dtype: the
    centre crop of the largest valid size up to 316 px (mirror-padded up to the smallest
    valid size if the image is smaller)."""
    a = np.asarray(raw)
    if a.ndim == 3 and in_channels == 1 and a.shape[-1] > 4:
        a = a[0]  # a stack of gray pages: its first
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        a = a[..., :-1]  # drop alpha
    if a.ndim == 3 and in_channels == 1 and a.shape[-1] == 3:
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            a = a[..., 0]
    if a.ndim == 2 and in_channels == 1:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] == in_channels:
        a = np.moveaxis(a, -1, 0)
    else:
        raise DataError(f"{name}: a sample of shape {np.shape(raw)} does not fit the model's "
                        f"{in_channels} input channel(s); give a "
                        f"{'gray' if in_channels == 1 else f'{in_channels}-channel'} image "
                        "with --sample")
    smallest = smallest or geometry.nearest_valid_sizes(1)[1]
    crop = []
    for n in a.shape[1:]:
        fits = geometry.valid_sizes(smallest, min(n, max(316, smallest)))
        crop.append(fits[-1] if fits else smallest)
    pad = [(0, 0)] + [(max(0, (s - n + 1) // 2), max(0, s - n - (s - n + 1) // 2))
                      for s, n in zip(crop, a.shape[1:], strict=True)]
    if any(p != (0, 0) for p in pad):
        a = np.pad(a, pad, mode="reflect" if min(a.shape[1:]) > 1 else "edge")
    y0, x0 = ((n - s) // 2 for n, s in zip(a.shape[1:], crop, strict=True))
    return np.ascontiguousarray(a[None, :, y0 : y0 + crop[0], x0 : x0 + crop[1]])


def normalized(x_raw: np.ndarray, normalize: str, name: str) -> np.ndarray:
    """(1, C, H, W) raw -> float32 in [0, 1], channel by channel, as training normalised."""
    return np.stack([to_float_image(c, name, normalize) for c in x_raw[0]])[None]


def preprocessing(dtype, normalize: str) -> list[dict]:
    """The bioimage.io preprocessing that brings a raw image of `dtype` to [0, 1] as minunet's
    training did (`loaders.normalize_image`); the standardisation is in the graph."""
    how = resolved_normalize(dtype, normalize)
    steps = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]
    if how == "max":
        gain = 1.0 if np.dtype(dtype).kind == "b" else 1.0 / float(np.iinfo(np.dtype(dtype)).max)
        steps.append({"id": "scale_linear", "kwargs": {"gain": gain, "offset": 0.0}})
    elif how.startswith("percentile"):
        lo, hi = percentile_range(how)
        steps.append({"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": lo,
                                                      "max_percentile": hi}})
        steps.append({"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}})
    return steps + [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}]  # else: back to


def describe_normalization(dtype, normalize: str) -> str:
    how = resolved_normalize(dtype, normalize)
    if how == "max":
        return f"{np.dtype(dtype).name} gray values divided by the type's maximum"
    if how == "float":
        return "float gray values, already in [0, 1], kept"
    lo, hi = percentile_range(how)
    return (f"gray values stretched between the image's percentiles {lo:g} and {hi:g}, clipped to "
            "[0, 1]")


def cover_image(x01: np.ndarray, probs: np.ndarray, margin: int) -> np.ndarray:
    """RGB uint8 (h, 2w): the input's centre (the region the output covers) beside the
    prediction: P(class 1) in gray for two classes, the arg-max class in colours for more."""
    from minunet.inference.outputs import overlay

    m = margin // 2
    h, w = probs.shape[-2:]
    gray = x01[0].mean(0)[m : m + h, m : m + w]
    left = np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)
    k = probs.shape[1]
    if k == 2:
        right = np.repeat(np.rint(probs[0, 1] * 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        right = overlay(gray, probs[0].argmax(0), k)
    img = np.concatenate([left, right], axis=1)
    scale = max(1, int(np.ceil(256 / h)))
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _yaml(value, indent: int = 0) -> str:
    """A small YAML writer for dicts, lists, strings, numbers, booleans and None (strings
    double-quoted as JSON, which YAML reads); enough for rdf.yaml."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = []
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{k}:\n{_yaml(v, indent + 1)}")
            else:
                lines.append(f"{pad}{k}: {_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        if not value:
            return "[]"
        lines = []
        for v in value:
            if isinstance(v, dict) and v:
                first, *rest = _yaml(v, indent + 1).split("\n")
                lines.append(f"{pad}- {first.lstrip()}" + "".join(f"\n{r}" for r in rest))
            else:
                lines.append(f"{pad}- {_yaml(v)}")
        return "\n".join(lines)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return json.dumps(str(value))


def _default_name(ckpt) -> str:
    train = ckpt.config.get("train") if isinstance(ckpt.config.get("train"), dict) else {}
    kind = str(train.get("data", "synthetic")).partition(":")[0]
    what = {"synthetic": "synthetic EM", "cells": "touching cells", "isbi2012": "ISBI 2012 EM",
            "folder": "cells"}.get(kind, "cells")
    return f"minunet {'U-Net' if ckpt.arch == 'unet' else ckpt.arch} {what}"


def _check_name(name: str) -> str:
    import string

    allowed = set(string.ascii_letters + string.digits + "_+- ()")
    bad = sorted(set(name) - allowed)
    if not 5 <= len(name) <= 128 or bad:
        raise DataError(f"--name {name!r}: a bioimage.io name has 5 to 128 characters of letters, "
                        f"digits, spaces and _+-(){'; not ' + ''.join(bad) if bad else ''}")
    return name


def write_package(folder: Path, ckpt, model, sample: np.ndarray, sample_from: str,
                  name: str, authors: list[str]) -> dict:
    """Write the bioimage.io package's files into `folder` (which exists and is empty).
    Returns figures for the report: the test input's shape and the ONNX-vs-minunet
    difference on it (None without onnxruntime)."""
    from PIL import Image

    cfg = model.config
    normalize = checkpoint_normalize(ckpt)
    params = float32_params(model)
    meta = export_metadata(ckpt, cfg)
    onnx_proto = onnx_model(model, params, metadata={"minunet." + k: v for k, v in meta.items()})
    check_onnx(onnx_proto)
    save_onnx(onnx_proto, folder / "weights.onnx")
    data = safetensors_bytes(params, meta)
    atomic_write(folder / "weights.safetensors", lambda f: f.write(data))
    torch_entry = write_torch_weights(folder, params, cfg)  # None without torch

    geometry = model.geometry
    halo = package_halo(cfg)  # {"halo": px} for a padded network: tiles overlap by it
    lo = geometry.nearest_valid_sizes(2 * halo.get("halo", 0) + 1)[1]  # more than the halos
    x_raw = test_input(sample, cfg.in_channels, geometry, sample_from, lo)  # (1, C, S, S')
    x01 = normalized(x_raw, normalize, sample_from)
    probs = minunet_probabilities(model, x01)  # (1, K, S - 184, S' - 184)
    try:
        diff = relative_difference(run_onnx(onnx_proto, x01), probs)
    except ImportError:
        diff = None
    if diff is not None and diff > 1e-4:
        raise ValueError(f"the exported ONNX model disagrees with minunet on the test input "
                         f"(relative difference {diff:.2e}); please report this")
    for fname, arr in (("test_input.npy", x_raw), ("test_output.npy", probs)):
        atomic_write(folder / fname, lambda f, a=arr: np.save(f, a, allow_pickle=False))
    for fname, arr in (("sample_input.tif", x_raw[0]), ("sample_output.tif", probs[0])):
        save_tiff(folder / fname, arr[0] if arr.shape[0] == 1 else arr)  # (C|K, H, W)
    cover = cover_image(x01, probs, geometry.margin)
    atomic_write(folder / "cover.png", lambda f: Image.fromarray(cover).save(f, format="PNG"))

    step, margin = geometry.grid, geometry.margin
    classes = ["background", "cell"] if cfg.n_classes == 2 else \
        [f"class{k}" for k in range(cfg.n_classes)]
    in_names = ["gray"] if cfg.in_channels == 1 else [f"channel{c}" for c in
                                                      range(cfg.in_channels)]
    atomic_write_text(folder / "README.md", _package_readme(
        name, model, ckpt, normalize, x_raw.dtype, sample_from, lo, step, margin, classes, diff,
        torch_entry is not None))
    rdf = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": (f"{architecture_line(model)}, {cfg.n_classes} classes, trained from "
                        "scratch with minunet (hand-written forward and backward)."),
        "authors": [{"name": a} for a in authors],
        "cite": citations(model),
        "license": "MIT",
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["unet", "2d", "semantic-segmentation", "instance-segmentation", "cells",
                 "microscopy", "onnx", "minunet"],
        "timestamp": datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        .isoformat(),
        "inputs": [{
            "id": "input",
            "description": f"raw image; height and width {lo} + {step}k (see README.md)",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": in_names},
                     {"type": "space", "id": "y", "size": {"min": lo, "step": step}},
                     {"type": "space", "id": "x", "size": {"min": lo, "step": step}}],
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(folder /
                                                                          "test_input.npy")},
            "sample_tensor": {"source": "sample_input.tif",
                              "sha256": _sha256(folder / "sample_input.tif")},
            "data": {"type": x_raw.dtype.name},
            "preprocessing": preprocessing(x_raw.dtype, normalize),
        }],
        "outputs": [{
            "id": "output",
            "description": f"class probabilities of the input's centre ({margin} px smaller)",
            "axes": [{"type": "batch"},
                     {"type": "channel", "channel_names": classes},
                     {"type": "space", "id": "y",
                      "size": {"tensor_id": "input", "axis_id": "y", "offset": -margin},
                      **halo},
                     {"type": "space", "id": "x",
                      "size": {"tensor_id": "input", "axis_id": "x", "offset": -margin},
                      **halo}],
            "test_tensor": {"source": "test_output.npy", "sha256": _sha256(folder /
                                                                           "test_output.npy")},
            "sample_tensor": {"source": "sample_output.tif",
                              "sha256": _sha256(folder / "sample_output.tif")},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {"onnx": {"source": "weights.onnx", "sha256": _sha256(folder /
                                                                         "weights.onnx"),
                             "opset_version": OPSET,
                             **({"parent": "pytorch_state_dict"} if torch_entry else {})},
                    **({"pytorch_state_dict": torch_entry} if torch_entry else {})},
        "attachments": [{"source": "weights.safetensors",
                         "sha256": _sha256(folder / "weights.safetensors")}],
        "config": {"minunet": {"arch": ckpt.arch, "model": json.loads(meta["config"]),
                               "normalize": normalize, "iteration": ckpt.iteration,
                               "standardization": "inside the ONNX graph: (x - 0.5) / 0.25",
                               "valid_size": f"{lo} + {step}k, output = input - {margin}",
                               **({"tile_halo": halo["halo"]} if halo else {})}},
    }
    atomic_write_text(folder / "rdf.yaml", _yaml(rdf) + "\n")
    return {"test_input": tuple(x_raw.shape), "onnx_vs_minunet": diff}


def write_torch_weights(folder: Path, params: dict, cfg) -> dict | None:
    """weights.pt (a torch.save state dict: the parameters under minunet's names, PyTorch's
    layouts) and the stand-alone module that loads it (minunet/exporters/bioimageio_torch.py with
    the network's traced graph appended, as unet_torch.py: torch_mirror.package_source); their
    rdf.yaml entry. None when torch is not installed: the package then has the ONNX weights
    only (and the safetensors file as an attachment)."""
    try:
        import torch
    except ImportError:
        return None
    from minunet.exporters import torch_mirror

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in params.items()}
    atomic_write(folder / "weights.pt", lambda f: torch.save(state, f))
    kwargs = architecture_kwargs(cfg)
    atomic_write_text(folder / "unet_torch.py", torch_mirror.package_source(cfg, kwargs))
    return {"source": "weights.pt", "sha256": _sha256(folder / "weights.pt"),
            "architecture": {"source": "unet_torch.py", "sha256": _sha256(folder /
                                                                          "unet_torch.py"),
                             "callable": "MinUNet", "kwargs": kwargs},
            "pytorch_version": torch.__version__.split("+")[0]}


TORCH_FILES = """- `weights.pt`, `unet_torch.py`: the same weights as a PyTorch state dict, and the
  module (`MinUNet`, torch only) that takes them: bioimage.io's `pytorch_state_dict` weights;
  its output equals the ONNX graph's
"""


def package_halo(cfg) -> dict:
    """The output axes' halo of a padded network (model description 0.5: the pixels at each
    border of a tile's output that a consumer discards when it tiles): its exact halo, the
    receptive radius rounded up to the grid (minunet/inference/tiles.py, `default_halo`), so
    tiled predictions equal one pass. {} for the valid U-Net (its output already excludes the
    context) and for a network that cannot tile exactly (global pooling: no halo is exact)."""
    from minunet.inference.tiles import default_halo

    h = default_halo(cfg)
    return {"halo": h} if h else {}


def architecture_line(model) -> str:
    """One line on the network: the first line of its models/ file's docstring and its size."""
    import sys

    doc = (sys.modules[type(model).__module__].__doc__ or model.config.arch).strip()
    first = doc.splitlines()[0].rstrip(".:")
    return f"{first} ({model.config.arch}, {model.num_parameters():,} parameters)"


def citations(model) -> list[dict]:
    """The rdf's cite entries: the architecture's paper (its model class's `CITE`: (text,
    doi or url) pairs), then the U-Net's."""
    out = []
    for text, ref in getattr(type(model), "CITE", ()):
        out.append({"text": text, "doi" if ref.startswith("10.") else "url": ref})
    if not any(c.get("doi") == PAPER_DOI for c in out):
        out.append({"text": PAPER, "doi": PAPER_DOI})
    return out


def architecture_kwargs(cfg) -> dict:
    """The keyword arguments of the package's torch module: the architecture's options (its
    config without the run's dtype, op door and local file paths)."""
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in ("dtype", "ops", "encoder_weights")}


def _model_lines(model, classes) -> str:
    cfg = model.config
    if cfg.arch == "unet":
        top = channels(cfg, cfg.depth)
        return f"""- depth {cfg.depth} (poolings), {cfg.base} channels at the first level, {top}
  at the bottleneck; valid (unpadded) 3x3 convolutions with ReLU, 2x2 max-pooling, 2x2
  up-convolutions{' with ReLU' if cfg.upconv_relu else ''}, skip connections by centre crop"""
    options = ", ".join(f"{k} {v}" for k, v in architecture_kwargs(cfg).items()
                        if k not in ("arch", "in_channels", "n_classes"))
    return f"""- {architecture_line(model)}
- options: {options} (docstring of minunet/models/, `python -m minunet.train --arch
  {cfg.arch} --describe` prints its layers)"""


def _output_lines(model, margin: int) -> str:
    if margin:
        return f"""- output `output`: class probabilities, {margin} pixels smaller than the input in
  height and width (the network consumes {margin // 2} px of context on every side). To segment
  a whole image, mirror-pad it by {margin // 2} px and run tiles whose outputs cover it
  (overlap-tile, as `python -m minunet.predict` does)."""
    return """- output `output`: class probabilities, the input's size (padded convolutions). Pixels
  near a tile's border see the zeros of the padding instead of their neighbours: to segment an image
  larger than one tile, overlap the tiles and keep only their centres (the output axes' `halo`;
  `python -m minunet.predict` does this exactly)."""


def _package_readme(name, model, ckpt, normalize, dtype, sample_from, lo, step, margin,
                    classes, diff, torch_weights: bool) -> str:
    cfg = model.config
    train = ckpt.config.get("train") if isinstance(ckpt.config.get("train"), dict) else {}
    return f"""# {name}

{architecture_line(model)}, built on the U-Net of Ronneberger, Fischer and Brox (2015,
[arXiv:1505.04597](https://arxiv.org/abs/1505.04597)), trained with minunet (the network written
from scratch, every layer's forward and backward by hand).

## Model

{_model_lines(model, classes)}
- {cfg.in_channels} input channel(s), {cfg.n_classes} classes: {', '.join(classes)}
- trained for {ckpt.iteration} iterations on `{train.get('data', '?')}`
  (mask kind `{train.get('mask_kind', 'binary')}`, tile {train.get('tile', '?')})

## Input and output

- input `input`: height and width {lo} + {step}k pixels (k = 0, 1, 2, ...).
  Preprocessing: {describe_normalization(dtype, normalize)} (the model's training normalisation
  `{normalize}`); the standardisation (x - 0.5) / 0.25 is the first operation of the ONNX graph.
{_output_lines(model, margin)}

## Files

- `weights.onnx`: the network, built by hand from the trained weights (opset {OPSET}), any
  valid input size
- `weights.safetensors`: the same weights in PyTorch's layouts (Conv2d (Cout, Cin, k, k),
  ConvTranspose2d (Cin, Cout, 2, 2)) under minunet's names (`down0.conv0.weight`, ...,
  `up0.upconv.weight`, `final.weight`); the metadata holds the model config
{TORCH_FILES if torch_weights else ""}\
- `test_input.npy`, `test_output.npy`: a test image ({sample_from}) and minunet's output on it

## Run it in Python

```python
import numpy as np, onnxruntime as ort
x = np.load("test_input.npy").astype("float32")
{_python_preprocessing(dtype, normalize)}
p = ort.InferenceSession("weights.onnx").run(None, {{"input": x}})[0]  # = test_output.npy
```

## Validation

`test_output.npy` is minunet's own forward pass (NumPy, the hand-written layers) on
`test_input.npy` after this package's preprocessing. The ONNX graph was checked with
`onnx.checker` and run by onnxruntime on the same input: relative difference
{'not measured (onnxruntime was not installed)' if diff is None else f'{diff:.1e}'}
(||onnx - minunet|| / ||minunet||). minunet's tests check the same at three input sizes to 1e-5.

## Cite

{PAPER}. doi:{PAPER_DOI}
"""


def _python_preprocessing(dtype, normalize: str) -> str:
    """The package's preprocessing as a line of NumPy on x (1, C, H, W) float32."""
    how = resolved_normalize(dtype, normalize)
    if how == "max":
        return f"x = x / {float(np.iinfo(np.dtype(dtype)).max):g}  # the type's maximum"
    if how == "float":
        return "# already in [0, 1]"
    lo, hi = percentile_range(how)
    return (f"lo, hi = np.percentile(x, [{lo:g}, {hi:g}], axis=(2, 3), keepdims=True)\n"
            "x = np.clip((x - lo) / (hi - lo), 0, 1)")


@contextlib.contextmanager
def quiet_bioimageio():
    """bioimageio.spec and .core leave files of the package open for the garbage collector
    (ResourceWarning); collect them here with that warning off. Let no description object
    outlive the block."""
    import gc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


def validate_package(path: Path) -> str:
    """Validate a package (rdf.yaml or .zip) with bioimageio.spec, offline (every file is
    local); ValueError listing the errors. Returns a one-line summary."""
    with quiet_bioimageio():
        return _validate(path)


def _validate(path: Path) -> str:
    import bioimageio.spec as spec

    descr = spec.load_description(path, perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status not in ("valid-format", "passed"):
        errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details
                  for e in d.errors]
        raise ValueError("the bioimage.io package does not validate:\n  " + "\n  ".join(
            errors[:20] or [str(summary.status)]))
    warnings = sum(len(d.warnings) for d in summary.details)
    return (f"validated offline with bioimageio.spec {spec.__version__}: {summary.status}"
            f" ({warnings} warning(s))")


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; choose another path or pass --overwrite")
    if out.exists() and out.is_dir() and out.suffix == ".zip":
        raise FileExistsError(f"--out {out} is a folder; name a .zip file or another folder")


def export_bioimageio(ckpt, model, out: Path, sample: str | None, name: str | None,
                      authors: list[str] | None, overwrite: bool) -> dict:
    """Build the package in a hidden folder beside `out`, validate it, then move it into
    place (a folder) or zip it (out.zip). Returns write_package's figures and 'validated'."""
    import tempfile

    if sample:
        raw, sample_from = read_array(sample), Path(sample).name
    else:
        raw, sample_from = default_sample(ckpt)
    name = _check_name(name or _default_name(ckpt))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        figures = write_package(work, ckpt, model, raw, sample_from, name,
                                authors or ["minunet user"])
        try:
            figures["validated"] = validate_package(work / "rdf.yaml")
        except ImportError:
            figures["validated"] = ("not validated: install bioimageio.spec (pip install "
                                    "'minunet[export]') to check the package")
        if out.suffix.lower() == ".zip":
            def write_zip(f):
                with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
                    for file in sorted(work.iterdir()):
                        z.write(file, file.name)
            atomic_write(out, write_zip)
        else:
            if out.exists():
                shutil.rmtree(out) if out.is_dir() else out.unlink()
            work.chmod(default_dir_mode())  # mkdtemp's 0700 would keep the lab out
            work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return figures
