"""eff-unet (minunet/models/eff_unet.py): smp's Unet with an EfficientNet encoder.

The reference counts (torchvision's efficientnet_b0, b1 and b7 without their classifiers), the
whole-network gradient check on both doors with stochastic depth on, the per-sample stochastic
depth masks, PyTorch parity, ONNX, a short training run, and torchvision ImageNet weights in the
encoder (its maps equal torchvision's network's on the same weights). torchvision is not
installable next to this CPU torch, so the reference network is built here from torch.nn modules
under torchvision's names (torchvision/models/efficientnet.py's layout); its parameter counts are
torchvision's (5,288,548 for B0, 7,794,184 for B1).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minunet.models import build_model
from minunet.models.eff_unet import EffUNet, EffUNetConfig, StochasticDepth, encoder_shapes
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.layers import op_module
from tests.family.test_mobile_unet import (
    _batch,
    _count,
    _features,
    _mirror_parity,
    _model_count,
    _one_torch_thread,
    _onnx_agrees,
    _randomize,
    _trains,
)

TINY = dict(width=0.25, decoder_base=2)  # a test network: 8..80 encoder channels, decoder 32..2


# --- reference counts ---------------------------------------------------------------------


@pytest.mark.parametrize("variant,total,head", [("b0", 5_288_548, 1280),
                                                 ("b1", 7_794_184, 1280),
                                                 ("b7", 66_347_960, 2560)])
def test_encoder_counts_are_torchvisions(variant, total, head):
    # torchvision's efficientnet_<variant> without its classifier Linear(head, 1000)
    assert _count(encoder_shapes(3, variant)) == total - (head * 1000 + 1000)


def test_parameter_counts():
    assert _count(encoder_shapes(3, "b0")) == 4_007_548
    assert _model_count(EffUNet, EffUNetConfig(in_channels=3, head="sigmoid")) == 8_463_309
    assert _model_count(EffUNet, EffUNetConfig()) == 8_462_878  # 1 -> 2 classes
    rows = EffUNet.layer_table(EffUNetConfig(), 64)  # the trace sees every parameter
    assert sum(r["params"] for r in rows) == 8_462_878
    assert "enc.stage6.block3.se.fc2" in EffUNet.describe(EffUNetConfig(), 64)


# --- stochastic depth ---------------------------------------------------------------------


def test_stochastic_depth_drops_whole_images_reproducibly():
    layer = StochasticDepth(op_module("plain"), 0.3)
    x = np.random.default_rng(0).standard_normal((64, 3, 4, 4))
    out = layer.forward(x, key=11)
    kept = np.array([np.allclose(o, xi / 0.7, rtol=0, atol=1e-15) for o, xi in zip(out, x,
                                                                                       strict=True)])
    dropped = np.all(out == 0, axis=(1, 2, 3))
    assert np.all(kept ^ dropped) and 5 < dropped.sum() < 35  # per image, about 30 % of 64
    d = np.random.default_rng(1).standard_normal(x.shape)
    expect = np.where(dropped[:, None, None, None], 0, d / 0.7)
    assert np.allclose(layer.backward(d), expect, rtol=1e-15, atol=0)
    assert np.array_equal(StochasticDepth(op_module("plain"), 0.3).forward(x, key=11), out)
    assert not np.array_equal(StochasticDepth(op_module("plain"), 0.3).forward(x, key=12), out)
    assert StochasticDepth(op_module("plain"), 0.3).forward(x, key=None) is x  # inference


def test_stochastic_depth_in_the_model():
    m = build_model(EffUNetConfig(dtype="float64", **TINY))
    x, _, _ = _batch(np.random.default_rng(3), n=4)
    with pytest.raises(ValueError, match="dropout_key"):
        m.forward(x)
    # the same key gives the same step, another key (other images dropped) another one
    a, b = m.forward(x, dropout_key=5), m.forward(x, dropout_key=5)
    assert np.array_equal(a, b) and not np.array_equal(a, m.forward(x, dropout_key=6))
    assert m.blocks[1].drop is None and m.blocks[-1].drop is None  # no residual there
    assert m.blocks[2].drop.p == pytest.approx(0.2 * 2 / 16)  # 0.2 k / 16 for block k
    assert m.blocks[14].drop.p == pytest.approx(0.2 * 14 / 16)
    m.eval()
    assert np.array_equal(m.forward(x), m.forward(x, dropout_key=9))  # off in inference


# --- the whole-network gradient check -----------------------------------------------------


@pytest.mark.parametrize("ops", ["plain", "fast"])
def test_gradcheck_with_stochastic_depth(ops):
    m = build_model(EffUNetConfig(dtype="float64", ops=ops, **TINY))
    x, labels, weights = _batch(np.random.default_rng(2), n=4)  # 4 images: some dropped
    results = model_gradcheck(m, x, labels, weights, dropout_key=7, n_dirs=3)
    assert all(r.passed for r in results), results


def test_gradcheck_sigmoid_head_bce_dice():
    m = build_model(EffUNetConfig(dtype="float64", head="sigmoid", loss="bce_dice",
                                  in_channels=3, **TINY))
    x, labels, weights = _batch(np.random.default_rng(2), cin=3)
    results = model_gradcheck(m, x, labels, weights, dropout_key=3, n_dirs=3)
    assert all(r.passed for r in results), results


# --- PyTorch parity, ONNX, training -------------------------------------------------------


def test_torch_mirror_parity():
    x = np.random.default_rng(5).standard_normal((2, 1, 64, 64))
    # stochastic depth off: the mirror is read off the inference forward (it has none)
    _mirror_parity(EffUNetConfig(dtype="float64", drop_connect=0.0, **TINY), x)


def test_torch_mirror_parity_b5_batchnorm():
    # B5: BatchNorm eps 1e-3, momentum 0.01, 39 blocks
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64))
    _mirror_parity(EffUNetConfig(dtype="float64", variant="b5", drop_connect=0.0, in_channels=3,
                                 head="sigmoid", **TINY), x)


def test_onnx_agrees_in_eval_mode():
    _onnx_agrees(EffUNetConfig(**TINY))


def test_short_training_lowers_the_loss():
    _trains(EffUNetConfig(**TINY))


# --- torchvision's ImageNet weights in the encoder -----------------------------------------


def _make_divisible(v, divisor=8):  # torchvision's _make_divisible
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _tv_efficientnet(torch, width_mult=1.0, depth_mult=1.0):
    """torchvision's efficientnet (torchvision/models/efficientnet.py) from torch.nn modules
    under torchvision's names, eval-mode behaviour (stochastic depth is the identity there)."""
    nn = torch.nn

    def cna(cin, cout, k, stride=1, groups=1, act=True):  # Conv2dNormActivation
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([nn.SiLU()] if act else []))

    class SqueezeExcitation(nn.Module):
        def __init__(self, c, squeeze):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

        def forward(self, x):
            s = x.mean(dim=(2, 3), keepdim=True)
            return torch.sigmoid(self.fc2(torch.nn.functional.silu(self.fc1(s)))) * x

    class MBConv(nn.Module):
        def __init__(self, t, k, stride, cin, cout):
            super().__init__()
            hidden = _make_divisible(cin * t)
            layers = [cna(cin, hidden, 1)] if hidden != cin else []
            layers += [cna(hidden, hidden, k, stride, hidden),
                       SqueezeExcitation(hidden, max(1, cin // 4)), cna(hidden, cout, 1, act=False)]
            self.block = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return self.block(x) + x if self.residual else self.block(x)

    conf = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2),
            (6, 3, 2, 40, 80, 3), (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4),
            (6, 3, 1, 192, 320, 1)]
    features = [cna(3, _make_divisible(32 * width_mult), 3, 2)]
    for t, k, s, cin, cout, n in conf:
        cin, cout = _make_divisible(cin * width_mult), _make_divisible(cout * width_mult)
        features.append(nn.Sequential(*[MBConv(t, k, s if i == 0 else 1, cin if i == 0 else cout,
                                               cout) for i in range(math.ceil(n * depth_mult))]))
    last = _make_divisible(320 * width_mult)
    features.append(cna(last, 4 * last, 1))
    net = nn.Module()
    net.features = nn.Sequential(*features)
    net.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * last, 1000))
    return net


def test_reference_network_is_torchvisions():
    torch = pytest.importorskip("torch")
    assert sum(p.numel() for p in _tv_efficientnet(torch).parameters()) == 5_288_548
    b1 = _tv_efficientnet(torch, 1.0, 1.1)
    assert sum(p.numel() for p in b1.parameters()) == 7_794_184
    from minunet.models.eff_unet import torchvision_names

    names = torchvision_names("b1")  # every tensor of the B1 encoder is mapped, and only those
    assert set(names) == {k for k in b1.state_dict() if not k.startswith("classifier.")}
    m = EffUNet.__new__(EffUNet)
    m.config = EffUNetConfig(in_channels=3, variant="b1")
    assert set(names.values()) == set(m.parameter_shapes()) - {
        k for k in m.parameter_shapes() if not k.startswith("enc.")} | set(
        k for k in m.buffer_shapes() if k.startswith("enc."))


def test_encoder_weights_give_torchvisions_features(tmp_path):
    torch = pytest.importorskip("torch")
    net = _randomize(torch, _tv_efficientnet(torch), seed=0)
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(net.state_dict(), path)
    m = build_model(EffUNetConfig(in_channels=3, dtype="float64", encoder_weights=str(path)))
    m.eval()
    x = np.random.default_rng(9).standard_normal((1, 3, 64, 64))
    skips, bottom = m.encode(x)
    with _one_torch_thread(torch):  # the stem, stages 2, 3, 5, the head
        ref = _features(net, torch.from_numpy(x), (0, 2, 3, 5, 8))
    for ours, theirs in zip([*skips, bottom], ref, strict=True):
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-10 * max(1.0, np.abs(theirs).max())
