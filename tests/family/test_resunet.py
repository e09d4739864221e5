"""The residual U-Net (minunet/models/resunet.py): its parameter count at the chosen reference
configuration, the whole-network gradient check (BatchNorm in training mode) on both doors,
parity with the PyTorch mirror (logits, every parameter gradient, running statistics; train
and eval), ONNX in eval mode, the geometry, and a short training run."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.models.registry import build_model, get
from minunet.models.resunet import ResUNet, ResUNetConfig, parameter_shapes
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.model import standardize


def _count(cfg, keep=lambda name: True) -> int:
    return sum(int(np.prod(s)) for k, s in parameter_shapes(cfg).items() if keep(k))


def _batch(rng, cin=1, n=2, s=8):
    x = rng.standard_normal((n, cin, s, s))
    return x, rng.integers(0, 2, (n, s, s)), np.ones((n, s, s))


def test_reference_parameter_count():
    # base 64, depth 3 (widths 64, 128, 256, bridge 512), 1x1 stride-s projection shortcuts
    # with BatchNorm, bilinear up-sampling, convs with bias, a 1x1 sigmoid head: the layers
    # of edwinpalegre/EE8204-ResUNet, 3 -> 1
    cfg = ResUNetConfig(in_channels=3)
    assert _count(cfg) == 8_223_809
    assert _count(ResUNetConfig()) == 8_222_529  # one input channel
    assert _count(ResUNetConfig(in_channels=3, upsample="nearest")) == 8_223_809
    # the paper's "7.8 M": the same network without the shortcut projections
    assert _count(cfg, lambda k: ".skip." not in k) == 7_789_313


def test_names_and_shapes():
    shapes = parameter_shapes(ResUNetConfig(in_channels=3))
    assert "enc0.bn0.weight" not in shapes  # the first unit: input straight into conv0
    assert shapes["enc0.conv0.weight"] == (64, 3, 3, 3)
    assert shapes["enc1.bn0.weight"] == (64,)  # pre-activation of the unit's input
    assert shapes["enc1.conv0.weight"] == (128, 64, 3, 3)
    assert shapes["enc1.skip.conv.weight"] == (128, 64, 1, 1)
    assert shapes["bridge.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["dec2.bn0.weight"] == (768,)  # [up 512, skip 256]
    assert shapes["dec2.conv0.weight"] == (256, 768, 3, 3)
    assert shapes["dec0.skip.bn.bias"] == (64,)
    assert shapes["final.weight"] == (1, 64, 1, 1)
    assert parameter_shapes(ResUNetConfig(head="softmax", n_classes=3))["final.bias"] == (3,)
    m = build_model(ResUNetConfig(base=2, depth=2))
    assert "dec1.skip.bn.running_mean" in m.buffers and "enc0.bn1.num_batches_tracked" in m.buffers


def test_config_refuses():
    with pytest.raises(ValueError, match="upsample"):
        ResUNetConfig(upsample="transpose")
    with pytest.raises(ValueError, match="n_classes"):
        ResUNetConfig(n_classes=3)  # the sigmoid head is two-class
    with pytest.raises(ValueError, match="head"):
        ResUNetConfig(head="tanh")


def test_geometry():
    m = build_model(ResUNetConfig(base=2))
    assert m.geometry.grid == 8 and m.geometry.output_size(24) == 24
    with pytest.raises(ValueError, match="16 or 24"):
        m.forward(np.zeros((1, 1, 20, 20), np.float32))
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 24)).astype(np.float32)
    logits = m.forward(x)  # non-square, in training mode
    assert logits.shape == (2, 2, 16, 24) and np.all(logits[:, 0] == 0)  # [0, z]


def test_layer_table_and_describe():
    for cfg in (ResUNetConfig(base=4), ResUNetConfig(base=4, head="softmax", upsample="nearest")):
        rows = ResUNet.layer_table(cfg, 32)
        assert sum(r["params"] for r in rows) == build_model(cfg).num_parameters()
        assert "input 1x32x32" in get("resunet").describe(cfg, 32)


@pytest.mark.parametrize("ops", ["plain", "fast"])
@pytest.mark.parametrize("variant", [dict(), dict(loss="bce_dice", in_channels=2),
                                     dict(head="softmax", n_classes=3, upsample="nearest")])
def test_whole_network_gradcheck(ops, variant):
    cfg = ResUNetConfig(base=2, depth=2, dtype="float64", ops=ops, **variant)
    m = build_model(cfg, seed=1)
    rng = np.random.default_rng(2)
    x, labels, weights = _batch(rng, cin=cfg.in_channels)
    labels = rng.integers(0, cfg.n_classes, labels.shape)
    results = model_gradcheck(m, x, labels, weights)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


# --- PyTorch parity --------------------------------------------------------------


def _torch_parity(cfg, x, torch):
    """Max |difference| of logits and of every parameter gradient between the model and its
    torch mirror (transplanted weights), training mode then eval mode, and of the buffers."""
    from minunet.exporters import torch_mirror

    m = build_model(cfg, seed=3)
    net = torch_mirror.build(cfg).double().train()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                         m.state_dict().items()})
    errors = {}
    xt = torch.from_numpy(x)
    logits = m.forward(x)
    out = net(xt)
    errors["train logits"] = np.abs(logits - out.detach().numpy()).max()
    dlogits = np.random.default_rng(8).standard_normal(logits.shape)
    m.zero_grad()
    m.backward(dlogits)
    out.backward(torch.from_numpy(dlogits))
    named = dict(net.named_parameters())
    assert set(named) == set(m.grads)
    errors["grads"] = max(np.abs(m.grads[k] - p.grad.numpy()).max() /
                          max(1.0, np.abs(m.grads[k]).max()) for k, p in named.items())
    sd = net.state_dict()
    errors["buffers"] = max(np.abs(v - sd[k].double().numpy()).max()
                            for k, v in m.buffers.items())
    m.eval()
    net.eval()
    errors["eval logits"] = np.abs(m.forward(x) - net(xt).detach().numpy()).max()
    return errors


@pytest.mark.parametrize("variant", [dict(in_channels=3),
                                     dict(head="softmax", upsample="nearest")])
def test_torch_mirror_train_and_eval(variant):
    torch = pytest.importorskip("torch")
    cfg = ResUNetConfig(base=4, dtype="float64", **variant)
    x = np.random.default_rng(7).standard_normal((2, cfg.in_channels, 16, 16))
    errors = _torch_parity(cfg, x, torch)
    assert all(e < 1e-10 for e in errors.values()), errors


def test_onnx_agrees_in_eval_mode():
    pytest.importorskip("onnxruntime")
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.inference.tiles import softmax

    for variant in (dict(), dict(head="softmax", upsample="nearest")):
        m = build_model(ResUNetConfig(base=4, **variant))
        x = np.random.default_rng(6).random((2, 1, 16, 16)).astype(np.float32)
        m.forward(standardize(x))  # one training batch: running statistics != initial
        m.eval()
        ref = softmax(m.forward(standardize(x)))
        assert np.abs(run_onnx(onnx_model(m), x) - ref).max() < 1e-5


def test_short_train_lowers_the_loss():
    from minunet.nn.optim import MomentumSGD, SGDConfig

    m = build_model(ResUNetConfig(base=4, depth=2), seed=0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)  # a learnable target: the sign of the input
    weights = np.ones(labels.shape, np.float32)
    opt = MomentumSGD(m.params, SGDConfig(lr=0.05, momentum=0.9))
    losses = []
    for it in range(8):
        loss, cache = m.loss_forward(m.forward(x), labels, weights)
        losses.append(float(loss))
        m.zero_grad()
        m.backward(m.loss_backward(cache))
        opt.step(m.grads, it)
    assert losses[-1] < 0.7 * losses[0], losses
