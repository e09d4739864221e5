"""Every network of the U-Net family through the commands, as a user runs them: train --arch
(its test configuration's options through --model), predict from the checkpoint (tiles with
the network's halo), evaluate, export to ONNX (onnxruntime agrees with minunet) and to a
bioimage.io package, describe itself (train --describe) and pass the whole-network gradient
check (python -m minunet.gradcheck --arch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minunet.models import registry

FAMILY = ["unet-bn", "resunet", "unetpp", "unet3p", "mobile-unet", "eff-unet"]


def _options(name: str) -> str:
    """The test configuration's options that differ from the architecture's defaults, as
    --model text."""
    cls = registry.get(name)
    small, default = cls.test_config(), cls.config_class()
    return ",".join(f"{f.name}={getattr(small, f.name)}" for f in dataclasses.fields(small)
                    if getattr(small, f.name) != getattr(default, f.name))


def _tile(name: str) -> int:
    """A small training tile: the smallest valid side >= 64 whose output the loss takes."""
    from minunet.nn.model import LOSS_MIN_OUTPUT

    config = registry.get(name).test_config()
    geometry = registry.geometry(config)
    least = LOSS_MIN_OUTPUT.get(config.loss, 1)
    return next(s for s in range(64, 1024) if geometry.is_valid(s)
                and geometry.output_size(s) >= least)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("family_runs")


def _train(name, runs):
    from minunet import train

    run = runs / name
    if not (run / "last.npz").exists():
        assert train.main(["--arch", name, "--model", _options(name), "--tile",
                           str(_tile(name)), "--iters", "2", "--val-every", "2", "--device",
                           "cpu", "--prefetch", "0", "--data", "synthetic:n=3,size=96",
                           "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("name", FAMILY)
def test_trains_predicts_evaluates_and_exports(name, runs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from minunet import evaluate, export, predict
    from minunet.exporters.bioimageio import minunet_probabilities
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    run = _train(name, runs)
    ckpt = load_checkpoint(run / "best.npz")
    assert ckpt.arch == name
    model = model_from_checkpoint(ckpt, run / "best.npz").eval()
    assert model.buffers or name == "unetpp"  # BatchNorm's running statistics travel
    image = (np.random.default_rng(5).random((70, 90)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray((image > 128).astype(np.uint8) * 255).save(tmp_path / "truth.png")
    assert predict.main(["--checkpoint", str(run / "best.npz"), str(tmp_path / "img.png"),
                         "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    prob = np.asarray(Image.open(tmp_path / "pred" / "prob" / "img.png"))
    assert prob.shape == image.shape
    assert evaluate.main([str(tmp_path / "pred" / "prob" / "img.png"),
                          str(tmp_path / "truth.png")]) == 0
    assert export.main(["--checkpoint", str(run / "best.npz"), "--to", "onnx", "--out",
                        str(tmp_path / "m.onnx")]) == 0
    g = model.geometry.grid
    x = np.random.default_rng(6).random((1, 1, 2 * g, 3 * g)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(onnx_model(model), x), minunet_probabilities(model, x),
                               rtol=1e-4, atol=2e-5)
    capsys.readouterr()
    from minunet import train

    assert train.main(["--arch", name, "--model", _options(name), "--describe", "--tile",
                       str(_tile(name))]) == 0
    assert "total" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unetpp", "eff-unet"])
def test_bioimageio_package(name, runs, tmp_path):
    pytest.importorskip("bioimageio.spec")
    from minunet import export

    run = _train(name, runs)
    assert export.main(["--checkpoint", str(run / "best.npz"), "--to", "bioimageio", "--out",
                        str(tmp_path / "pkg")]) == 0
    rdf = (tmp_path / "pkg" / "rdf.yaml").read_text()
    assert f'arch: "{name}"' in rdf
    assert ("halo" in rdf) == (name == "unetpp")  # eff-unet's global pooling has no exact halo


@pytest.mark.parametrize("name", FAMILY)
def test_whole_network_gradient_check_command(name, capsys):
    from minunet import gradcheck

    assert gradcheck.main(["--arch", name]) == 0
    assert f"{name}: 4 of 4 directions pass" in capsys.readouterr().out


def test_a_timed_run_of_a_batchnorm_network(tmp_path):
    """--time measures the step, then a validation (in eval mode: BatchNorm's running
    statistics must have seen the timed steps' batches), then undoes the timed steps."""
    from minunet import train
    from minunet.training.checkpoint import load_checkpoint

    run = tmp_path / "run"
    assert train.main(["--arch", "unet-bn", "--model", "base=2,depth=2", "--tile", "64",
                       "--time", "6s", "--device", "cpu", "--prefetch", "0",
                       "--data", "synthetic:n=3,size=96", "--out", str(run)]) == 0
    ckpt = load_checkpoint(run / "last.npz")
    batches = ckpt.state()["down0.conv0.bn.num_batches_tracked"][0]
    assert batches == ckpt.iteration  # the timed steps were undone, buffers included
