"""The gradient checks of the U-Net family's ops and losses (minunet/nn/gradcheck_family.py): every
row passes on both doors, in float64 and float32, over several seeds; a planted mistake in a
family op fails its row; the CLI lists the family after the U-Net."""

from __future__ import annotations

import numpy as np
import pytest

from minunet import gradcheck as gradcheck_cli
from minunet.nn import gradcheck
from minunet.nn.gradcheck import family_checks
from minunet.ops import norm


@pytest.mark.parametrize("kind", ["plain", "fast"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_family_row_passes(kind, dtype):
    family = {c.op for c in family_checks(kind)}
    for seed in (0, 1, 2):
        results = gradcheck.run_checks(sorted(family), dtype, "cpu", seed, kind, family=True)
        assert {r.op.split(" (")[0] for r in results} >= family - (
            {"msssim", "unet3p_loss"} if dtype == "float32" else set())
        failed = [f"{r.op} d{r.input}: {r.max_rel_error:.2e}" for r in results if not r.passed]
        assert failed == [], failed


def test_a_batchnorm_backward_without_the_mean_and_variance_paths_fails(monkeypatch):
    """The classic mistake: the eval-mode gradient gamma * dout / s in training mode."""
    def naive(dout, cache):
        dx = cache.gamma[:, None, None] * dout * cache.inv_std[:, None, None]
        return dx, (dout * cache.xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))

    monkeypatch.setattr(norm, "batchnorm2d_backward", naive)
    results = gradcheck.run_checks(["batchnorm2d"], family=True)
    by_row = {(r.op, r.input): r for r in results}
    assert not by_row[("batchnorm2d (training)", "x")].passed
    assert by_row[("batchnorm2d (training)", "x")].max_rel_error > 1e-2
    assert by_row[("batchnorm2d (eval)", "x")].passed  # right in eval mode
    assert by_row[("batchnorm2d (training)", "gamma")].passed


def test_the_cli_checks_the_family_after_the_unet(capsys):
    assert gradcheck_cli.main(["--device", "cpu", "--op", "batchnorm2d,relu6,msssim"]) == 0
    out = capsys.readouterr().out
    assert "batchnorm2d (training, N=1)" in out and "msssim (3 scales)" in out
    assert "summary: all 11 gradients PASS" in out  # 3 batchnorm rows x 3 inputs, 2 more
    assert gradcheck_cli.main(["--device", "cpu", "--op", "relu", "--unet-only"]) == 0
    with pytest.raises(SystemExit):
        gradcheck_cli.main(["--device", "cpu", "--op", "batchnorm2d", "--unet-only"])
    assert gradcheck_cli.main(["--device", "cpu", "--dtype", "float32", "--op", "msssim"]) == 0
    assert "no float32 row for msssim (3 scales)" in capsys.readouterr().out


def test_family_names_are_unique_and_listed():
    names = gradcheck.op_names(family=True)
    assert len(names) == len(set(names))
    assert names[: len(gradcheck.op_names())] == gradcheck.op_names()
    for op in ("batchnorm2d", "conv2d_general", "bilinear_upsample", "maxpool",
               "global_avgpool", "sigmoid", "relu6", "silu", "add", "channel_scale",
               "bce_with_logits", "soft_dice", "soft_iou", "focal", "msssim", "unetpp_loss",
               "unet3p_loss"):
        assert op in names
    assert np.isfinite(len(names))
