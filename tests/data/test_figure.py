"""The tutorial figure regenerates (small size here, to stay fast)."""

from minunet.data.figure import synthetic_em_figure


def test_figure_writes_a_png(tmp_path):
    path = synthetic_em_figure(tmp_path / "fig.png", seed=1, size=96)
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
