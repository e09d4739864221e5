"""The named gradient checks of the U-Net family's ops and losses (issue 25), for gradcheck.

Each check says how to make its inputs (small shapes, away from every kink: distinct values
for the max-pools, |x| away from ReLU6's 0 and 6) and which inputs are differentiable, as the
U-Net's checks in minunet/nn/gradcheck.py do. `python -m minunet.gradcheck` runs them after the
U-Net's; `--op NAME` picks one.

The two doors: "plain" checks minunet/ops; "fast" checks the fast twin in minunet/fast where
one exists (same module name), and otherwise the plain op, which is then the fast door's op
too (its docstring says why a twin is not worth it).

MS-SSIM (and UNet 3+'s loss, which holds it) is smooth but curved: at h = 1e-4 the central
difference's own error is ~1e-7, and its near-zero gradient entries carry the loss's rounding
divided by h. Their float64 rows therefore take a floor of 1 % of the largest entry and a
threshold of 1e-6 (a planted bug, the luminance term dropped, is off by > 1e-3), and they have
no float32 row: float32's step (3e-2) is far too coarse for that curvature.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np

FAMILY_MODULES = ("norm", "conv_general", "resample", "pool_general", "activation",
                  "elementwise", "loss")


def _module(name: str, kind: str):
    """minunet.fast.<name> when kind is 'fast' and a twin exists, else minunet.ops.<name>."""
    if kind == "fast" and importlib.util.find_spec(f"minunet.fast.{name}") is not None:
        return importlib.import_module(f"minunet.fast.{name}")
    return importlib.import_module(f"minunet.ops.{name}")


def family_checks(kind: str = "plain") -> list:
    """The OpCheck of every family op and loss, on the plain or the fast door."""
    from minunet.nn import opspec as spec
    from minunet.nn.opspec import THRESHOLD_FLOAT32_EXACT, OpCheck, normal

    norm, conv, resample, pool, act, elem, loss = (_module(m, kind) for m in FAMILY_MODULES)
    exact = THRESHOLD_FLOAT32_EXACT

    def batchnorm_inputs(training, shape):
        def make(rng, dtype):
            C = shape[1]
            return {"x": (normal(rng, shape, dtype) * 2 + 0.5).astype(dtype),
                    "gamma": rng.uniform(0.5, 1.5, C).astype(dtype),
                    "beta": normal(rng, (C,), dtype),
                    "running_mean": (rng.standard_normal(C) * 0.1).astype(dtype),
                    "running_var": rng.uniform(0.5, 2.0, C).astype(dtype),
                    "num_batches": np.array([3], np.int64), "training": training}
        return make

    conv_inputs = spec.conv_general_inputs  # the coursework's too

    def upsample_inputs(factor=None, align_corners=False):
        def make(rng, dtype):
            x = {"x": normal(rng, (2, 2, 3, 4), dtype)}
            return x if factor is None else {**x, "factor": factor,
                                             "align_corners": align_corners}
        return make

    def distinct_inputs(k=None, ceil_mode=False, shape=(2, 2, 11, 9)):
        # distinct values 0.1 apart (opspec.distinct_inputs, the U-Net's max-pool's too)
        return spec.distinct_inputs(shape, **({} if k is None else {"k": k,
                                                                    "ceil_mode": ceil_mode}))

    def away_from_kinks(rng, dtype):
        x = rng.uniform(0.1, 5.9, (2, 3, 4, 5)) * rng.choice([-1.0, 1.0], (2, 3, 4, 5))
        x[rng.random(x.shape) < 0.2] += 6.5  # some above ReLU6's cap, never near 6
        return {"x": x.astype(dtype)}

    def smooth_inputs(rng, dtype):
        # |x| <= 4, where sigmoid's slope is not tiny, and away from SiLU's minimum at
        # x = -1.2785 (its slope is 0 there: a relative error of a ~0 entry says nothing)
        x = rng.uniform(-4.0, 4.0, (2, 3, 4, 5))
        near = np.abs(x + 1.2785) < 0.4
        x[near] = x[near] + np.copysign(0.8, x[near] + 1.2785)
        return {"x": x.astype(dtype)}

    def add_inputs(rng, dtype):
        return {"a": normal(rng, (2, 3, 4, 4), dtype), "b": normal(rng, (2, 3, 4, 4), dtype)}

    def scale_inputs(rng, dtype):
        return {"x": normal(rng, (2, 3, 4, 4), dtype), "s": normal(rng, (2, 3), dtype)}

    def logits_targets(rng, shape, dtype, soft):
        z = rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
        label = rng.random(shape) < 0.4
        y = (np.where(label, rng.uniform(0.9, 0.95, shape), rng.uniform(0.05, 0.1, shape))
             if soft else label.astype(float))
        return z.astype(dtype), y.astype(dtype)

    def bce_inputs(rng, dtype):
        z, y = logits_targets(rng, (2, 2, 5, 4), dtype, soft=True)
        w = rng.uniform(0.5, 2.0, (2, 5, 4))
        w[rng.random(w.shape) < 0.25] = 0.0  # ignored pixels
        return {"logits": z, "targets": y, "weights": w.astype(dtype)}

    def overlap_inputs(rng, dtype):
        p = rng.uniform(0.05, 0.95, (2, 3, 4, 3))
        y = (rng.random(p.shape) < 0.4).astype(float)
        y[0, 1] = 0.0  # a class absent from an image: the smoothing term's case
        return {"probs": p.astype(dtype), "targets": y.astype(dtype), "smooth": 1.0}

    def focal_inputs(rng, dtype):
        z, y = logits_targets(rng, (2, 2, 4, 3), dtype, soft=False)
        return {"logits": z, "targets": y, "alpha": 0.25, "gamma": 2.0}

    three_scales = (0.3, 0.3, 0.4)  # MS-SSIM on small tiles: 3 scales, a 3x3 window

    def msssim_inputs(rng, dtype):
        y = rng.random((2, 2, 13, 12))
        x = np.clip(y + 0.2 * rng.standard_normal(y.shape), 0.0, 1.0)
        return {"x": x.astype(dtype), "y": y.astype(dtype), "data_range": 1.0, "win_size": 3,
                "sigma": 1.5, "weights": three_scales}

    def binary_logits(rng, shape, dtype):
        y = (rng.random(shape) < 0.5).astype(float)
        z = (2 * y - 1) * rng.uniform(0.2, 1.5, shape) + 0.5 * rng.standard_normal(shape)
        return z.astype(dtype), y.astype(dtype)

    def unetpp_inputs(rng, dtype):
        z, y = binary_logits(rng, (2, 2, 4, 3), dtype)
        return {"logits": z, "targets": y, "smooth": 1.0}

    def unet3p_inputs(rng, dtype):
        z, y = binary_logits(rng, (1, 1, 13, 12), dtype)
        return {"logits": z, "targets": y, "alpha": 0.25, "gamma": 2.0, "smooth": 1.0,
                "win_size": 3, "sigma": 1.5, "weights": three_scales}

    def check(name, op, pair, make, wrt, **kw):
        forward, backward = pair
        return OpCheck(name, op, forward, backward, make, wrt, **kw)

    bn = (norm.batchnorm2d_forward, norm.batchnorm2d_backward)
    cv = (conv.conv2d_general_forward, conv.conv2d_general_backward)
    curved = dict(threshold_float64=1e-6, floor_float64=1e-2, float32=False)
    # Some entries of BatchNorm's dx (the gradient minus two projections that nearly cancel
    # it) and of a padded or depthwise conv's dx (a border pixel meets few weights) come out
    # 1e-5 of the largest or less. Next to them the central difference's own error is not
    # small: the rounding of x + h (~1e-16 |x| / h) and of the loss (~1e-16 |L| / h), and
    # BatchNorm's curvature (h^2 times its third derivative). Over 40 seeds such entries
    # reached relative errors of 1.4e-6 (BatchNorm, N = 1) and 1.3e-7 (conv) against the
    # plain 1e-8 floor. A floor of a fraction of the largest entry compares them at the
    # gradient's own scale; a wrong backward (a term through the mean or the variance left
    # out, a tap off by one) is off by more than 1e-2 of it
    cancels = dict(floor_float64=1e-4)
    cancels_bn = dict(floor_float64=1e-3)
    return [
        check("batchnorm2d (training)", "batchnorm2d", bn,
              batchnorm_inputs(True, (2, 3, 4, 5)), ("x", "gamma", "beta"), **cancels_bn),
        check("batchnorm2d (training, N=1)", "batchnorm2d", bn,
              batchnorm_inputs(True, (1, 2, 3, 4)), ("x", "gamma", "beta"), **cancels_bn),
        check("batchnorm2d (eval)", "batchnorm2d", bn,
              batchnorm_inputs(False, (2, 3, 4, 5)), ("x", "gamma", "beta"), **cancels_bn),
        check("conv2d_general (k=3, same)", "conv2d_general", cv,
              conv_inputs(2, 3, 4, 7, 6, 3, 1, "same", 1), ("x", "w", "b"), **cancels),
        check("conv2d_general (k=3, s=2, p=1)", "conv2d_general", cv,
              conv_inputs(1, 2, 3, 8, 7, 3, 2, 1, 1), ("x", "w", "b"), **cancels),
        check("conv2d_general (depthwise k=3)", "conv2d_general", cv,
              conv_inputs(2, 4, 4, 7, 9, 3, 1, 1, 4), ("x", "w", "b"), **cancels),
        check("conv2d_general (depthwise k=5, s=2)", "conv2d_general", cv,
              conv_inputs(1, 3, 3, 9, 9, 5, 2, 2, 3), ("x", "w", "b"), **cancels),
        check("conv2d_general (k=1, no bias)", "conv2d_general", cv,
              conv_inputs(2, 4, 6, 5, 5, 1, 1, 0, 1, bias=False), ("x", "w"), **cancels),
        check("bilinear_upsample (x2)", "bilinear_upsample",
              (resample.bilinear_upsample_forward, resample.bilinear_upsample_backward),
              upsample_inputs(2), ("x",)),
        check("bilinear_upsample (x4, align_corners)", "bilinear_upsample",
              (resample.bilinear_upsample_forward, resample.bilinear_upsample_backward),
              upsample_inputs(4, True), ("x",)),
        check("nearest_upsample2", "nearest_upsample2",
              (resample.nearest_upsample2_forward, resample.nearest_upsample2_backward),
              upsample_inputs(), ("x",), threshold_float32=exact),
        check("maxpool (k=4, ceil)", "maxpool", (pool.maxpool_forward, pool.maxpool_backward),
              distinct_inputs(4, True), ("x",), threshold_float32=exact),
        check("maxpool (k=8, ceil)", "maxpool", (pool.maxpool_forward, pool.maxpool_backward),
              distinct_inputs(8, True), ("x",), threshold_float32=exact),
        check("global_avgpool", "global_avgpool",
              (pool.global_avgpool_forward, pool.global_avgpool_backward),
              distinct_inputs(), ("x",)),
        check("global_maxpool", "global_maxpool",
              (pool.global_maxpool_forward, pool.global_maxpool_backward),
              distinct_inputs(), ("x",), threshold_float32=exact),
        check("sigmoid", "sigmoid", (act.sigmoid_forward, act.sigmoid_backward),
              smooth_inputs, ("x",)),
        check("relu6", "relu6", (act.relu6_forward, act.relu6_backward), away_from_kinks,
              ("x",), threshold_float32=exact),
        check("silu", "silu", (act.silu_forward, act.silu_backward), smooth_inputs, ("x",)),
        check("add", "add", (elem.add_forward, elem.add_backward), add_inputs, ("a", "b")),
        check("channel_scale", "channel_scale",
              (elem.channel_scale_forward, elem.channel_scale_backward), scale_inputs,
              ("x", "s")),
        check("bce_with_logits (weighted)", "bce_with_logits",
              (loss.bce_with_logits_forward, loss.bce_with_logits_backward), bce_inputs,
              ("logits",)),
        check("soft_dice", "soft_dice", (loss.soft_dice_forward, loss.soft_dice_backward),
              overlap_inputs, ("probs",)),
        check("soft_iou", "soft_iou", (loss.soft_iou_forward, loss.soft_iou_backward),
              overlap_inputs, ("probs",)),
        check("focal", "focal", (loss.focal_forward, loss.focal_backward), focal_inputs,
              ("logits",)),
        check("msssim (3 scales)", "msssim", (loss.msssim_forward, loss.msssim_backward),
              msssim_inputs, ("x",), **curved),
        check("unetpp_loss (BCE + Dice)", "unetpp_loss",
              (loss.unetpp_loss_forward, loss.unetpp_loss_backward), unetpp_inputs,
              ("logits",)),
        check("unet3p_loss (focal + MS-SSIM + IoU)", "unet3p_loss",
              (loss.unet3p_loss_forward, loss.unet3p_loss_backward), unet3p_inputs,
              ("logits",), **curved),
    ]
