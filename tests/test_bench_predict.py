"""`python -m minunet.bench --predict` (section 6): checks chunked == in memory before timing
and prints megapixels per second (a tiny config; no timing asserts)."""

import numpy as np

from minunet import bench


def test_bench_predict_checks_then_times(capsys):
    rc = bench.main(["--device", "cpu", "--predict", "--base", "2", "--size", "252",
                     "--image", "300", "--rounds", "1", "--no-torch"])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("6. prediction of a 300 x 300 image", "bit for bit: yes", "in memory",
                 "chunked, threads", "MP/s"):
        assert text in out, text


def test_generated_image_is_made_where_it_is_sliced():
    img = bench.GeneratedImage(20000, 30000)
    a = img[19990:20000, 100:140]
    assert a.dtype == np.uint8 and a.shape == (10, 40) and img.shape == (20000, 30000)
    np.testing.assert_array_equal(a[:, 10:], img[19990:20000, 110:140])  # the same pixels
    assert a.std() > 10  # structure, not a constant
