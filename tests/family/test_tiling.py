"""Exact tiling for padded networks (minunet/inference/tiles.py, "Padded networks"): the
receptive radius read off the traced forward (minunet/nn/trace.py, receptive_radius) on the
valid U-Net and on networks small enough to count by hand; tiles with a halo of at least the
radius equal one pass over the image, in memory and chunked into zarr, with 3 x 2 tiles that
really overlap; a halo one pixel short is not exact; a smaller --halo prints the measured seam
error, the default prints none; a network without an exact halo prints it too."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pytest
from PIL import Image

import tests.toy_arch  # noqa: F401  (registers "toy_resunet")
from minunet.inference import tiles
from minunet.inference.tiles import axis_plan, default_halo, inference_geometry, predict
from minunet.models import registry, sizes
from minunet.models.unet import UNetConfig
from minunet.nn import trace
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import Concat, ConvGeneral, Pool, Upsample
from minunet.nn.model import Model, ModelConfig, conv_shapes, standardize
from minunet.nn.trace import Node, Trace, receptive_radius
from minunet.training.checkpoint import save_checkpoint
from tests.family import tiny_bn  # noqa: F401  (registers "tiny_bn")

# --- the radius ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_valid_unet_radius_is_half_its_margin(depth):
    """On the grid every output pixel of a valid U-Net's tile reaches inside it, and the
    next one out does not: the radius is margin/2 (92 at depth 4). The grid-blind radius is
    the union of sizes.input_window over the 2^depth phases (107 at depth 4: one more than
    margin/2 only at depth 1)."""
    cls, cfg = registry.get("unet"), UNetConfig(depth=depth, base=2)
    margin = sizes.size_margin(depth)
    assert receptive_radius(cls, cfg) == margin // 2
    windows = [(lo - p, hi - p) for p, (lo, hi) in
               ((p, sizes.input_window(p, depth)) for p in range(2**depth))]
    half = margin // 2
    blind = max(max(half - lo, hi - half) for lo, hi in windows)
    assert trace.reach(cls, cfg).blind == blind
    assert (depth, blind) in ((1, 9), (2, 23), (3, 51), (4, 107))


def _chain(T, *layers, skip=None):
    """A hand-made Trace on a (1, 1, T, T) input: layers = (op, attrs, n_out) in order, each
    reading the previous value; ("concat", {}, n) reads the previous one and value `skip`
    (an index into the layers), ("channel_scale", ...) the previous one and a global pool."""
    nodes, prev = [], "input"
    for i, (op, attrs, n) in enumerate(layers):
        ins = (prev,)
        if op == "concat":
            ins = (f"v{skip}", prev)
        if op == "channel_scale":
            ins = (prev, f"v{skip}")
        nodes.append(Node(op, ins, attrs, f"v{i}", (1, 1, n, n)))
        prev = f"v{i}"
    return Trace(input=(1, 1, T, T), nodes=nodes, output=prev)


def _radius(t):
    return trace._reach_of(t, UNetConfig())


def conv(k, p, n, s=1):
    return ("conv2d_general", {"kernel": (k, k), "stride": (s, s), "padding": (p, p)}, n)


def test_radius_of_hand_counted_networks():
    T = 64
    # padded 3x3: 1; two padded 5x5: 2 + 2; a valid 3x3 (output T - 2, on pixel o + 1): 1
    assert _radius(_chain(T, conv(3, 1, T))).radius == 1
    assert _radius(_chain(T, conv(5, 2, T), conv(5, 2, T))).radius == 4
    assert _radius(_chain(T, ("conv2d", {"kernel": 3}, T - 2))).radius == 1
    # stride-2 3x3 conv, nearest x2: o = 2m reaches [o - 1, o + 1], o = 2m + 1 [o - 2, o]:
    # the odd pixel at 1 reaches -1, so h = 2; nothing reaches right of o + 1
    r = _radius(_chain(T, conv(3, 1, T // 2, s=2), ("nearest_upsample2", {}, T)))
    assert (r.radius, r.blind) == (2, 2)
    # 2x2 pool, bilinear x2 (align_corners False): o = 2m reads pooled m - 1, m: [o - 2, o + 1];
    # o = 2m + 1 reads m, m + 1: [o - 1, o + 2]; on the grid only pixel 0 (and T - 1) reach out
    r = _radius(_chain(T, ("maxpool2x2", {}, T // 2),
                       ("bilinear_upsample", {"factor": 2, "align_corners": False}, T)))
    assert (r.radius, r.blind) == (1, 2)
    # a padded depth-1 U-Net: even o reaches [o - 8, o + 9], odd o [o - 9, o + 8]: radius 8 on
    # the grid (both borders are even), 9 grid-blind
    r = _radius(_chain(T, conv(3, 1, T), conv(3, 1, T), ("maxpool2x2", {}, T // 2),
                       conv(3, 1, T // 2), conv(3, 1, T // 2), ("upconv2x2", {}, T),
                       ("concat", {}, T), conv(3, 1, T), conv(3, 1, T), skip=1))
    assert (r.radius, r.blind) == (8, 9)
    # global pooling gates the map: the whole image; align_corners=True: not equivariant
    r = _radius(_chain(T, conv(3, 1, T), ("global_avgpool", {}, 1), ("channel_scale", {}, T),
                       skip=0))
    assert r.radius is None and "whole image" in r.reason
    r = _radius(_chain(T, ("maxpool2x2", {}, T // 2),
                       ("bilinear_upsample", {"factor": 2, "align_corners": True}, T)))
    assert r.radius is None and "align_corners" in r.reason
    with pytest.raises(NotImplementedError, match="RADIUS_RULES"):
        _radius(_chain(T, ("unheard_of", {}, T)))


# --- networks: every registered one with a test configuration ----------------------------


def _model(name, dtype="float64"):
    cls = registry.get(name)
    try:
        cfg = cls.test_config(dtype=dtype)
    except NotImplementedError:
        pytest.skip(f"{name} has no test_config yet")
    model = registry.build_model(cfg, seed=1)
    x = np.random.default_rng(7).standard_normal((2, cfg.in_channels, 32, 32)).astype(dtype)
    model.forward(x)  # one training batch: BatchNorm's running statistics are set
    return model.eval()


def _overlapping_image(model, halo, rng):
    """An image of 3 x 2 tiles of output step s (sides multiples of the grid, more than twice
    the radius) and the tile."""
    g = model.geometry.grid
    r = tiles.network_reach(model.config).radius
    s = -(-max(16, 2 * r + g) // g) * g  # the tile step: wider than the reach of a pixel
    H, W = 2 * s + g, s + g
    tile = s + 2 * halo
    geo = inference_geometry(model.geometry, halo)
    assert [len(axis_plan(n, tile, geo)) for n in (H, W)] == [3, 2]
    return rng.random((model.config.in_channels, H, W)), tile


SLOW = {"mobile-unet"}  # a radius of 319 px: tiles of ~700 px in float64 (12 s and 35 s)
PADDED = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
          for n in registry.names() if registry.get(n).config_class is not UNetConfig]


@pytest.mark.parametrize("name", PADDED)
def test_tiles_equal_one_pass(name):
    model = _model(name)
    halo = default_halo(model.config)
    if halo is None:
        pytest.skip(f"{name} cannot tile exactly: {tiles.network_reach(model.config).reason}")
    img, tile = _overlapping_image(model, halo, np.random.default_rng(0))
    single = predict(model, img, tile=4096)
    tiled = predict(model, img, tile=tile)
    np.testing.assert_allclose(tiled, single, rtol=0, atol=1e-10)
    # the halo is a multiple of the grid and the sides are: away from the image's border (by
    # the radius) one pass over the padded image is model.forward of the image itself
    r = tiles.network_reach(model.config).radius
    logits = model.forward(standardize(img)[None])
    if isinstance(logits, tuple):
        logits = logits[0]
    fw = tiles.softmax(logits)[0]
    inner = (slice(None), slice(r, -r), slice(r, -r))
    assert fw[inner].size > 0
    np.testing.assert_allclose(tiled[inner], fw[inner], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["toy_resunet", "tiny_bn"])
def test_the_radius_is_the_smallest_exact_halo(name):
    """A halo of exactly the radius (not a multiple of the grid: the frame is the padded
    image's all the same) is exact; one pixel less is not."""
    model = _model(name)
    r = tiles.network_reach(model.config).radius
    img = np.random.default_rng(1).random((1, 58, 44))
    for h, exact in ((r, True), (r - 1, False)):
        one = predict(model, img, tile=4096, halo=h)
        tiled = predict(model, img, tile=20 + 2 * h + (2 * h) % 2, halo=h)
        err = np.abs(one - tiled).max()
        assert (err < 1e-12) == exact, (h, err)


@pytest.mark.filterwarnings("ignore::minunet.inference.chunked.SmallChunkWarning")
@pytest.mark.parametrize("name", PADDED)
def test_chunked_equals_in_memory(name, tmp_path):
    pytest.importorskip("zarr", reason='chunked prediction needs the scale extra')
    pytest.importorskip("dask", reason='chunked prediction needs the scale extra')
    from minunet.inference.chunked import predict_zarr
    from minunet.inference.outputs import to_channels

    model = _model(name)
    halo = default_halo(model.config)
    if halo is None:
        pytest.skip(f"{name} cannot tile exactly")
    _, tile = _overlapping_image(model, halo, np.random.default_rng(0))
    step = tile - 2 * halo
    image = (np.random.default_rng(2).random((2 * step + 8, 3 * step - 6)) * 255).astype(
        np.uint8)  # 3 x 3 tiles, sides off the grid
    x = to_channels(image, model.config.in_channels, "image", "max")
    single = predict(model, x, tile=4096)
    in_memory = predict(model, x, tile=tile)
    np.testing.assert_allclose(in_memory, single, rtol=0, atol=1e-10)
    summary = predict_zarr(model, image, tmp_path / "out.zarr", tile=tile, chunk=step,
                           progress=False)
    assert summary.halo == halo and summary.seam is None and summary.chunks == 9
    import zarr

    prob = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["prob"][...]
    np.testing.assert_allclose(prob, in_memory[1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(prob, single[1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", PADDED)
def test_networks_without_an_exact_halo_report_their_seam(name):
    model = _model(name, "float32")
    if default_halo(model.config) is not None:
        pytest.skip(f"{name} tiles exactly")
    img = standardize(np.random.default_rng(3).random((1, 160, 160)).astype(np.float32))
    note = tiles.seam_note(model, lambda r: img[:, r[0]:r[1], r[2]:r[3]], (160, 160),
                           2 * model.geometry.grid + 64, 1, None)
    assert note is not None and "seam error" in note


# --- the command: --halo and the seam line --------------------------------------------------


@dataclass
class CornersConfig(ModelConfig):
    arch: str = "test_corners"


class Corners(Model):
    """conv3x3, pool, conv3x3, bilinear x2 with align_corners=True, [skip, up], conv1x1: a
    padded network that no halo makes exact."""

    config_class = CornersConfig
    arch = "test_corners"

    def parameter_shapes(self):
        c = self.config
        return (conv_shapes("a", c.in_channels, 3, 3) | conv_shapes("b", 3, 3, 3)
                | conv_shapes("head", 6, c.n_classes, 1))

    def build(self, o):
        self.a, self.pool, self.b = ConvGeneral(o, "a"), Pool(o, 2), ConvGeneral(o, "b")
        self.up, self.cat = Upsample(o, "bilinear", 2, align_corners=True), Concat(o)
        self.head = ConvGeneral(o, "head", padding=0, relu=False)

    @classmethod
    def geometry_of(cls, config):
        return PaddedGeometry(grid=2)

    @classmethod
    def test_config(cls, **common):
        return CornersConfig(**common)

    def layers(self):
        return [self.a, self.pool, self.b, self.up, self.cat, self.head]

    def forward(self, x, dropout_key=None):
        p = self.params
        s = self.a.forward(p, x)
        return self.head.forward(p, self.cat.forward(s, self.up.forward(self.b.forward(
            p, self.pool.forward(s)))))


@pytest.fixture
def corners():
    registry.register("test_corners")(Corners)
    yield
    registry.ARCHITECTURES.pop("test_corners")


def _checkpoint(path, model):
    cfg = {"train": {}, "model": asdict(model.config), "optimizer": {}}
    save_checkpoint(path, model.state_dict(), {}, 0, cfg, {"seed": 0}, arch=model.arch)
    return path


def _run(tmp_path, ckpt, capsys, *options, out="out"):
    from minunet.predict import main

    assert main(["--checkpoint", str(ckpt), str(tmp_path / "img.png"), "--out",
                 str(tmp_path / out), "--device", "cpu", *options]) == 0
    return capsys.readouterr().err


def test_a_smaller_halo_prints_the_seam_error_the_default_none(tmp_path, capsys):
    model = registry.build_model(registry.get("toy_resunet").test_config(), seed=2).eval()
    ckpt = _checkpoint(tmp_path / "toy.npz", model)
    image = (np.random.default_rng(4).random((90, 70)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    assert "seam" not in _run(tmp_path, ckpt, capsys, "--tile", "40")  # default halo 10: exact
    err = _run(tmp_path, ckpt, capsys, "--tile", "40", "--halo", "4", out="o2")
    line = next(s for s in err.splitlines() if "seam error" in s)
    value = float(line.split("= ")[1].split()[0])
    assert value > 1e-4 and "receptive radius 9 px" in line and "10 px: exact" in line
    # the chunked path says the same, once
    pytest.importorskip("zarr")
    pytest.importorskip("dask")
    err = _run(tmp_path, ckpt, capsys, "--tile", "40", "--halo", "4", out="o.zarr")
    assert sum("seam error" in s for s in err.splitlines()) == 1
    assert "seam" not in _run(tmp_path, ckpt, capsys, "--tile", "40", out="o2.zarr")


def test_halo_is_refused_for_the_valid_unet(tmp_path, capsys):
    from minunet.models.unet import build_model

    model = build_model(UNetConfig(base=2), seed=5)
    ckpt = _checkpoint(tmp_path / "unet.npz", model)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "img.png")
    from minunet.predict import main

    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(ckpt), str(tmp_path / "img.png"), "--out",
              str(tmp_path / "o"), "--halo", "8"])
    assert e.value.code == 2 and "margin" in capsys.readouterr().err


def test_a_network_without_an_exact_halo(tmp_path, capsys, corners):
    model = registry.build_model(CornersConfig(), seed=3).eval()
    reach = tiles.network_reach(model.config)
    assert reach.radius is None and "align_corners" in reach.reason
    ckpt = _checkpoint(tmp_path / "c.npz", model)
    image = (np.random.default_rng(5).random((60, 44)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    assert "seam" not in _run(tmp_path, ckpt, capsys)  # the image fits: one tile, no seam
    err = _run(tmp_path, ckpt, capsys, "--tile", "32", out="o2")  # tiles, largest halo: 8
    line = next(s for s in err.splitlines() if "seam error" in s)
    assert "halo 8 px" in line and "align_corners" in line and float(
        line.split("= ")[1].split()[0]) > 0
