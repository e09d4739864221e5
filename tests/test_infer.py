"""Overlap-tile inference (minunet/inference/tiles.py): exact stitching, any size, test-time
augmentation.

The reference for exactness is ONE forward pass over the whole image, mirror-padded with
np.pad(mode='reflect') (independent of infer.mirror_pad) to the same valid size; float64,
tolerance 1e-12. Models are tiny (base 2, the paper's depth 4) to keep the tests fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from minunet import backend
from minunet.inference import tiles as infer
from minunet.inference.tiles import mirror_pad, predict, softmax
from minunet.models import sizes
from minunet.models.sizes import ValidUNetGeometry, output_size, padded_size, tile_offsets
from minunet.models.unet import UNet, UNetConfig, standardize

TOL = 1e-12  # float64: tiled and single-pass results agree to rounding


@pytest.fixture(scope="module")
def model():
    return UNet(UNetConfig(base=2, dtype="float64"), seed=3).eval()  # no dropout


def single_pass(model, image):
    """Probabilities (K, H, W) from one forward pass over the whole padded image."""
    H, W = image.shape
    PH, PW = padded_size(H, 4), padded_size(W, 4)
    pad = np.pad(standardize(image), ((92, PH - H - 92), (92, PW - W - 92)), mode="reflect")
    return softmax(model.forward(pad[None, None]))[0][:, :H, :W]


def test_tiled_equals_single_pass_non_square(model):
    img = np.random.default_rng(0).random((150, 230))
    ref = single_pass(model, img)  # padded 348 x 428
    tiled = predict(model, img, tile=252, batch=3)  # 3 x 4 tiles of 252 (output 68, step 64)
    assert tiled.shape == (2, 150, 230)
    np.testing.assert_allclose(tiled, ref, rtol=0, atol=TOL)


def test_automatic_tile_is_exact_too(model, monkeypatch):
    img = np.random.default_rng(1).random((70, 45))
    ref = single_pass(model, img)
    np.testing.assert_allclose(predict(model, img), ref, rtol=0, atol=TOL)  # one pass
    # a budget that fits only the smallest tile forces many 204-tiles (output 20, step 16)
    budget = infer.forward_bytes(model.config, 204, 2)
    monkeypatch.setattr(infer, "free_memory_bytes", lambda xp: budget / infer.MEMORY_FRACTION)
    assert infer.auto_tile(model.config, (268, 236), 2, budget) == 204
    np.testing.assert_allclose(predict(model, img, batch=2), ref, rtol=0, atol=TOL)


def test_offsets_off_the_pooling_grid_are_not_exact(model):
    """Why tile offsets are multiples of 2^depth = 16: at offset 8 the pools pair other pixels."""
    pad = np.random.default_rng(2).random((1, 1, 236, 236))
    whole = model.forward(pad)[0]  # (2, 52, 52)
    for off, exact in ((16, True), (8, False)):
        tile = model.forward(np.ascontiguousarray(pad[:, :, off : off + 188, :188]))[0]  # (2,4,4)
        diff = np.abs(tile - whole[:, off : off + 4, :4]).max()
        assert (diff < TOL) == exact, (off, diff)


def test_images_smaller_than_a_tile(model):
    for shape in ((20, 9), (1, 1), (3, 40)):  # padded 204 x 204, 188 x 188, 188 x 236
        img = np.random.default_rng(sum(shape)).random(shape)
        p = predict(model, img, tile=204)
        assert p.shape == (2, *shape)
        np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-12)
        padded = mirror_pad(standardize(img), 92, padded_size(shape[0], 4) - shape[0] - 92,
                            92, padded_size(shape[1], 4) - shape[1] - 92)
        ref = softmax(model.forward(padded[None, None]))[0][:, : shape[0], : shape[1]]
        np.testing.assert_allclose(p, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17])
def test_mirror_pad_is_numpy_reflect(n):
    x = np.arange(n * 4, dtype=np.float64).reshape(4, n)
    for before, after in ((0, 0), (1, 2), (4, 40), (92, 95)):
        got = mirror_pad(x, 0, 0, before, after)
        if n == 1:  # one column cannot be reflected: it is repeated
            want = np.repeat(x, before + after + 1, axis=1)
        else:
            want = np.pad(x, ((0, 0), (before, after)), mode="reflect")
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("total,tile", [(188, 188), (348, 204), (348, 252), (700, 252),
                                        (700, 572), (1004, 572), (1004, 1004), (348, 572)])
def test_tile_offsets_on_grid_and_covering(total, tile):
    offs = tile_offsets(total, tile, 4)
    tile = min(tile, total)
    out = output_size(tile, 4)
    assert all(o % 16 == 0 for o in offs) and offs[0] == 0
    assert offs[-1] + tile == total  # the last tile is flush with the end
    covered = np.zeros(output_size(total, 4), bool)
    for o in offs:
        covered[o : o + out] = True
    assert covered.all()


def test_auto_tile_grows_with_memory(model):
    cfg = model.config
    small = infer.auto_tile(cfg, (700, 700), 1, 0)
    big = infer.auto_tile(cfg, (700, 700), 1, 10**15)
    mid = infer.auto_tile(cfg, (700, 700), 1, infer.forward_bytes(cfg, 412, 1))
    assert small == sizes.min_tile(4) == 204  # 188 (output 4) cannot step a 16-pixel grid
    assert big == 700 and mid == 412


class PointwiseNet:
    """A stand-in model whose class-1 logit is a pixel-wise function of the input: it commutes
    with every rotation and flip, so test-time augmentation must give back tta=1 exactly."""

    def __init__(self):
        self.config = UNetConfig(base=1, dtype="float64")
        self.geometry = ValidUNetGeometry(4)  # sizes, margin and grid of a depth-4 U-Net
        self.training = False

    xp = np

    def eval(self):
        return self

    def release_caches(self):
        pass

    def forward(self, x):
        c = x[:, :, 92:-92, 92:-92]  # the output window of a depth-4 U-Net
        return np.concatenate([np.zeros_like(c), 4.0 * c - 2.0], axis=1)


def test_tta_of_an_equivariant_function_changes_nothing():
    img = np.random.default_rng(4).random((37, 61))
    net = PointwiseNet()
    p1 = predict(net, img, tile=204)  # padded 236 x 252: 3 x 4 tiles (20 x 20 outputs)
    for tta in (4, 8):
        np.testing.assert_allclose(predict(net, img, tile=204, tta=tta, batch=3), p1,
                                   rtol=0, atol=1e-14)
    z = 4 * standardize(img) - 2  # predict feeds the network standardised images
    np.testing.assert_allclose(p1[1], 1 / (1 + np.exp(-z)), rtol=0, atol=1e-14)


def test_tta_averages_the_transformed_predictions(model):
    img = np.random.default_rng(5).random((20, 29))  # padded 204 x 220
    want = np.mean([np.rot90(predict(model, np.rot90(img, k)), -k, axes=(1, 2)) for k in range(4)],
                   axis=0)
    got = predict(model, img, tta=4, batch=4)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    p8 = predict(model, img, tta=8, batch=2)
    flips = np.mean([np.rot90(predict(model, np.rot90(img, k)[:, ::-1])[:, :, ::-1], -k,
                              axes=(1, 2)) for k in range(4)], axis=0)
    np.testing.assert_allclose(p8, (want + flips) / 2, rtol=0, atol=TOL)
    assert p8.shape == (2, 20, 29)
    assert np.abs(p8 - predict(model, img)).max() > 1e-6  # the net is not equivariant


def test_bad_arguments(model):
    img = np.zeros((30, 30))
    with pytest.raises(ValueError, match="in_channels"):
        predict(model, np.zeros((3, 30, 30)))
    with pytest.raises(ValueError, match="tta must be"):
        predict(model, img, tta=3)
    with pytest.raises(ValueError, match="use a tile >= 204"):
        predict(model, img, tile=100)
    with pytest.raises(ValueError, match="use a tile >= 204"):
        tile_offsets(252, 188, 4)
    with pytest.raises(ValueError, match="batch"):
        predict(model, img, batch=0)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    if not backend.gpu_status().available:
        pytest.skip(f"no GPU: {backend.gpu_status().reason}")
    cpu = UNet(UNetConfig(base=2, dtype="float64"), seed=3)
    gpu = UNet(UNetConfig(base=2, dtype="float64"), seed=3).to("cuda")
    img = np.random.default_rng(6).random((150, 230))
    want = predict(cpu, img, tile=252, tta=8, batch=4)
    got = predict(gpu, img, tile=252, tta=8, batch=4)
    assert backend.is_gpu_array(got)
    np.testing.assert_allclose(backend.to_host(got), want, rtol=0, atol=1e-10)
    np.testing.assert_allclose(backend.to_host(predict(gpu, img)), predict(cpu, img),
                               rtol=0, atol=1e-10)


def test_a_tile_too_small_to_step_is_raised_to_the_minimum(model):
    """188 (output 4) cannot step a 16-pixel grid; asked for, 204 is used (and stays exact)."""
    assert sizes.choose_tile((252, 188), 4, 188) == (204, 188)
    img = np.random.default_rng(7).random((60, 4))  # padded 252 x 188
    np.testing.assert_allclose(predict(model, img, tile=188), single_pass(model, img),
                               rtol=0, atol=TOL)


def test_predict_runs_in_eval_mode_and_restores_the_mode():
    m = UNet(UNetConfig(base=2, dtype="float64"), seed=3)  # training mode: dropout on
    img = np.random.default_rng(8).random((30, 30))
    p = predict(m, img)
    assert m.training  # restored
    np.testing.assert_array_equal(p, predict(m.eval(), img))  # no dropout inside predict
