"""The hidden checks: other seeds and shapes, run only at submission (never in a student copy).

What they add to the public checks: N = 1 and N = 3; k = 1 and k = 2; Cin != Cout
and H != W everywhere, so a missing transpose shows; odd crop margins on both
axes; windows full of ties; logits near 1e3 with a wide spread; int32 labels;
dropout with p != 0.5; non-contiguous (strided) inputs; float32 for every op;
and one timed conv (TimedCheck): honest work only, a backward computed by finite
differences of the forward cannot finish within its time limit.
Each check names its kind, shapes and mode only: what is differentiable and how strict come
from the op's spec (minunet/nn/opspec.py), as for the public checks.
Their inputs are drawn from the teacher's seed when the teacher bundle is made
and stored in it; the student sees their results only after the due date, and
their hints, never their inputs or expected values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import (
    Check,
    batchnorm_inputs,
    concat_inputs,
    conv_general_inputs,
    conv_inputs,
    crop_inputs,
    distinct_inputs,
    dropout_inputs,
    im2col_general_inputs,
    im2col_inputs,
    relu_inputs,
    softmax_inputs,
    tie_inputs,
    upconv_inputs,
)


@dataclass(frozen=True)
class TimedCheck(Check):
    """A check whose backward (with its forward) must finish within time_factor times the
    reference's forward + backward on the same inputs, and at least time_floor seconds
    (grade.py times the reference in the trusted process). Its input is large enough that
    central differences of the forward (two forwards per input entry: ~150,000 here) take
    minutes, while the reference takes milliseconds."""

    time_factor: float = 100.0
    time_floor: float = 2.0


def hidden_checks() -> list[Check]:
    """The teacher's checks (see the module docstring)."""
    C = Check
    return [
        C("im2col (k=3, N=3)", "im2col", im2col_inputs((3, 2, 5, 7), 3)),
        C("im2col (k=2, N=1)", "im2col", im2col_inputs((1, 3, 4, 6), 2)),
        C("im2col (k=1, strided)", "im2col", im2col_inputs((2, 3, 3, 4), 1),
          strided=("x",)),
        C("conv2d (k=3, N=1)", "conv2d", conv_inputs(1, 2, 5, 3, 6, 8)),
        C("conv2d (k=3, N=3, relu)", "conv2d", conv_inputs(3, 2, 3, 3, 7, 5, relu=True)),
        C("conv2d (k=1, N=3)", "conv2d", conv_inputs(3, 4, 3, 1, 5, 7)),
        TimedCheck("conv2d (k=3, 8 x 96 x 96, timed)", "conv2d",
                   conv_inputs(1, 8, 8, 3, 96, 96), mode="expected"),
        C("conv2d (k=2, strided)", "conv2d", conv_inputs(2, 3, 2, 2, 5, 4),
          strided=("x", "w")),
        C("conv2d (k=3, N=3, float32)", "conv2d", conv_inputs(3, 2, 4, 3, 5, 6),
          "float32"),
        C("upconv2x2 (N=1)", "upconv2x2", upconv_inputs(1, 5, 2, 2, 3)),
        C("upconv2x2 (N=3)", "upconv2x2", upconv_inputs(3, 2, 3, 4, 2)),
        C("upconv2x2 (strided)", "upconv2x2", upconv_inputs(2, 3, 2, 3, 3),
          strided=("x", "w")),
        C("upconv2x2 (float32)", "upconv2x2", upconv_inputs(3, 3, 2, 2, 4), "float32"),
        C("maxpool2x2 (N=3)", "maxpool2x2", distinct_inputs((3, 2, 6, 4))),
        C("maxpool2x2 (N=1, ties)", "maxpool2x2", tie_inputs((1, 3, 4, 4), levels=2),
          mode="expected"),
        C("maxpool2x2 (strided)", "maxpool2x2", distinct_inputs((2, 2, 4, 8)),
          strided=("x",)),
        C("maxpool2x2 (ties, float32)", "maxpool2x2", tie_inputs((2, 2, 6, 4)),
          "float32", mode="expected"),
        C("relu (N=3)", "relu", relu_inputs((3, 2, 3, 5))),
        C("relu (N=1, strided)", "relu", relu_inputs((1, 3, 4, 4)), strided=("x",)),
        C("relu (float32)", "relu", relu_inputs((3, 2, 4, 3)), "float32"),
        C("center_crop (N=1, odd margins)", "center_crop", crop_inputs((1, 2, 10, 7), (3, 4))),
        C("center_crop (N=3)", "center_crop", crop_inputs((3, 2, 8, 9), (4, 5))),
        C("center_crop (float32)", "center_crop", crop_inputs((2, 3, 7, 6), (4, 3)),
          "float32"),
        C("concat (N=3)", "concat", concat_inputs(3, 1, 4, 3, 2)),
        C("concat (N=1, strided)", "concat", concat_inputs(1, 4, 2, 2, 3),
          strided=("a",)),
        C("concat (float32)", "concat", concat_inputs(2, 3, 1, 2, 2), "float32"),
        C("softmax_cross_entropy (N=1, K=2)", "softmax_cross_entropy",
          softmax_inputs(1, 2, 4, 5)),
        C("softmax_cross_entropy (N=3, K=4, int32 labels)", "softmax_cross_entropy",
          softmax_inputs(3, 4, 3, 2, label_dtype=np.int32)),
        C("softmax_cross_entropy (logits near 1e3)", "softmax_cross_entropy",
          softmax_inputs(2, 3, 3, 3, offset=1e3, spread=5.0), mode="expected"),
        C("softmax_cross_entropy (strided)", "softmax_cross_entropy",
          softmax_inputs(2, 3, 2, 4), strided=("logits",)),
        C("softmax_cross_entropy (float32)", "softmax_cross_entropy",
          softmax_inputs(3, 2, 2, 3), "float32"),
        C("dropout (N=3, p=0.3)", "dropout", dropout_inputs((3, 2, 3, 4), p=0.3)),
        C("dropout (N=1, p=0.7, strided)", "dropout", dropout_inputs((1, 3, 4, 4), p=0.7),
          strided=("x",)),
        C("dropout (float32)", "dropout", dropout_inputs((2, 2, 3, 3)), "float32"),
    ] + family_hidden_checks()


def family_hidden_checks() -> list[Check]:
    """The family's hidden checks: k = 5 and k = 1, stride 2 with rows the last window does
    not reach, padding 2, depthwise with a bias, N = 1 and N = 3, C = 1, eval mode, the
    running statistics after a batch of one, strided inputs, float32."""
    C = Check
    return [
        C("im2col_general (k=5, p=2, s=2, N=1)", "im2col_general",
          im2col_general_inputs((1, 2, 8, 9), 5, 2, 2)),
        C("im2col_general (k=1, s=2, strided)", "im2col_general",
          im2col_general_inputs((3, 2, 5, 4), 1, 2, 0), strided=("x",)),
        C("im2col_general (k=3, p=2, s=3, N=3)", "im2col_general",
          im2col_general_inputs((3, 1, 7, 8), 3, 3, 2)),
        C("conv2d_general (depthwise k=5, p=2, s=2)", "conv2d_general",
          conv_general_inputs(1, 3, 3, 9, 8, 5, 2, 2, groups=3)),
        C("conv2d_general (k=1, s=2, N=3, no bias)", "conv2d_general",
          conv_general_inputs(3, 4, 2, 5, 6, 1, 2, 0, bias=False)),
        C("conv2d_general (k=3, same, groups=2, strided)", "conv2d_general",
          conv_general_inputs(2, 4, 6, 5, 7, 3, 1, "same", groups=2),
          strided=("x", "w")),
        C("conv2d_general (k=3, p=1, s=2, float32)", "conv2d_general",
          conv_general_inputs(3, 3, 2, 7, 6, 3, 2, 1), "float32"),
        C("batchnorm2d (training, N=3)", "batchnorm2d", batchnorm_inputs((3, 4, 3, 2))),
        C("batchnorm2d (training, N=1, C=1, strided)", "batchnorm2d",
          batchnorm_inputs((1, 1, 4, 5)), strided=("x",)),
        C("batchnorm2d (eval, N=1)", "batchnorm2d", batchnorm_inputs((1, 3, 4, 3), False)),
        C("batchnorm2d (running statistics, N=1)", "batchnorm2d_running",
          batchnorm_inputs((1, 2, 3, 5), num_batches=7)),
        C("batchnorm2d (eval, float32)", "batchnorm2d", batchnorm_inputs((2, 2, 3, 3), False),
          "float32"),
        C("batchnorm2d (training, float32)", "batchnorm2d", batchnorm_inputs((3, 2, 2, 3)),
          "float32"),
    ]
