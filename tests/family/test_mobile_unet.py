"""mobile-unet (minunet/models/mobile_unet.py): smp's Unet with a MobileNetV2 encoder.

The reference counts (torchvision's mobilenet_v2, smp's Unet at its defaults), the
whole-network gradient check on both doors, PyTorch parity (logits, every parameter gradient,
BatchNorm's running statistics), ONNX, a short training run, and torchvision ImageNet weights
loaded into the encoder (its maps equal torchvision's network's on the same weights). torchvision
itself is not installable next to this CPU torch, so the reference network is built here from
torch.nn modules under torchvision's names (torchvision/models/mobilenetv2.py's layout); its
parameter count, 3,504,872, is torchvision's mobilenet_v2's.

The helpers `_mirror_parity`, `_onnx_agrees` and `_trains` serve tests/family/test_eff_unet.py too.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest

from minunet.models import build_model
from minunet.models.mobile_unet import MobileUNet, MobileUNetConfig, encoder_shapes
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.model import standardize

CLASSIFIER = 1280 * 1000 + 1000  # torchvision's Linear(1280, 1000), not part of the encoder
TINY = dict(width=0.25, decoder_base=2)  # a test network: 8..80 encoder channels, decoder 32..2


def _count(shapes: dict) -> int:
    return sum(math.prod(s) for s in shapes.values())


def _model_count(cls, cfg) -> int:
    m = cls.__new__(cls)  # parameter shapes only: nothing allocated
    m.config = cfg
    return _count(m.parameter_shapes())


def _batch(rng, cin=1, n=2, s=64):
    x = rng.standard_normal((n, cin, s, s))
    return x, rng.integers(0, 2, (n, s, s)), np.ones((n, s, s))


# --- reference counts ---------------------------------------------------------------------


def test_parameter_counts():
    enc = _count(encoder_shapes(3, 1.0))
    assert enc == 2_223_872  # torchvision's mobilenet_v2 without its classifier
    assert enc + CLASSIFIER == 3_504_872
    # smp.Unet("mobilenet_v2") at its defaults (in_channels=3, classes=1): 6,628,945
    assert _model_count(MobileUNet, MobileUNetConfig(in_channels=3, head="sigmoid")) == 6_628_945
    assert _model_count(MobileUNet, MobileUNetConfig()) == 6_628_514  # 1 -> 2 classes
    rows = MobileUNet.layer_table(MobileUNetConfig(), 64)  # the trace sees every parameter
    assert sum(r["params"] for r in rows) == 6_628_514


def test_describe_and_sizes():
    text = MobileUNet.describe(MobileUNetConfig(), 96)
    assert "6,628,514" in text and "enc.block17.project" in text
    m = build_model(MobileUNetConfig(**TINY))
    with pytest.raises(ValueError, match="nearest valid sizes are 64 or 96"):
        m.forward(np.zeros((1, 1, 80, 80), np.float32))


# --- the whole-network gradient check -----------------------------------------------------


@pytest.mark.parametrize("ops", ["plain", "fast"])
def test_gradcheck_softmax(ops):
    m = build_model(MobileUNetConfig(dtype="float64", ops=ops, **TINY))
    # seed 2: with seed 1 three directions cross a ReLU/ReLU6 kink until the step is 1.6e-7,
    # where the loss's rounding (~1e-17 / 1.6e-7) is up to 1e-6 of the difference
    x, labels, weights = _batch(np.random.default_rng(2))
    results = model_gradcheck(m, x, labels, weights, dropout_key=7)
    assert all(r.passed for r in results), results


def test_gradcheck_sigmoid_head_bce_dice():
    m = build_model(MobileUNetConfig(dtype="float64", ops="fast", head="sigmoid", loss="bce_dice",
                                     in_channels=3, **TINY))
    x, labels, weights = _batch(np.random.default_rng(2), cin=3)
    logits = m.forward(x)
    assert logits.shape == (2, 2, 64, 64) and np.all(logits[:, 0] == 0)
    results = model_gradcheck(m, x, labels, weights)
    assert all(r.passed for r in results), results


# --- PyTorch parity (the mirror read off the forward), ONNX, training ----------------------


@contextlib.contextmanager
def _one_torch_thread(torch):
    """torch on one thread: on a shared 2-core machine its threads and the fast ops' workers
    contend (a float64 forward of the tiny eff-unet took 4.4 s on two threads, 0.06 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _mirror_parity(cfg, x, dropout_key=None, tol=1e-10):
    """Our float64 logits, parameter gradients and BatchNorm buffers against the PyTorch
    mirror's on the same weights, in training mode (batch statistics), then eval mode.
    Returns the largest errors (logits, gradients relative to their scale)."""
    torch = pytest.importorskip("torch")
    with _one_torch_thread(torch):
        return _mirror_parity_1(torch, cfg, x, dropout_key, tol)


def _mirror_parity_1(torch, cfg, x, dropout_key, tol):
    from minunet.exporters import torch_mirror

    m = build_model(cfg, seed=3)
    net = torch_mirror.build(cfg).double().train()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in m.state_dict().items()})
    out = m.forward(x, dropout_key=dropout_key)
    dout = np.random.default_rng(4).standard_normal(out.shape)
    m.zero_grad()
    m.backward(dout)
    ref = net(torch.from_numpy(x))
    (ref * torch.from_numpy(dout)).sum().backward()
    err_logits = float(np.abs(out - ref.detach().numpy()).max())
    assert err_logits < tol
    err_grads = 0.0
    for k, p in net.named_parameters():
        g = p.grad.numpy()
        err_grads = max(err_grads, float(np.abs(m.grads[k] - g).max() / max(np.abs(g).max(), 1)))
    assert err_grads < tol
    sd = net.state_dict()
    for k, v in m.buffers.items():  # running statistics and batch counts, updated alike
        assert np.abs(v - sd[k].double().numpy()).max() < tol, k
    m.eval()
    net.eval()
    err_eval = float(np.abs(m.forward(x) - net(torch.from_numpy(x)).detach().numpy()).max())
    assert err_eval < tol
    return err_logits, err_grads, err_eval


def _onnx_agrees(cfg, size=64):
    """The ONNX graph's probabilities against ours in eval mode (float32), after one training
    forward so the running statistics are not the initial ones."""
    pytest.importorskip("onnxruntime")
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.inference.tiles import softmax

    m = build_model(cfg)
    rng = np.random.default_rng(6)
    m.forward(rng.standard_normal((2, cfg.in_channels, size, size)).astype(np.float32),
              dropout_key=1)
    m.eval()
    x = rng.random((2, cfg.in_channels, size, size)).astype(np.float32)
    err = float(np.abs(run_onnx(onnx_model(m), x) - softmax(m.forward(standardize(x)))).max())
    assert err < 1e-5
    return err


def _trains(cfg, steps=8, lr=0.05):
    """A few momentum-SGD steps on one fixed batch lower the model's loss."""
    from minunet.nn.optim import MomentumSGD, SGDConfig

    m = build_model(cfg)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, cfg.in_channels, 64, 64)).astype(cfg.dtype)
    labels = (x[:, 0] > 0).astype(np.int64)  # a learnable target: the sign of the input
    weights = np.ones(labels.shape, cfg.dtype)
    opt = MomentumSGD(m.params, SGDConfig(lr=lr, momentum=0.9))
    losses = []
    for it in range(steps):
        logits = m.forward(x, dropout_key=100 + it)
        loss, cache = m.loss_forward(logits, labels, weights)
        losses.append(float(loss))
        m.zero_grad()
        m.backward(m.loss_backward(cache))
        opt.step(m.grads, it)
    assert losses[-1] < 0.8 * losses[0], losses
    return losses


def test_torch_mirror_parity():
    x = np.random.default_rng(5).standard_normal((2, 1, 64, 64))
    _mirror_parity(MobileUNetConfig(dtype="float64", **TINY), x)


def test_torch_mirror_parity_sigmoid_rgb():
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64))
    _mirror_parity(MobileUNetConfig(dtype="float64", in_channels=3, head="sigmoid", **TINY), x)


def test_onnx_agrees_in_eval_mode():
    _onnx_agrees(MobileUNetConfig(**TINY))


def test_short_training_lowers_the_loss():
    _trains(MobileUNetConfig(**TINY))


# --- torchvision's ImageNet weights in the encoder -----------------------------------------


def _tv_mobilenet_v2(torch):
    """torchvision's mobilenet_v2 (torchvision/models/mobilenetv2.py), from torch.nn modules
    under torchvision's names: features.0 stem, features.1..17 InvertedResidual (.conv), 18 the
    1x1 to 1280, classifier (Dropout, Linear(1280, 1000))."""
    nn = torch.nn

    def cna(cin, cout, k, stride=1, groups=1):  # torchvision's Conv2dNormActivation
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU6())

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hidden = cin * t
            layers = [cna(cin, hidden, 1)] if t != 1 else []
            layers += [cna(hidden, hidden, 3, stride, hidden),
                       nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    features, cin = [cna(3, 32, 3, 2)], 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    features.append(cna(cin, 1280, 1))
    net = nn.Module()
    net.features = nn.Sequential(*features)
    net.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))
    return net


def _randomize(torch, net, seed):
    """Random weights and BatchNorm statistics (so that the mapping of every tensor counts)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
                mod.running_mean.copy_(0.2 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
                mod.num_batches_tracked.fill_(17)
    return net.double().eval()


def _features(net, x, indices):
    out, h = [], x
    for i, layer in enumerate(net.features):
        h = layer(h)
        if i in indices:
            out.append(h.detach().numpy())
    return out


def test_reference_network_is_torchvisions():
    torch = pytest.importorskip("torch")
    assert sum(p.numel() for p in _tv_mobilenet_v2(torch).parameters()) == 3_504_872


def test_encoder_weights_give_torchvisions_features(tmp_path):
    torch = pytest.importorskip("torch")
    net = _randomize(torch, _tv_mobilenet_v2(torch), seed=0)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(net.state_dict(), path)
    m = build_model(MobileUNetConfig(in_channels=3, dtype="float64", encoder_weights=str(path)))
    m.eval()
    assert m.buffers["enc.block7.dw.bn.num_batches_tracked"][0] == 17
    x = np.random.default_rng(9).standard_normal((1, 3, 64, 64))
    skips, bottom = m.encode(x)
    with _one_torch_thread(torch):
        ref = _features(net, torch.from_numpy(x), (1, 3, 6, 13, 18))
    for ours, theirs in zip([*skips, bottom], ref, strict=True):
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-10 * max(1.0, np.abs(theirs).max())
    gray = build_model(MobileUNetConfig(dtype="float64", encoder_weights=str(path)))
    w = net.state_dict()["features.0.0.weight"].numpy()
    assert np.allclose(gray.params["enc.stem.conv.weight"], w.sum(axis=1, keepdims=True),
                       rtol=0, atol=1e-15)  # smp's rule for one input channel


def test_encoder_weights_refuse_another_network(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "other.pth"
    torch.save({"features.0.0.weight": torch.zeros(32, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match="missing"):
        build_model(MobileUNetConfig(encoder_weights=str(path)))


def test_encoder_weights_without_torch_name_the_fix(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="pip install torch"):
        build_model(MobileUNetConfig(encoder_weights=str(path)))
    with pytest.raises(ValueError, match="no such file"):
        build_model(MobileUNetConfig(encoder_weights=str(tmp_path / "gone.pth")))


def test_a_checkpoint_does_not_need_the_encoder_weights_file(tmp_path):
    """train --model encoder_weights=FILE: the run's checkpoints hold the weights, so predict
    and --resume rebuild the model without FILE (which may be on another machine)."""
    torch = pytest.importorskip("torch")
    from minunet import train
    from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    net = _randomize(torch, _tv_mobilenet_v2(torch), seed=1)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(net.state_dict(), path)
    run = tmp_path / "run"
    assert train.main(["--arch", "mobile-unet", "--model", "width=1.0,decoder_base=2",
                       "--encoder-weights", str(path), "--tile", "64", "--iters", "1",
                       "--val-every", "1", "--device", "cpu", "--prefetch", "0",
                       "--data", "synthetic:n=3,size=96", "--out", str(run)]) == 0
    path.unlink()
    ckpt = load_checkpoint(run / "last.npz")
    assert ckpt.config["model"]["encoder_weights"] == str(path)  # where they came from
    model = model_from_checkpoint(ckpt, run / "last.npz")
    assert np.array_equal(model.params["enc.stem.conv.weight"],
                          ckpt.state()["enc.stem.conv.weight"])
    assert train.main(["--resume", str(run / "last.npz"), "--iters", "2"]) == 0
