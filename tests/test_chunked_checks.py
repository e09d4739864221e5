"""A chunked store knows what it holds, and every error is one line (issue 22, findings 5, 8, 9).

Each test reproduces one finding of the issue and shows it fixed: an input changed under the
same name (finished store, half-done store), a chunk overwritten or truncated on disk,
all-background mask chunks, a read-only output, truncated zlib and raw TIFFs, damaged pixels,
and tiny chunks. Small networks (base 2), images of 2 x 3 chunks of 192 px (tile 252, step 64).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tifffile

from minunet.data.loaders import DataError, read_array
from minunet.inference import chunk_store
from minunet.inference.chunked import InputError, SmallChunkWarning, min_chunk, predict_zarr
from minunet.inference.outputs import to_channels
from minunet.inference.tiles import predict
from minunet.models.unet import UNetConfig, build_model
from minunet.predict import main

zarr = pytest.importorskip("zarr", reason='chunked prediction needs the scale extra: pip '
                           'install "minunet[scale]"')

TILE, CHUNK = 252, 192  # tile step 64: a chunk is 3 whole steps
SHAPE = (200, 400)  # 2 x 3 chunks; the last row of chunks 8 px tall


@pytest.fixture(scope="module")
def model():
    return build_model(UNetConfig(base=2), seed=11).eval()


def image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(SHAPE) * 255).astype(np.uint8)


def run(model, src, out, **kw):
    return predict_zarr(model, src, out, tile=TILE, chunk=CHUNK, progress=False, **kw)


def read(out, name="prob"):
    return zarr.open_group(str(out), mode="r")[name][...]


def in_memory(model, img):
    return predict(model, to_channels(img, 1, "a", "max"), tile=TILE)[1]


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    """The model as a checkpoint, for the CLI."""
    from dataclasses import asdict

    from minunet.training.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "m.npz"
    save_checkpoint(path, model.state_dict(), {}, 0,
                    {"train": {}, "model": asdict(model.config), "optimizer": {}}, {"seed": 0})
    return path


@pytest.fixture
def tiff(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, image(0))
    return path


# ----------------------------------------------------------------------------- finding 5


def test_changed_input_same_name_finished_store_is_refused(model, tiff, tmp_path):
    """Before: the finished store kept the stale prediction and the rerun said 'wrote 0'."""
    out = tmp_path / "p.zarr"
    run(model, tiff, out)
    old = read(out)
    tifffile.imwrite(tiff, image(1))  # the same name, the same shape and dtype, new pixels
    with pytest.raises(DataError, match=r"other contents of .*a\.tif .*blake2b.* new --out, "
                                        r"or add --overwrite") as e:
        run(model, tiff, out)
    one_line(e)
    np.testing.assert_array_equal(read(out), old)  # refused before anything was written
    s = run(model, tiff, out, overwrite=True)
    assert (s.computed, s.skipped) == (6, 0)
    np.testing.assert_array_equal(read(out), in_memory(model, image(1)))


def test_changed_input_half_done_store_is_refused_never_mixed(model, tmp_path):
    """Before: a half-done store finished with the new pixels, next to the old ones. A zarr
    input: its chunk files are what the digest reads."""
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=image(0), chunks=(100, 100))
    out = tmp_path / "p.zarr"
    run(model, src, out)
    for job in ("0.1", "1.2"):  # as if killed before these two chunks were marked
        (out / "done" / f"{job}.json").unlink()
    zarr.open_array(str(src), mode="r+")[...] = image(1)
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    with pytest.raises(DataError, match="other contents of .*in.zarr"):
        run(model, src, out)
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    run(model, src, out, overwrite=True)
    np.testing.assert_array_equal(read(out), in_memory(model, image(1)))  # all new


@pytest.mark.parametrize("damage", ["overwritten", "truncated"])
def test_damaged_chunk_is_computed_again(model, tiff, tmp_path, damage):
    """Before: a chunk overwritten (NaN, 3.8e32) or truncated on disk counted as complete."""
    out = tmp_path / "p.zarr"
    run(model, tiff, out, mask=True)
    want = read(out)
    f = out / "prob" / "c" / "0" / "1"
    if damage == "overwritten":  # a valid chunk, other values: only the checksum tells
        a = zarr.open_group(str(out), mode="r+")["prob"]
        a[0:192, 192:384] = np.where(np.arange(192) % 2, np.nan, 3.8e32)[:, None]
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    s = run(model, tiff, out, mask=True)
    assert (s.computed, s.skipped) == (1, 5)
    np.testing.assert_array_equal(read(out), want)
    marker = json.loads((out / "done" / "0.1.json").read_text())
    assert marker["prob"] == {"key": "c/0/1", **chunk_store.file_record(f)}
    assert set(marker) == {"prob", "mask"}


def test_all_background_mask_chunks_count_as_done(model, tiff, tmp_path):
    """Before: a mask chunk all 0 (the fill value) wrote no file, so it never counted done."""
    out = tmp_path / "p.zarr"
    first = run(model, tiff, out, mask=True, threshold=1.0)  # p > 1 nowhere: mask all 0
    assert first.computed == 6 and not read(out, "mask").any()
    assert len(list((out / "mask" / "c").rglob("*"))) == 2 + 6  # 2 row folders, 6 chunks
    again = run(model, tiff, out, mask=True, threshold=1.0)
    assert (again.computed, again.skipped) == (0, 6)


def test_stale_and_torn_markers_are_removed(model, tiff, tmp_path):
    out = tmp_path / "p.zarr"
    run(model, tiff, out)
    (out / "done" / "1.0.json").write_text('{"prob": ')  # torn
    (out / "done" / ".0.0.json.1234.tmp").write_text("{}")  # a write killed mid-way
    (out / "done" / "7.7.json").write_text("{}")  # outside the grid
    s = run(model, tiff, out)
    assert (s.computed, s.skipped) == (1, 5)
    assert sorted(f.name for f in (out / "done").iterdir()) == [
        f"{y}.{x}.json" for y in range(2) for x in range(3)]


# ----------------------------------------------------------------------------- finding 8


def _no_writes(monkeypatch):
    """Every chunk file zarr writes fails as on a read-only folder (the tests run as root,
    which writes anywhere)."""
    def refuse(path, value, exclusive=False):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(zarr.storage._local, "_put", refuse)


def test_unwritable_new_output_is_one_line_and_leaves_nothing(model, tiff, tmp_path,
                                                              monkeypatch):
    """Before: PermissionError with a traceback."""
    _no_writes(monkeypatch)
    with pytest.raises(DataError, match=r"cannot write .*p\.zarr \(Permission denied: .*\); "
                                        "make it writable or choose another --out") as e:
        run(model, tiff, tmp_path / "p.zarr")
    one_line(e)
    assert not (tmp_path / "p.zarr").exists()


def test_unwritable_chunks_keep_a_resumable_store_and_say_so(model, tiff, tmp_path,
                                                             monkeypatch):
    out = tmp_path / "p.zarr"
    run(model, tiff, out)
    for job in ("0.0", "1.1"):
        (out / "done" / f"{job}.json").unlink()
    with monkeypatch.context() as m:
        _no_writes(m)
        with pytest.raises(DataError, match=r"cannot write chunk \(\d, \d\) into .*Permission "
                                            r"denied.*; .*p\.zarr is kept and resumable \(4 of "
                                            r"6 chunk\(s\) complete\): fix the cause and rerun"):
            run(model, tiff, out)
    s = run(model, tiff, out)  # writable again: the same command finishes it
    assert (s.computed, s.skipped) == (2, 4)
    np.testing.assert_array_equal(read(out), in_memory(model, image(0)))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder(model, tiff, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DataError, match=r"cannot write .*Permission denied"):
            run(model, tiff, ro / "p.zarr")
        assert not (ro / "p.zarr").exists()
    finally:
        ro.chmod(0o755)


def _truncate(path, fraction=0.6):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("compression", ["zlib", None])
def test_truncated_tiff_is_named_before_a_store_is_made(model, tmp_path, compression):
    """Before: zlib -> DeflateError in a task, and a metadata-only store left behind; raw ->
    'mmap length is greater than file size', no file named."""
    path = tmp_path / "cut.tif"
    kw = {"compression": "zlib", "tile": (64, 64)} if compression else {}
    tifffile.imwrite(path, image(0), **kw)
    _truncate(path)
    with pytest.raises(DataError, match=r"cut\.tif is truncated: its pixel data run to byte "
                                        r"[\d,]+ but the file holds [\d,]+ bytes; copy or save "
                                        "it again") as e:
        run(model, path, tmp_path / "p.zarr")
    one_line(e)
    assert not (tmp_path / "p.zarr").exists()
    with pytest.raises(DataError, match=r"cut\.tif is truncated"):
        read_array(path)  # the in-memory path says the same


def test_damaged_pixels_remove_the_new_store_and_say_so(model, tmp_path):
    """A zlib TIFF whole in length whose compressed tiles are garbage: found when the pixels
    are read, in a task; the store this run made holds no complete chunk and is removed."""
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, image(0), compression="zlib", tile=(64, 64))
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        spans = list(zip(page.dataoffsets, page.databytecounts, strict=True))
    data = bytearray(path.read_bytes())
    for off, n in spans[1:]:  # the first tile whole: the first pixel reads, the rest not
        data[off: off + n] = b"\x07" * n
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.tif: cannot read rows .*DeflateError.*; the "
                                        r"input is damaged or truncated: copy or save it again; "
                                        r".*p\.zarr was removed \(no chunk was complete\)") as e:
        run(model, path, tmp_path / "p.zarr", workers=1)
    one_line(e)
    assert not (tmp_path / "p.zarr").exists()


def test_damaged_zarr_input_chunk_is_named_and_its_store_removed(model, tmp_path):
    """One chunk file of a zarr input is garbage: whichever chunks finished first, the store
    made from the damaged input goes (its digest is the damaged file's: no use to resume)."""
    src = tmp_path / "in.zarr"
    zarr.create_array(str(src), data=image(0), chunks=(100, 100))
    (src / "c" / "1" / "3").write_bytes(b"\x07" * 64)
    with pytest.raises(InputError, match=r"in\.zarr: cannot read rows .*; the input is damaged "
                                         r"or truncated: .*p\.zarr was removed") as e:
        run(model, src, tmp_path / "p.zarr")
    one_line(e)
    assert not (tmp_path / "p.zarr").exists()


def test_cli_errors_are_one_line(ckpt, tmp_path):
    """Through `python -m minunet.predict`: a truncated raw TIFF, a PNG that is no image."""
    tifffile.imwrite(tmp_path / "raw.tif", image(0))
    _truncate(tmp_path / "raw.tif")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    for name, why in (("raw.tif", "is truncated"), ("junk.png", "is not a readable image")):
        argv = ["--checkpoint", str(ckpt), str(tmp_path / name), "--out",
                str(tmp_path / "o.zarr")]
        with pytest.raises(SystemExit, match=f"error: .*{name} {why}") as e:
            main(argv)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "o.zarr").exists()


def test_cli_names_overwrite_and_applies_it(model, ckpt, tiff, tmp_path, capsys):
    argv = ["--checkpoint", str(ckpt), str(tiff), "--out",
            str(tmp_path / "o.zarr"), "--tile", str(TILE), "--chunk", str(CHUNK)]
    assert main(argv) == 0
    tifffile.imwrite(tiff, image(2))
    with pytest.raises(SystemExit, match="other contents of .*add --overwrite to replace it"):
        main(argv)
    assert main(argv + ["--overwrite"]) == 0
    assert "wrote 6 chunk(s)" in capsys.readouterr().err
    np.testing.assert_array_equal(read(tmp_path / "o.zarr"), in_memory(model, image(2)))
    with pytest.raises(SystemExit, match="--overwrite applies to chunked prediction into "
                                         "OUT.zarr; --out .*folder is a folder"):
        main(argv[:3] + ["--out", str(tmp_path / "folder"), "--overwrite"])


# ----------------------------------------------------------------------------- finding 9


def test_tiny_chunks_are_refused_by_the_cli_and_warned_by_the_library(model, ckpt, tiff,
                                                                      tmp_path):
    """Before: --chunk 16 ran (about 6.6 hours for 4 MP)."""
    assert min_chunk(4) == 192 and min_chunk(3) == 88  # margins 184, 88 up to grids 16, 8
    argv = ["--checkpoint", str(ckpt), str(tiff), "--out",
            str(tmp_path / "t.zarr"), "--chunk", "16"]
    with pytest.raises(SystemExit, match=r"--chunk: chunk 16 is below 192, the smallest worth "
                                         r"running: .*184 px context margin.* about 156x .*use "
                                         "a chunk of 192 or more"):
        main(argv)
    assert not (tmp_path / "t.zarr").exists()
    img = image(0)[:100, :200]
    with pytest.warns(SmallChunkWarning, match="chunk 64 is below 192"):
        predict_zarr(model, img, tmp_path / "w.zarr", tile=TILE, chunk=64, progress=False)
    predict_zarr(model, img, tmp_path / "n.zarr", tile=TILE, chunk=(112, 192),
                 progress=False)  # 112 covers the 100 rows: one chunk, no waste, no warning
    shutil.rmtree(tmp_path / "w.zarr")


def test_ome_zarr_versions_compare_as_numbers():
    from minunet.inference.chunked import ome_version

    assert ome_version("0.10") > ome_version("0.5") > ome_version("0.4") == (0, 4)
    assert ome_version("0.4.1-dev") == (0, 4, 1) and ome_version(0.5) == (0, 5)
