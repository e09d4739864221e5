"""The U-Net: sizes, parameters, state dicts, and its gradients as a whole."""

import numpy as np
import pytest

from minunet import ops
from minunet.models.sizes import output_size, receptive_field
from minunet.models.unet import (
    ARCHITECTURES,
    UNet,
    UNetConfig,
    build_model,
    describe,
    fan_in,
    layer_table,
    parameter_shapes,
)
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.trace import KinkRecorder


def test_paper_network_numbers():
    cfg = UNetConfig()
    assert output_size(572) == 388
    assert sum(int(np.prod(s)) for s in parameter_shapes(cfg).values()) == 31_030_658
    convs = [r for r in layer_table(cfg, 572) if not r["layer"].endswith(".pool")]
    assert len(convs) == 23  # 18 3x3 + 4 up-conv + 1 1x1
    assert abs(sum(r["gflop"] for r in convs) - 301) < 1
    assert receptive_field() == 204


def test_invalid_size_is_refused_by_the_model():
    m = UNet(UNetConfig(base=2))
    with pytest.raises(ValueError, match="nearest valid sizes"):
        m.forward(np.zeros((1, 1, 200, 188), np.float32))


def test_input_checks():
    m = UNet(UNetConfig(base=2))
    with pytest.raises(ValueError, match="channels"):
        m.forward(np.zeros((1, 3, 188, 188), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        m.forward(np.zeros((1, 1, 188, 188), np.float64))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        m.forward(np.zeros((188, 188), np.float32))


def test_parameter_names_layouts_and_init():
    cfg = UNetConfig(base=8, n_classes=3, in_channels=2)
    m = UNet(cfg, seed=0)
    p = m.params
    assert p["down0.conv0.weight"].shape == (8, 2, 3, 3)
    assert p["up3.upconv.weight"].shape == (128, 64, 2, 2)  # (Cin, Cout, 2, 2)
    assert p["up0.conv0.weight"].shape == (8, 16, 3, 3)  # concat doubles the channels
    assert p["final.weight"].shape == (3, 8, 1, 1)
    assert all(not v.any() for k, v in p.items() if k.endswith(".bias"))
    # He normal: std sqrt(2 / fan_in); the up-conv's fan-in is Cin
    w = UNet(UNetConfig(base=64), seed=1).params
    assert abs(w["up0.upconv.weight"].std() - np.sqrt(2 / 128)) < 0.01 * np.sqrt(2 / 128)
    assert abs(w["down1.conv1.weight"].std() - np.sqrt(2 / (128 * 9))) < 0.01 * np.sqrt(2 / 1152)


def test_describe_table():
    text = describe(UNetConfig(), 572)
    assert "31,030,658" in text and "down0.conv1" in text and "388" in text


def test_state_dict_round_trip_and_mismatch_message():
    a, b = UNet(UNetConfig(base=4), seed=0), UNet(UNetConfig(base=4), seed=1)
    b.load_state_dict(a.state_dict())
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    other = UNet(UNetConfig(base=8)).state_dict()
    other["extra.weight"] = np.zeros(1)
    del other["final.bias"]
    with pytest.raises(ValueError) as e:
        a.load_state_dict(other)
    msg = str(e.value)
    assert "missing keys (1): final.bias" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "down0.conv0.weight: checkpoint (8, 1, 3, 3) vs model (4, 1, 3, 3)" in msg


def test_dropout_masks_depend_only_on_the_key():
    m = UNet(UNetConfig(base=2))
    x = np.random.default_rng(0).standard_normal((1, 1, 188, 188)).astype(np.float32)
    a, b = m.forward(x, dropout_key=7), m.forward(x, dropout_key=7)
    c, d = m.forward(x, dropout_key=8), m.eval().forward(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_training_flag_is_separate_from_the_dropout_key():
    m = UNet(UNetConfig(base=2))
    x = np.random.default_rng(0).standard_normal((1, 1, 188, 188)).astype(np.float32)
    assert m.training
    with pytest.raises(ValueError, match=r"needs a dropout_key.*model.eval\(\)"):
        m.forward(x)
    m.eval()
    np.testing.assert_array_equal(m.forward(x), m.forward(x, dropout_key=3))  # key ignored
    assert not m.train().forward(x, dropout_key=3).tolist() == m.eval().forward(x).tolist()
    no_dropout = UNet(UNetConfig(base=2, dropout=0.0))
    no_dropout.forward(x)  # no dropout layer: training mode needs no key


def test_release_caches_drops_every_layer_cache():
    m = UNet(UNetConfig(base=2, upconv_relu=True))
    x = np.zeros((1, 1, 188, 188), np.float32)
    m.forward(x, dropout_key=1)
    held = [(type(layer).__name__, n) for layer in m.layers() for n in layer.cache_names
            if getattr(layer, n) is not None]
    assert len(held) > 20
    m.release_caches()
    assert all(getattr(layer, n) is None for layer in m.layers() for n in layer.cache_names)


def test_build_model_buffers_and_arch():
    m = build_model(UNetConfig(base=2))
    assert isinstance(m, UNet) and m.arch == "unet" and ARCHITECTURES["unet"] is UNet
    assert m.buffers == {}
    with pytest.raises(ValueError, match="unknown architecture 'resnet'; known: .*unet"):
        UNetConfig(arch="resnet")
    with pytest.raises(ValueError, match="ops must be 'fast' or 'plain'"):
        UNetConfig(ops="quick")
    # a buffer travels with state_dict and load_state_dict like a parameter
    a, b = build_model(UNetConfig(base=2)), build_model(UNetConfig(base=2), seed=1)
    a.buffers["stat"] = np.arange(3.0, dtype=np.float32)
    b.buffers["stat"] = np.zeros(3, np.float32)
    state = a.state_dict()
    assert "stat" in state
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.buffers["stat"], [0, 1, 2])
    del state["stat"]
    with pytest.raises(ValueError, match="missing keys \\(1\\): stat"):
        b.load_state_dict(state)


def test_fan_in():
    assert fan_in("down0.conv0.weight", (64, 1, 3, 3)) == 9
    assert fan_in("up0.upconv.weight", (128, 64, 2, 2)) == 128
    assert fan_in("final.weight", (2, 64, 1, 1)) == 64
    assert fan_in("norm.scale", (64,)) == 1


def _loss_and_grads(m, x, labels, weights, key):
    logits = m.forward(x, dropout_key=key)
    loss, cache = ops.softmax_cross_entropy_forward(logits, labels, weights)
    m.zero_grad()
    m.backward(ops.softmax_cross_entropy_backward(1.0, cache))
    return float(loss)


@pytest.fixture(scope="module")
def small_net():
    """A float64 U-Net small enough for finite differences: input 188, base 2, dropout on; its
    op module wrapped by the kink recorder (minunet/nn/trace.py), which hashes which ReLUs are
    on and which pool inputs win: the linear piece of the network a forward pass ran in."""
    rng = np.random.default_rng(3)
    m = UNet(UNetConfig(base=2, dtype="float64", upconv_relu=True), seed=3)
    for k in m.params:  # non-zero biases so that no bias gradient is trivially exact
        if k.endswith(".bias"):
            m.params[k] = rng.standard_normal(m.params[k].shape) * 0.1
    m.ops = KinkRecorder(m.ops)
    m.build(m.ops)
    x = rng.standard_normal((2, 1, 188, 188))
    labels = rng.integers(0, 2, (2, 4, 4))
    weights = rng.random((2, 4, 4)) + 0.5
    _loss_and_grads(m, x, labels, weights, key=11)
    grads = {k: v.copy() for k, v in m.grads.items()}
    return m, x, labels, weights, grads


def _loss_at(m, x, labels, weights):
    m.ops.reset()
    logits = m.forward(x, dropout_key=11)
    return float(ops.softmax_cross_entropy_forward(logits, labels, weights)[0])


def _pattern(m):
    """The linear piece of the last forward (ReLU signs, pool winners), as a hash."""
    return m.ops.digest()


def _central_difference(m, set_params, x, labels, weights, h):
    """(L(+h) - L(-h)) / 2h, halving h until both sides lie in one region (no kink crossed)."""
    for _ in range(6):
        set_params(h)
        up, p_up = _loss_at(m, x, labels, weights), _pattern(m)
        set_params(-h)
        down, p_down = _loss_at(m, x, labels, weights), _pattern(m)
        set_params(0.0)
        if p_up == p_down:
            return (up - down) / (2 * h)
        h /= 4
    raise AssertionError("every step crossed a ReLU/max-pool kink")


GRAD_TOL = 1e-6  # whole-network threshold (issue: relative error <= 1e-6)


@pytest.mark.parametrize("door", ["plain", "fast"])
def test_whole_network_directional_derivatives(door):
    """The generic whole-network check (minunet/nn/gradcheck.py, model_gradcheck), which any
    architecture of the registry runs, on the U-Net."""
    rng = np.random.default_rng(3)
    m = UNet(UNetConfig(base=2, dtype="float64", upconv_relu=True, ops=door), seed=3)
    for k in m.params:
        if k.endswith(".bias"):
            m.params[k] = rng.standard_normal(m.params[k].shape) * 0.1
    x = rng.standard_normal((2, 1, 188, 188))
    labels = rng.integers(0, 2, (2, 4, 4))
    weights = rng.random((2, 4, 4)) + 0.5
    results = model_gradcheck(m, x, labels, weights, dropout_key=11, n_dirs=4, threshold=GRAD_TOL)
    assert len(results) == 4 and all(r.passed for r in results), results


def test_whole_network_single_parameters_in_every_layer(small_net):
    m, x, labels, weights, grads = small_net
    rng = np.random.default_rng(1)
    h = 1e-5
    worst = 0.0
    for k, v in m.params.items():
        idx = tuple(int(rng.integers(s)) for s in v.shape)
        old = v[idx]

        def move(t, v=v, idx=idx, old=old):
            v[idx] = old + t

        numeric, analytic = _central_difference(m, move, x, labels, weights, h), grads[k][idx]
        rel = abs(numeric - analytic) / max(abs(numeric) + abs(analytic), 1e-8)
        worst = max(worst, rel)
        assert rel <= GRAD_TOL, (k, idx, numeric, analytic, rel)
