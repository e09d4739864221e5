"""UNet++ (minunet/models/unetpp.py): the Keras code's parameter counts, deep supervision on
and off, accurate against fast (pruned) inference, the log-mean-softmax average of the heads,
the whole-network gradient check on both doors (training with and without deep supervision,
eval in both modes), parity with the PyTorch mirror (logits and every parameter gradient,
training heads and both inference modes), ONNX in both modes, and a short training run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minunet.models.registry import build_model, config_for, get
from minunet.models.unet import UNetConfig
from minunet.models.unet import parameter_shapes as unet_shapes
from minunet.models.unetpp import UNetPP, UNetPPConfig, nodes, parameter_shapes
from minunet.nn.gradcheck import check_op, model_gradcheck
from minunet.nn.model import Heads, standardize
from minunet.ops.elementwise import log_mean_softmax_backward, log_mean_softmax_forward


def _count(shapes) -> int:
    return sum(int(np.prod(s)) for s in shapes.values())


def _batch(rng, n=2, s=16):
    x = rng.standard_normal((n, 1, s, s))
    return x, rng.integers(0, 2, (n, s, s)), np.ones((n, s, s))


def _model(seed=1, **options):
    """A small float64 UNet++ (base 2, depth 4: 16 px is its smallest input) with biases
    drawn in [0.05, 0.2]: with zero biases a ReLU whose whole receptive field was dropped (or
    is padding) sits exactly on its kink, and every step of the gradient check crosses it."""
    m = build_model(UNetPPConfig(**{"base": 2, "dtype": "float64", **options}), seed=seed)
    rng = np.random.default_rng(seed + 100)
    for k, v in m.params.items():
        if k.endswith(".bias"):
            v[...] = rng.uniform(0.05, 0.2, v.shape)
    return m


def _softmax(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- the reference counts and the configuration ----------------------------------------


def test_reference_parameter_counts():
    # MrGiovanni/UNetPlusPlus, keras/helper_functions.py: UNetPlusPlus(96, 96, 1), summary()
    assert _count(parameter_shapes(UNetPPConfig(deep_supervision=False))) == 9_041_601
    assert _count(parameter_shapes(UNetPPConfig())) == 9_041_700  # the four heads
    # the same file's U_Net (widths 32..512, one sigmoid output): 7,759,521; minunet's
    # unet at base 32 has the same layers with a two-class softmax head (32 -> 2: 33 more)
    assert _count(unet_shapes(UNetConfig(base=32))) == 7_759_521 + 33


def test_names_and_shapes():
    shapes = parameter_shapes(UNetPPConfig())
    assert shapes["x0_0.conv0.weight"] == (32, 1, 3, 3)
    assert shapes["x4_0.conv1.weight"] == (512, 512, 3, 3)
    assert shapes["x3_1.upconv.weight"] == (512, 256, 2, 2)  # (Cin, Cout, 2, 2)
    assert shapes["x0_4.conv0.weight"] == (32, 5 * 32, 3, 3)  # [up, x00, x01, x02, x03]
    assert shapes["x1_2.conv0.weight"] == (64, 3 * 64, 3, 3)
    assert [k for k in shapes if k.startswith("head")] == [
        f"head{j}.{p}" for j in (1, 2, 3, 4) for p in ("weight", "bias")]
    assert shapes["head1.weight"] == (1, 32, 1, 1)
    one = parameter_shapes(UNetPPConfig(deep_supervision=False))
    assert [k for k in one if k.startswith("head")] == ["head4.weight", "head4.bias"]
    soft = parameter_shapes(UNetPPConfig(head="softmax", n_classes=3, loss="softmax_cross_entropy"))
    assert soft["head2.weight"] == (3, 32, 1, 1)
    assert nodes(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]


def test_config_defaults_and_refusals():
    c = config_for("unetpp", {})
    assert (c.loss, c.head, c.mode, c.deep_supervision, c.pruned_depth) == (
        "bce_dice", "sigmoid", "accurate", True, 4)
    with pytest.raises(ValueError, match="deep supervision"):
        UNetPPConfig(deep_supervision=False, prune=2)
    with pytest.raises(ValueError, match="prune"):
        UNetPPConfig(prune=5)
    with pytest.raises(ValueError, match="mode"):
        UNetPPConfig(mode="pruned")
    with pytest.raises(ValueError, match="n_classes"):
        UNetPPConfig(n_classes=3, loss="softmax_cross_entropy")
    m = build_model(UNetPPConfig(base=2))
    assert m.geometry.grid == 16 and m.geometry.output_size(32) == 32
    with pytest.raises(ValueError, match="16 or 32"):
        m.eval().forward(np.zeros((1, 1, 24, 24), np.float32))
    with pytest.raises(ValueError, match="dropout_key"):
        m.train().forward(np.zeros((1, 1, 16, 16), np.float32))


# --- what forward returns: deep supervision, accurate and fast inference -----------------


def test_deep_supervision_on_and_off():
    x, _, _ = _batch(np.random.default_rng(0))
    m = _model(dropout=0.0)
    heads = m.forward(x)
    assert isinstance(heads, Heads) and len(heads) == 4
    for a in heads:
        assert a.shape == (2, 2, 16, 16) and np.all(a[:, 0] == 0)  # sigmoid heads: [0, z]
    off = _model(dropout=0.0, deep_supervision=False)
    out = off.forward(x)
    assert not isinstance(out, Heads) and out.shape == (2, 2, 16, 16)
    assert np.array_equal(out, off.eval().forward(x))  # one head in both modes
    for k in off.params:  # the same weights (same names, same draws) give head 4
        off.params[k][...] = m.params[k]
    assert np.array_equal(off.train().forward(x), heads[3])


def test_accurate_mode_averages_the_heads_probabilities():
    x, _, _ = _batch(np.random.default_rng(1))
    m = _model(dropout=0.0)
    heads = m.forward(x)
    out = m.eval().forward(x)
    assert out.shape == (2, 2, 16, 16)
    mean = np.mean([_softmax(a) for a in heads], axis=0)
    assert np.abs(_softmax(out) - mean).max() < 1e-14
    assert np.abs(np.exp(out).sum(axis=1) - 1).max() < 1e-14  # normalised log-probabilities


@pytest.mark.parametrize("prune", [1, 2, 3, 4])
def test_fast_mode_is_head_prune_and_skips_the_other_nodes(prune):
    x, _, _ = _batch(np.random.default_rng(2))
    m = _model(dropout=0.0, mode="fast", prune=prune)
    heads = m.forward(x)  # training: every node, every head
    assert np.array_equal(m.eval().forward(x), heads[prune - 1])
    cfg = UNetPPConfig(base=2, mode="fast", prune=prune)
    rows = UNetPP.layer_table(cfg, 16)
    units = {r["layer"].split(".")[0] for r in rows if r["params"]}
    assert units == {f"x{i}_{j}" for i, j in nodes(prune)} | {f"head{prune}"}


def test_log_mean_softmax_op():
    rng = np.random.default_rng(3)
    heads = {f"a{j}": rng.standard_normal((2, 3, 4, 5)) for j in range(4)}
    results = check_op("log_mean_softmax", log_mean_softmax_forward, log_mean_softmax_backward,
                       heads, list(heads), rng)
    assert all(r.passed for r in results), results
    # saturated heads: the probability of class 1 rounds to 1 in float32, the logits stay finite
    # (heads z = 40 and 50: the mean of 1 - p is (e^-40 + e^-50) / 2 up to 1e-17 of it)
    a, b = (np.concatenate([np.zeros((1, 1, 2, 2)), np.full((1, 1, 2, 2), z)], axis=1)
            .astype(np.float32) for z in (40.0, 50.0))
    out, _ = log_mean_softmax_forward(a, b)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    assert np.allclose(out[:, 1] - out[:, 0], 40 + np.log(2 / (1 + np.exp(-10.0))), rtol=1e-6)


# --- the whole-network gradient check ---------------------------------------------------


@pytest.mark.parametrize("ops", ["plain", "fast"])
@pytest.mark.parametrize("variant", [
    dict(),  # deep supervision: a Heads, the mean of bce_dice over the heads; dropout 0.5
    dict(deep_supervision=False),  # one head
    dict(head="softmax", loss="softmax_cross_entropy", dropout=0.0),
])
def test_whole_network_gradcheck_training(ops, variant):
    m = _model(ops=ops, **variant)
    x, labels, weights = _batch(np.random.default_rng(4))
    results = model_gradcheck(m, x, labels, weights, dropout_key=11)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


@pytest.mark.parametrize("mode,prune", [("accurate", 0), ("fast", 2)])
def test_whole_network_gradcheck_eval(mode, prune):
    # the inference graphs: the heads' log-mean-softmax, and the pruned network
    m = _model(mode=mode, prune=prune).eval()
    x, labels, weights = _batch(np.random.default_rng(5))
    results = model_gradcheck(m, x, labels, weights)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


# --- PyTorch parity -------------------------------------------------------------------


def _mirror(cfg, m, torch):
    from minunet.exporters import torch_mirror

    net = torch_mirror.build(cfg).double()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in m.state_dict().items()})
    return net


def _grad_error(m, nets):
    """Max relative difference of every parameter gradient: the model's against the sum of
    the torch modules' (one module per head; a pruned one leaves the nodes it skips without
    a gradient: 0)."""
    def grad(net, k):
        g = dict(net.named_parameters())[k].grad
        return 0.0 if g is None else g.numpy()

    total = {k: sum(grad(n, k) for n in nets) for k in m.grads}
    return max(np.abs(m.grads[k] - total[k]).max() / max(1.0, np.abs(m.grads[k]).max())
               for k in m.grads)


@pytest.mark.parametrize("mode,prune", [("accurate", 0), ("fast", 1), ("fast", 3)])
def test_torch_mirror_eval(mode, prune):
    torch = pytest.importorskip("torch")
    cfg = UNetPPConfig(base=4, dtype="float64", mode=mode, prune=prune)
    m = _model(seed=3, base=4, mode=mode, prune=prune).eval()
    net = _mirror(cfg, m, torch).eval()
    x = np.random.default_rng(7).standard_normal((2, 1, 16, 16))
    xt = torch.from_numpy(x)
    logits, out = m.forward(x), net(xt)
    assert np.abs(logits - out.detach().numpy()).max() < 1e-10
    dlogits = np.random.default_rng(8).standard_normal(logits.shape)
    m.zero_grad()
    m.backward(dlogits)
    out.backward(torch.from_numpy(dlogits))
    assert _grad_error(m, [net]) < 1e-10


def test_torch_mirror_training_heads():
    # training with deep supervision returns four heads; the mirror of fast mode prune=L is
    # head L's network, so the heads' gradient is the sum over the four mirrors' gradients
    torch = pytest.importorskip("torch")
    m = _model(seed=4, base=4, dropout=0.0)
    x = np.random.default_rng(9).standard_normal((2, 1, 16, 16))
    heads = m.forward(x)
    dheads = Heads(np.random.default_rng(10 + j).standard_normal(a.shape)
                   for j, a in enumerate(heads))
    m.zero_grad()
    m.backward(dheads)
    nets = []
    for prune in (1, 2, 3, 4):
        cfg = dataclasses.replace(m.config, mode="fast", prune=prune)
        net = _mirror(cfg, m, torch).train()
        out = net(torch.from_numpy(x))
        assert np.abs(heads[prune - 1] - out.detach().numpy()).max() < 1e-10
        out.backward(torch.from_numpy(dheads[prune - 1]))
        nets.append(net)
    assert _grad_error(m, nets) < 1e-10


def test_torch_mirror_without_deep_supervision_train_mode():
    torch = pytest.importorskip("torch")
    cfg = UNetPPConfig(base=4, dtype="float64", deep_supervision=False, dropout=0.0)
    m = _model(seed=5, base=4, deep_supervision=False, dropout=0.0)
    net = _mirror(cfg, m, torch).train()
    x = np.random.default_rng(11).standard_normal((2, 1, 16, 16))
    logits, out = m.forward(x), net(torch.from_numpy(x))
    assert np.abs(logits - out.detach().numpy()).max() < 1e-10
    dlogits = np.random.default_rng(12).standard_normal(logits.shape)
    m.zero_grad()
    m.backward(dlogits)
    out.backward(torch.from_numpy(dlogits))
    assert _grad_error(m, [net]) < 1e-10


# --- ONNX, the table, a short train -----------------------------------------------------


@pytest.mark.parametrize("mode,prune", [("accurate", 0), ("fast", 2)])
def test_onnx_agrees_in_eval_mode(mode, prune):
    pytest.importorskip("onnxruntime")
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.inference.tiles import softmax

    m = build_model(UNetPPConfig(base=4, mode=mode, prune=prune), seed=2).eval()
    x = np.random.default_rng(6).random((2, 1, 32, 32)).astype(np.float32)
    ref = softmax(m.forward(standardize(x)))
    assert np.abs(run_onnx(onnx_model(m), x) - ref).max() < 1e-5


def test_layer_table_and_describe():
    cfg = UNetPPConfig(base=4)
    rows = UNetPP.layer_table(cfg, 32)
    assert sum(r["params"] for r in rows) == build_model(cfg).num_parameters()
    assert "input 1x32x32" in get("unetpp").describe(cfg, 32)


def test_short_train_lowers_the_loss():
    from minunet.nn.optim import MomentumSGD, SGDConfig

    m = build_model(UNetPPConfig(base=4, dropout=0.0), seed=0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)  # a learnable target: the sign of the input
    weights = np.ones(labels.shape, np.float32)
    opt = MomentumSGD(m.params, SGDConfig(lr=0.05, momentum=0.9))
    losses = []
    for it in range(10):
        loss, cache = m.loss_forward(m.forward(x), labels, weights)  # mean over the 4 heads
        losses.append(float(loss))
        m.zero_grad()
        m.backward(m.loss_backward(cache))
        opt.step(m.grads, it)
    assert losses[-1] < losses[0] - 0.1, losses
