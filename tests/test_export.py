"""`python -m minunet.export` (minunet/export.py): the hand-built ONNX graph against minunet's
forward pass, safetensors into the PyTorch reference network, the bioimage.io package, errors.

The ONNX and safetensors tests need the export extra (onnx, onnxruntime, safetensors); the
package validation needs bioimageio.spec and its test-run bioimageio.core; the safetensors
round trip into PyTorch needs torch. Each skips cleanly without its package."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
import tifffile

from minunet.models.unet import UNetConfig, build_model, standardize
from minunet.training.checkpoint import save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

from minunet import export  # noqa: E402  (after the skips: it needs the packages above)

# three valid sizes at depth 4 (188 + 16k), square and not
SIZES = ((188, 188), (204, 252), (268, 220))


def make_checkpoint(path, train=None, arch="unet", **config):
    model = build_model(UNetConfig(**{"base": 4, **config}), seed=3)
    train = {"data": "cells:n=3,size=200", "normalize": "auto", "seed": 0, **(train or {})}
    cfg = {"train": train, "model": asdict(model.config), "optimizer": {}}
    save_checkpoint(path, model.state_dict(), {}, 11, cfg, {"seed": 0}, arch=arch)
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.npz"
    return path, make_checkpoint(path)


def rel(a, b):
    return float(np.linalg.norm(np.float64(a) - np.float64(b)) / np.linalg.norm(np.float64(b)))


@pytest.mark.parametrize("config", [dict(base=4), dict(base=2, n_classes=3, in_channels=2,
                                                       upconv_relu=True)])
def test_onnx_equals_minunet_at_three_valid_sizes(config):
    model = build_model(UNetConfig(**config), seed=1).eval()
    params = export.float32_params(model)
    probs = export.onnx_model(model, params)
    logits = export.onnx_model(model, params, output="logits")
    export.check_onnx(probs)
    rng = np.random.default_rng(0)
    for h, w in SIZES:  # one graph for every size: the crop offsets come from the shapes
        x = rng.random((1, model.config.in_channels, h, w), dtype=np.float32)
        want = model.forward(standardize(x))  # (1, K, h - 184, w - 184)
        model.release_caches()
        got = export.run_onnx(logits, x)
        assert got.shape == want.shape == (1, model.config.n_classes, h - 184, w - 184)
        assert rel(got, want) < 1e-5, (h, w, rel(got, want))
        p = export.run_onnx(probs, x)
        assert rel(p, export.minunet_probabilities(model, x)) < 1e-5
        np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)  # softmax over the classes


def test_onnx_graph_is_hand_built_with_dynamic_sizes(ckpt):
    path, model = ckpt
    proto = export.onnx_model(model, export.float32_params(model))
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:2] == ["Sub", "Mul"]  # the standardisation is inside the graph
    assert ops.count("Conv") == 19 and ops.count("ConvTranspose") == 4  # 23 conv layers
    assert ops.count("MaxPool") == 4 and ops.count("Shape") == 8 and ops[-1] == "Softmax"
    assert proto.opset_import[0].version == export.OPSET


def test_cli_onnx_then_three_lines_of_onnxruntime(tmp_path, ckpt, capsys):
    path, model = ckpt
    out = tmp_path / "model.onnx"
    assert export.main(["--checkpoint", str(path), "--to", "onnx", "--out", str(out)]) == 0
    assert "onnx.checker passed" in capsys.readouterr().out
    x = np.random.default_rng(2).random((1, 1, 252, 252), dtype=np.float32)
    # the README's three lines
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    prob = session.run(None, {"input": x})[0]  # (1, 2, 68, 68) probabilities
    assert rel(prob, export.minunet_probabilities(model, x)) < 1e-5
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["minunet.config"])["base"] == 4
    assert meta["minunet.normalize"] == "auto"


def test_safetensors_round_trip_and_into_the_pytorch_reference(tmp_path, ckpt):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path, model = ckpt
    out = tmp_path / "model.safetensors"
    assert export.main(["--checkpoint", str(path), "--to", "safetensors", "--out",
                        str(out)]) == 0
    tensors = load_file(str(out))
    assert set(tensors) == set(model.params)
    for k, v in model.params.items():
        assert tensors[k].dtype == np.float32
        np.testing.assert_array_equal(tensors[k], v)
    assert tensors["down0.conv0.weight"].shape == (4, 1, 3, 3)  # Conv2d (Cout, Cin, k, k)
    assert tensors["up0.upconv.weight"].shape == (8, 4, 2, 2)  # ConvTranspose2d (Cin, Cout)
    with safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["arch"] == "unet" and json.loads(meta["config"])["depth"] == 4

    torch = pytest.importorskip("torch")
    from minunet.exporters import torch_mirror as torch_ref

    net = torch_ref.build(model.config).eval()
    state = {k: torch.from_numpy(v) for k, v in tensors.items()}  # minunet's names as they are
    net.load_state_dict(state, strict=True)  # every name and shape fits
    x = np.random.default_rng(4).random((1, 1, 220, 204), dtype=np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(standardize(x))).numpy()
    want = model.forward(standardize(x))
    model.release_caches()
    assert rel(got, want) < 1e-5


# ----------------------------------------------------------------------------- bioimage.io


@pytest.fixture(scope="module")
def package(tmp_path_factory, ckpt):
    """A package (folder) of the 8-bit synthetic-cells checkpoint and one (zip) from a 16-bit
    sample, written once for the tests below."""
    path, _ = ckpt
    root = tmp_path_factory.mktemp("bioimageio")
    sample = (np.random.default_rng(5).random((230, 250)) * 3000 + 100).astype(np.uint16)
    tifffile.imwrite(root / "sample16.tif", sample)
    assert export.main(["--checkpoint", str(path), "--to", "bioimageio", "--out",
                        str(root / "pkg"), "--author", "Ada Lovelace"]) == 0
    assert export.main(["--checkpoint", str(path), "--to", "bioimageio", "--out",
                        str(root / "pkg16.zip"), "--sample", str(root / "sample16.tif"),
                        "--name", "sixteen bit cells"]) == 0
    return root


def test_package_files_sizes_and_preprocessing(package, ckpt):
    _, model = ckpt
    d = package / "pkg"
    torch_files = ["unet_torch.py", "weights.pt"] if has_torch() else []
    assert sorted(p.name for p in d.iterdir()) == sorted([
        "README.md", "cover.png", "rdf.yaml", "sample_input.tif", "sample_output.tif",
        "test_input.npy", "test_output.npy", "weights.onnx", "weights.safetensors",
        *torch_files])
    x, y = np.load(d / "test_input.npy"), np.load(d / "test_output.npy")
    assert x.dtype == np.uint8 and x.shape == (1, 1, 316, 316)  # raw, before preprocessing
    assert y.shape == (1, 2, 132, 132) and y.dtype == np.float32
    np.testing.assert_allclose(y, export.minunet_probabilities(model, x / np.float32(255)),
                               rtol=1e-6, atol=1e-7)
    rdf = (d / "rdf.yaml").read_text()
    for line in ('format_version: "0.5.4"', "min: 188", "step: 16", "offset: -184",
                 'id: "scale_linear"', "gain: 0.00392156862745098", 'name: "Ada Lovelace"',
                 "opset_version: 17", 'source: "weights.safetensors"'):
        assert line in rdf, line
    with zipfile.ZipFile(package / "pkg16.zip") as z:
        rdf16 = z.read("rdf.yaml").decode()
        x16 = np.load(z.open("test_input.npy"))
    assert x16.dtype == np.uint16 and x16.shape == (1, 1, 220, 236)  # largest valid crops
    for line in ('id: "scale_range"', "min_percentile: 1.0", "max_percentile: 99.8",
                 'id: "clip"'):
        assert line in rdf16, line


def has_torch() -> bool:
    return importlib.util.find_spec("torch") is not None


def test_package_pytorch_weights_reproduce_the_test_output(package):
    """weights.pt in the stand-alone module of the package (torch only, no minunet) gives
    test_output.npy from test_input.npy, and the rdf entry names them."""
    torch = pytest.importorskip("torch")
    d = package / "pkg"
    spec = importlib.util.spec_from_file_location("unet_torch", d / "unet_torch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rdf = (d / "rdf.yaml").read_text()
    for line in ('source: "weights.pt"', 'callable: "MinUNet"', 'parent: "pytorch_state_dict"'):
        assert line in rdf, line
    net = module.MinUNet(in_channels=1, n_classes=2, depth=4, base=4).eval()
    net.load_state_dict(torch.load(d / "weights.pt", weights_only=True), strict=True)
    x = torch.from_numpy(np.load(d / "test_input.npy").astype(np.float32) / 255)
    with torch.no_grad():
        got = net(x).numpy()
    assert rel(got, np.load(d / "test_output.npy")) < 1e-5


def test_package_validates_offline_with_the_spec(package):
    spec = pytest.importorskip("bioimageio.spec")

    def check(source):
        descr = spec.load_description(source, perform_io_checks=True)
        return (descr.validation_summary.status, str(descr.validation_summary.details),
                [str(a.id) for a in descr.inputs[0].axes])

    for source in (package / "pkg" / "rdf.yaml", package / "pkg16.zip"):
        with export.quiet_bioimageio():  # the spec leaves files for the collector to close
            status, details, axes = check(source)
        assert status == "valid-format", details
        assert axes == ["batch", "channel", "y", "x"]


def test_package_test_run_with_bioimageio_core(package):
    """bioimage.io's own test: its preprocessing (scale_linear; scale_range and clip) and
    onnxruntime reproduce test_output.npy, and the model runs at the sizes the rule allows."""
    core = pytest.importorskip("bioimageio.core")

    def test_run(source):
        summary = core.test_model(source)
        return summary.status, [(d.name, [e.msg for e in d.errors]) for d in summary.details
                                if d.status == "failed"]

    for source in (package / "pkg" / "rdf.yaml", package / "pkg16.zip"):
        with export.quiet_bioimageio():
            status, failed = test_run(source)
        assert status == "passed", failed


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_error_line(tmp_path, ckpt):
    path, _ = ckpt

    def error(*argv):
        with pytest.raises(SystemExit) as e:
            export.main(["--checkpoint", *argv])
        assert str(e.value).startswith("error: ") and "Traceback" not in str(e.value)
        return str(e.value)

    out = tmp_path / "exists.onnx"
    out.write_bytes(b"keep me")
    assert "exists" in error(str(path), "--to", "onnx", "--out", str(out))
    assert "--overwrite" in error(str(path), "--to", "onnx", "--out", str(out))
    assert out.read_bytes() == b"keep me"
    assert export.main(["--checkpoint", str(path), "--to", "onnx", "--out", str(out),
                        "--overwrite"]) == 0
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[:5000])  # a checkpoint cut short
    assert "not a minunet checkpoint" in error(str(corrupt), "--to", "onnx", "--out",
                                               str(tmp_path / "a.onnx"))
    other = tmp_path / "other.npz"
    make_checkpoint(other, arch="resnet")
    assert "'resnet'" in error(str(other), "--to", "onnx", "--out", str(tmp_path / "b.onnx"))
    assert "does not exist" in error(str(tmp_path / "nope.npz"), "--to", "safetensors",
                                     "--out", str(tmp_path / "c.safetensors"))
    assert "--name" in error(str(path), "--to", "bioimageio", "--out", str(tmp_path / "p"),
                             "--name", "a/b")
    gone = tmp_path / "gone.npz"
    make_checkpoint(gone, train={"data": f"folder:{tmp_path / 'moved'}"})
    assert "--sample" in error(str(gone), "--to", "bioimageio", "--out", str(tmp_path / "q"))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # nothing half-written
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "p").exists()


def test_every_option_has_help():
    parser = export.build_parser()
    assert not [a.dest for a in parser._actions if not (a.help or "").strip()]
    parser.format_help()  # raises on a stray % in a help text
