"""UNet 3+ (minunet/models/unet3p.py): the released code's parameter counts (plain, deep
supervision, classification-guided module), the whole-network gradient check (BatchNorm in
training mode) on both doors for every option that changes the graph, the CGM's loss and its
gradient, parity with the PyTorch mirror (logits, every parameter gradient, running statistics;
train and eval), ONNX in eval mode, the hybrid loss's tile size, and a short training run."""

from __future__ import annotations

import numpy as np
import pytest

from minunet.models.registry import build_model, get
from minunet.models.unet3p import UNet3P, UNet3PConfig, parameter_shapes, presence_targets
from minunet.nn.gradcheck import model_gradcheck
from minunet.nn.model import Heads, standardize
from minunet.ops.loss.bce import bce_with_logits_forward


def _count(cfg) -> int:
    return sum(int(np.prod(s)) for s in parameter_shapes(cfg).values())


def _batch(rng, cin=1, n=2, s=32, classes=2):
    """x, labels, weights; the second image has no foreground (its presence label: absent)."""
    x = rng.standard_normal((n, cin, s, s))
    labels = rng.integers(0, classes, (n, s, s))
    if n > 1:
        labels[1] = 0
    return x, labels, np.ones((n, s, s))


def test_reference_parameter_counts():
    # ZJUGiveLab/UNet-Version, models/UNet_3Plus.py at in_channels=3, n_classes=1
    assert _count(UNet3PConfig(in_channels=3)) == 26_971_777  # UNet_3Plus
    assert _count(UNet3PConfig(in_channels=3, deep_supervision=True)) == 26_989_637
    assert _count(UNet3PConfig(in_channels=3, deep_supervision=True, cgm=True)) == 26_991_687


def test_names_and_shapes():
    shapes = parameter_shapes(UNet3PConfig(deep_supervision=True, cgm=True))
    assert shapes["down0.conv0.conv.weight"] == (64, 1, 3, 3)
    assert shapes["down0.conv0.conv.bias"] == (64,)  # the released convs keep their bias
    assert shapes["bottleneck.conv1.bn.weight"] == (1024,)
    assert shapes["up3.from0.conv.weight"] == (64, 64, 3, 3)  # h0 pooled by 8 into hd4
    assert shapes["up3.from4.conv.weight"] == (64, 1024, 3, 3)  # the bottleneck up-sampled
    assert shapes["up0.from1.conv.weight"] == (64, 320, 3, 3)  # hd2 up-sampled into hd1
    assert shapes["up0.fuse.conv.weight"] == (320, 320, 3, 3)
    assert shapes["final.weight"] == (1, 320, 3, 3)
    assert shapes["side4.weight"] == (1, 1024, 3, 3) and shapes["side1.weight"] == (1, 320, 3, 3)
    assert shapes["cls.weight"] == (2, 1024, 1, 1)
    softmax = UNet3PConfig(head="softmax", n_classes=3, loss="softmax_cross_entropy")
    assert parameter_shapes(softmax)["final.weight"] == (3, 320, 3, 3)
    m = build_model(UNet3PConfig(base=2))
    assert "up0.fuse.bn.running_var" in m.buffers


def test_config_refuses():
    with pytest.raises(ValueError, match="head"):
        UNet3PConfig(head="sigmoid2")
    with pytest.raises(ValueError, match="n_classes"):
        UNet3PConfig(n_classes=3, loss="softmax_cross_entropy")  # sigmoid head: 2 classes
    with pytest.raises(ValueError, match="cgm"):
        UNet3PConfig(cgm=True, head="softmax", loss="softmax_cross_entropy")
    assert UNet3PConfig().loss == "hybrid" and UNet3PConfig().head == "sigmoid"


def test_geometry_and_describe():
    m = build_model(UNet3PConfig(base=2))
    assert m.geometry.grid == 16 and m.geometry.margin == 0
    assert m.geometry.output_size(32) == 32
    with pytest.raises(ValueError, match="32 or 48"):
        m.forward(np.zeros((1, 1, 40, 40), np.float32))
    for cfg in (UNet3PConfig(base=2), UNet3PConfig(base=2, deep_supervision=True, cgm=True)):
        rows = UNet3P.layer_table(cfg, 32)
        # eval mode: the side heads are not run, every other parameter is in the table
        side = sum(int(np.prod(s)) for k, s in parameter_shapes(cfg).items()
                   if k.startswith("side"))
        assert sum(r["params"] for r in rows) == build_model(cfg).num_parameters() - side
        assert "1x32x32" in get("unet3p").describe(cfg, 32)


def test_outputs_by_mode():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 32, 32))
    m = build_model(UNet3PConfig(base=2, dtype="float64", deep_supervision=True, cgm=True))
    out = m.forward(x, dropout_key=1)
    assert isinstance(out, Heads) and len(out) == 5 and out.presence.shape == (2, 2, 1, 1)
    assert all(h.shape == (2, 2, 32, 32) and np.all(h[:, 0] == 0) for h in out)
    with pytest.raises(ValueError, match="dropout_key"):
        m.forward(x)
    m.eval()
    assert m.forward(x).shape == (2, 2, 32, 32)
    m = build_model(UNet3PConfig(base=2, dtype="float64", head="softmax", n_classes=3,
                                 loss="softmax_cross_entropy"))
    assert m.forward(x).shape == (2, 3, 32, 32)


# --- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("ops", ["plain", "fast"])
@pytest.mark.parametrize("variant", [
    dict(loss="bce_dice"),
    dict(loss="bce_dice", deep_supervision=True),
    dict(loss="bce_dice", cgm=True),
    dict(loss="bce_dice", deep_supervision=True, cgm=True),
    dict(loss="softmax_cross_entropy", head="softmax", n_classes=3, deep_supervision=True),
    dict(loss="softmax_cross_entropy", in_channels=2),  # the sigmoid head's weighted BCE
])
def test_whole_network_gradcheck(ops, variant):
    cfg = UNet3PConfig(base=2, dtype="float64", ops=ops, **variant)
    m = build_model(cfg, seed=1)
    x, labels, weights = _batch(np.random.default_rng(2), cin=cfg.in_channels,
                                classes=cfg.n_classes)
    results = model_gradcheck(m, x, labels, weights, dropout_key=5)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_hybrid_loss_gradcheck():
    # MS-SSIM needs 176 px; batch 1, base 1, two directions
    m = build_model(UNet3PConfig(base=1, dtype="float64", deep_supervision=True, cgm=True))
    x, labels, weights = _batch(np.random.default_rng(2), n=1, s=176)
    results = model_gradcheck(m, x, labels, weights, dropout_key=3, n_dirs=2)
    assert all(r.passed for r in results), results


def _directional(m, x, labels, weights, names, h=1e-6, seed=0):
    """<grad L, d> and the central difference of L along a random d on `names` only."""
    d = {k: np.random.default_rng(seed).standard_normal(m.params[k].shape) for k in names}

    def loss():
        out = float(m.loss_forward(m.forward(x, dropout_key=4), labels, weights)[0])
        m.release_caches()
        return out

    m.zero_grad()
    loss_value, cache = m.loss_forward(m.forward(x, dropout_key=4), labels, weights)
    m.backward(m.loss_backward(cache))
    analytic = sum(float((m.grads[k] * d[k]).sum()) for k in names)
    base = {k: m.params[k].copy() for k in names}
    sides = []
    for s in (h, -h):
        for k in names:
            m.params[k] = base[k] + s * d[k]
        sides.append(loss())
    for k in names:
        m.params[k] = base[k]
    return analytic, (sides[0] - sides[1]) / (2 * h)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_cgm_loss_and_branch_gradient(deep_supervision):
    """The CGM's BCE is in the loss, and the branch's parameters (a few among thousands, which
    a random direction over all of them barely sees) get its gradient and the gate's."""
    cfg = UNet3PConfig(base=2, dtype="float64", loss="bce_dice", cgm=True,
                       deep_supervision=deep_supervision)
    m = build_model(cfg, seed=1)
    x, labels, weights = _batch(np.random.default_rng(2))
    assert presence_targets(labels, np, np.float64).tolist() == [[0, 1], [1, 0]]
    out = m.forward(x, dropout_key=4)
    loss, _ = m.loss_forward(out, labels, weights)
    seg, _ = type(m).__mro__[1].loss_forward(m, Heads(out), labels, weights)
    bce, _ = bce_with_logits_forward(out.presence,
                                     np.array([[0.0, 1], [1, 0]])[:, :, None, None])
    assert float(loss) == pytest.approx(float(seg) + float(bce), rel=1e-12)
    m.release_caches()
    analytic, numeric = _directional(m, x, labels, weights, ["cls.weight", "cls.bias"])
    assert abs(analytic) > 1e-4  # the branch is trained
    assert abs(analytic - numeric) <= 1e-7 * abs(analytic)


def test_hybrid_loss_refuses_small_tiles():
    m = build_model(UNet3PConfig(base=1, dtype="float64"))
    x, labels, weights = _batch(np.random.default_rng(0), n=1, s=160)
    with pytest.raises(ValueError, match="at least 176 x 176 px.*bce_dice"):
        m.loss_forward(m.forward(x), labels, weights)


# --- PyTorch parity and ONNX ---------------------------------------------------------


def _torch_parity(cfg, x, torch):
    """Max |difference| of the final logits and of every parameter gradient (with dL/dlogits
    random on the final head, 0 on the side heads) between the model and its torch mirror
    (transplanted weights), training mode then eval mode, and of the buffers."""
    from minunet.exporters import torch_mirror

    m = build_model(cfg, seed=3)
    net = torch_mirror.build(cfg).double().train()
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                         m.state_dict().items()})
    errors = {}
    xt = torch.from_numpy(x)
    out = m.forward(x, dropout_key=2)
    heads = list(out) if isinstance(out, Heads) else [out]
    tout = net(xt)
    errors["train logits"] = np.abs(heads[0] - tout.detach().numpy()).max()
    dlogits = np.random.default_rng(8).standard_normal(heads[0].shape)
    dheads = [dlogits] + [np.zeros_like(h) for h in heads[1:]]
    dout = dlogits if not isinstance(out, Heads) else type(out)(dheads)
    if getattr(out, "presence", None) is not None:
        dout.presence = np.zeros_like(out.presence)
    m.zero_grad()
    m.backward(dout)
    tout.backward(torch.from_numpy(dlogits))
    named = dict(net.named_parameters())
    assert set(named) == set(m.grads)
    errors["grads"] = max(np.abs(m.grads[k] - (0 if p.grad is None else p.grad.numpy())).max()
                          / max(1.0, np.abs(m.grads[k]).max()) for k, p in named.items())
    sd = net.state_dict()
    errors["buffers"] = max(np.abs(v - sd[k].double().numpy()).max()
                            for k, v in m.buffers.items())
    m.eval()
    net.eval()
    errors["eval logits"] = np.abs(m.forward(x) - net(xt).detach().numpy()).max()
    return errors


@pytest.mark.parametrize("variant", [dict(in_channels=3),
                                     dict(deep_supervision=True, cgm=True, dropout=0.0),
                                     dict(head="softmax", n_classes=3,
                                          loss="softmax_cross_entropy")])
def test_torch_mirror_train_and_eval(variant):
    torch = pytest.importorskip("torch")
    cfg = UNet3PConfig(base=2, dtype="float64", **variant)
    x = np.random.default_rng(7).standard_normal((2, cfg.in_channels, 32, 32))
    errors = _torch_parity(cfg, x, torch)
    assert all(e < 1e-10 for e in errors.values()), errors


def test_onnx_agrees_in_eval_mode():
    pytest.importorskip("onnxruntime")
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.inference.tiles import softmax

    for variant in (dict(), dict(deep_supervision=True, cgm=True)):
        m = build_model(UNet3PConfig(base=2, **variant))
        x = np.random.default_rng(6).random((2, 1, 32, 32)).astype(np.float32)
        m.forward(standardize(x), dropout_key=1)  # a training batch: running statistics move
        m.eval()
        ref = softmax(m.forward(standardize(x)))
        assert np.abs(run_onnx(onnx_model(m), x) - ref).max() < 1e-5


# --- training ----------------------------------------------------------------------


def test_short_train_lowers_the_loss():
    from minunet.nn.optim import MomentumSGD, SGDConfig

    m = build_model(UNet3PConfig(base=2, loss="bce_dice", deep_supervision=True, cgm=True),
                    seed=0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)  # a learnable target: the sign of the input
    labels[1] = 0  # an image without foreground, for the CGM
    weights = np.ones(labels.shape, np.float32)
    opt = MomentumSGD(m.params, SGDConfig(lr=0.01, momentum=0.9))
    losses = []
    for it in range(10):  # a fixed batch and a fixed dropout mask: a fixed function to descend
        loss, cache = m.loss_forward(m.forward(x, dropout_key=3), labels, weights)
        losses.append(float(loss))
        m.zero_grad()
        m.backward(m.loss_backward(cache))
        opt.step(m.grads, it)
    assert losses[-1] < 0.8 * losses[0], losses
