"""The U-Net with BatchNorm (minunet/models/unet_bn.py): the port's parameter counts, the
whole-network gradient check (BatchNorm in training mode) on both doors, parity with the
PyTorch mirror (logits, every parameter gradient, running statistics; train and eval), ONNX in
eval mode, the geometry, and a short training run."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.models.registry import build_model, get
from minunet.models.unet_bn import UNetBN, UNetBNConfig, parameter_shapes
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.model import standardize


def _count(cfg) -> int:
    return sum(int(np.prod(s)) for s in parameter_shapes(cfg).values())


def _batch(rng, cin=1, n=2, s=8):
    x = rng.standard_normal((n, cin, s, s))
    return x, rng.integers(0, 2, (n, s, s)), np.ones((n, s, s))


def test_reference_parameter_counts():
    # milesial/Pytorch-UNet: UNet(n_channels, n_classes, bilinear), convs without bias
    assert _count(UNetBNConfig()) == 31_036_546  # 1 -> 2 classes
    assert _count(UNetBNConfig(in_channels=3, head="sigmoid")) == 31_037_633  # 3 -> 1
    assert _count(UNetBNConfig(in_channels=3, head="sigmoid", bilinear=True)) == 17_262_977


def test_names_shapes_and_buffers():
    shapes = parameter_shapes(UNetBNConfig())
    assert shapes["down0.conv0.conv.weight"] == (64, 1, 3, 3)
    assert shapes["down0.conv0.bn.weight"] == (64,)
    assert "down0.conv0.conv.bias" not in shapes  # no bias before a BatchNorm
    assert shapes["bottleneck.conv1.conv.weight"] == (1024, 1024, 3, 3)
    assert shapes["up3.upconv.weight"] == (1024, 512, 2, 2)  # (Cin, Cout, 2, 2)
    assert shapes["up0.upconv.bias"] == (64,)
    assert shapes["up0.conv0.conv.weight"] == (64, 128, 3, 3)  # [skip, up]
    assert shapes["final.weight"] == (2, 64, 1, 1) and shapes["final.bias"] == (2,)
    bil = parameter_shapes(UNetBNConfig(bilinear=True))
    assert not any(".upconv." in k for k in bil)
    assert bil["bottleneck.conv1.conv.weight"] == (512, 512, 3, 3)
    assert bil["up3.conv0.conv.weight"] == (512, 1024, 3, 3)  # mid = in // 2
    assert bil["up3.conv1.conv.weight"] == (256, 512, 3, 3)
    assert bil["up0.conv1.conv.weight"] == (64, 64, 3, 3)
    m = build_model(UNetBNConfig(base=2, depth=2))
    assert "up1.conv1.bn.running_var" in m.buffers and "final.bias" in m.params


def test_config_refuses():
    with pytest.raises(ValueError, match="head"):
        UNetBNConfig(head="softmax2")
    with pytest.raises(ValueError, match="n_classes"):
        UNetBNConfig(head="sigmoid", n_classes=3)


def test_geometry_refuses_off_grid_sizes():
    m = build_model(UNetBNConfig(base=2, depth=2))
    assert m.geometry.grid == 4 and m.geometry.output_size(16) == 16
    with pytest.raises(ValueError, match="16 or 20"):
        m.forward(np.zeros((1, 1, 18, 18), np.float32))


def test_layer_table_and_describe():
    for cfg in (UNetBNConfig(base=4, depth=3), UNetBNConfig(base=4, depth=3, bilinear=True,
                                                             head="sigmoid")):
        rows = UNetBN.layer_table(cfg, 32)
        assert sum(r["params"] for r in rows) == build_model(cfg).num_parameters()
        assert "input 1x32x32" in get("unet-bn").describe(cfg, 32)


@pytest.mark.parametrize("ops", ["plain", "fast"])
@pytest.mark.parametrize("variant", [dict(), dict(head="sigmoid", loss="bce_dice"),
                                     dict(bilinear=True, in_channels=2)])
def test_whole_network_gradcheck(ops, variant):
    cfg = UNetBNConfig(base=2, depth=2, dtype="float64", ops=ops, **variant)
    m = build_model(cfg, seed=1)
    x, labels, weights = _batch(np.random.default_rng(2), cin=cfg.in_channels)
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


@pytest.mark.parametrize("variant", [dict(), dict(head="sigmoid", in_channels=3),
                                     dict(bilinear=True)])
def test_torch_mirror_train_and_eval(variant):
    torch = pytest.importorskip("torch")
    cfg = UNetBNConfig(base=4, depth=3, dtype="float64", **variant)
    x = np.random.default_rng(7).standard_normal((2, cfg.in_channels, 16, 16))
    errors = _torch_parity(cfg, x, torch)
    assert all(e < 1e-10 for e in errors.values()), errors


def test_onnx_agrees_in_eval_mode():
    pytest.importorskip("onnxruntime")
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.inference.tiles import softmax

    for variant in (dict(), dict(head="sigmoid", bilinear=True)):
        m = build_model(UNetBNConfig(base=4, depth=3, **variant))
        x = np.random.default_rng(6).random((2, 1, 16, 16)).astype(np.float32)
        m.forward(standardize(x))  # one training batch: running statistics != initial
        m.eval()
        ref = softmax(m.forward(standardize(x)))
        assert np.abs(run_onnx(onnx_model(m), x) - ref).max() < 1e-5


def test_short_train_lowers_the_loss():
    from minunet.nn.optim import MomentumSGD, SGDConfig

    m = build_model(UNetBNConfig(base=4, depth=2), seed=0)
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
