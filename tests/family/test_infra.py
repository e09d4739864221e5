"""The house's support for the U-Net family, on a tiny network (tests/family/tiny_bn.py):
BatchNorm buffers and their initialisation, the family's losses and deep supervision through
the model's own loss, the whole-network gradient check with BatchNorm in training mode, the
per-layer table, ONNX and the PyTorch mirror (training and eval mode, running statistics)."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.models.registry import build_model
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.model import Heads, standardize
from tests.family.tiny_bn import TinyBN, TinyBNConfig


def _batch(rng, n=2, s=16):
    x = rng.standard_normal((n, 1, s, s))
    return x, rng.integers(0, 2, (n, s, s)), np.ones((n, s, s))


def test_buffers_and_init():
    m = build_model(TinyBNConfig())
    assert sorted(k for k in m.buffers if k.startswith("a.")) == [
        "a.bn.num_batches_tracked", "a.bn.running_mean", "a.bn.running_var"]
    assert np.all(m.params["a.bn.weight"] == 1) and np.all(m.params["a.bn.bias"] == 0)
    assert np.all(m.buffers["b.bn.running_var"] == 1)
    assert "a.conv.bias" not in m.params  # the conv before a BatchNorm has no bias
    x, _, _ = _batch(np.random.default_rng(0))
    m.forward(x.astype(np.float32))
    assert m.buffers["a.bn.num_batches_tracked"][0] == 1
    assert not np.all(m.buffers["a.bn.running_mean"] == 0)


@pytest.mark.parametrize("ops", ["plain", "fast"])
@pytest.mark.parametrize("loss,heads", [("softmax_cross_entropy", 1), ("bce_dice", 1),
                                        ("bce_dice", 2), ("softmax_cross_entropy", 2)])
def test_whole_network_gradcheck(ops, loss, heads):
    m = build_model(TinyBNConfig(dtype="float64", ops=ops, loss=loss, heads=heads))
    # seed 2: with seed 1 one direction is almost orthogonal to the gradient (7e-7; the
    # central difference's rounding, ~1e-12, is then 2e-6 of it)
    x, labels, weights = _batch(np.random.default_rng(2))
    assert isinstance(m.forward(x), Heads) == (heads == 2)
    results = model_gradcheck(m, x, labels, weights)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_hybrid_loss_gradcheck():
    m = build_model(TinyBNConfig(dtype="float64", loss="hybrid"))
    x, labels, weights = _batch(np.random.default_rng(2), n=1, s=176)  # MS-SSIM's minimum
    results = model_gradcheck(m, x, labels, weights, n_dirs=2)
    assert all(r.passed for r in results)


def test_sigmoid_head_cross_entropy_is_weighted_bce():
    m = build_model(TinyBNConfig(dtype="float64"))
    x, labels, _ = _batch(np.random.default_rng(3))
    weights = np.random.default_rng(4).random(labels.shape)
    logits = m.forward(x)
    assert np.all(logits[:, 0] == 0)
    loss, _ = m.loss_forward(logits, labels, weights)
    z, y = logits[:, 1], labels
    bce = np.logaddexp(0, z) - y * z  # -y log sigma(z) - (1 - y) log(1 - sigma(z))
    assert float(loss) == pytest.approx(float((weights * bce).mean()), rel=1e-12)


def test_layer_table_counts_batchnorm():
    rows = TinyBN.layer_table(TinyBNConfig(), 16)
    assert sum(r["params"] for r in rows) == build_model(TinyBNConfig()).num_parameters()


def _trained(cfg):
    m = build_model(cfg)
    x, _, _ = _batch(np.random.default_rng(5))
    m.forward(x.astype(cfg.dtype))  # one training batch: running statistics != initial
    return m.eval()


def test_onnx_agrees_in_eval_mode():
    pytest.importorskip("onnxruntime")
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.inference.tiles import softmax

    m = _trained(TinyBNConfig())
    x = np.random.default_rng(6).random((2, 1, 16, 16)).astype(np.float32)
    ref = softmax(m.forward(standardize(x)))
    assert np.abs(run_onnx(onnx_model(m), x) - ref).max() < 1e-5


def test_torch_mirror_train_and_eval():
    torch = pytest.importorskip("torch")
    from minunet.exporters import torch_mirror

    cfg = TinyBNConfig(dtype="float64")
    m = build_model(cfg)
    net = torch_mirror.build(cfg).double().train()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                         m.state_dict().items()})
    x = np.random.default_rng(7).standard_normal((2, 1, 16, 16))
    assert np.abs(m.forward(x) - net(torch.from_numpy(x)).detach().numpy()).max() < 1e-12
    sd = net.state_dict()
    for k, v in m.buffers.items():  # running statistics and batch counts, updated alike
        assert np.abs(v - sd[k].double().numpy()).max() < 1e-12, k
    m.eval()
    net.eval()
    assert np.abs(m.forward(x) - net(torch.from_numpy(x)).detach().numpy()).max() < 1e-12


def test_release_frees_the_caches_of_composite_layers():
    """Layer.parts: a composite (ConvNormAct) releases its conv, BatchNorm and activation."""
    m = build_model(TinyBNConfig())
    x, _, _ = _batch(np.random.default_rng(8))
    m.forward(x.astype(np.float32))
    held = lambda: [n for layer in m.layers() for part in (layer, *(getattr(  # noqa: E731
        layer, p) for p in layer.parts)) if part is not None for n in part.cache_names
        if getattr(part, n) is not None]
    assert held()
    m.release_caches()
    assert held() == []


@pytest.mark.parametrize("name", __import__("minunet.models.registry", fromlist=["names"]).names())
def test_a_forward_drops_the_last_forwards_caches_first(name):
    """Every network of the house: when a second forward starts, no layer still holds the
    first forward's caches (Model._begin_forward), so back-to-back forwards do not hold two
    steps' activations; the second forward's own caches are there for its backward."""
    from minunet.models import registry

    try:
        cfg = registry.get(name).test_config(dtype="float64")
    except NotImplementedError:  # the U-Net: the smallest of its own
        cfg = registry.config_for(name, {"base": 2, "dtype": "float64"})
    model = registry.build_model(cfg, seed=1)
    s = next(s for s in range(64, 400) if model.geometry.is_valid(s))
    x = np.random.default_rng(0).standard_normal((2, cfg.in_channels, s, s))
    model.forward(x, dropout_key=1)
    layers = list(model.layers())
    assert any(getattr(lay, n) is not None for lay in layers for n in lay.cache_names)
    seen = []
    first = layers[0]
    plain = first.forward

    def spy(*a, **k):  # the first layer of the second forward: nothing held by then
        seen.append([getattr(lay, n) for lay in layers for n in lay.cache_names
                     if getattr(lay, n) is not None])
        return plain(*a, **k)

    first.forward = spy
    model.forward(x, dropout_key=1)
    assert seen and seen[0] == []
    assert any(getattr(lay, n) is not None for lay in layers for n in lay.cache_names)
