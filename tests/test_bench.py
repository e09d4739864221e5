"""The benchmark CLI: checks before timing, prints its tables (a tiny config, no timing asserts)."""

import pytest

from minunet import bench
from minunet.backend import cpu


@pytest.mark.slow  # 5-12 s on a 2-core CPU
def test_bench_runs_and_prints_every_section(capsys):
    rc = bench.main(["--device", "cpu", "--size", "188", "--base", "2", "--repeat", "1",
                     "--warmup", "0", "--no-torch", "--data"])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("twins (Numba / CUDA) vs the plain ops", "im2col", "softmax-xent fwd",
                 "sgd update", "forward+backward", "training step", "GFLOP/s", "tiles/s",
                 "fast s", "plain s", "plain/fast", "of copy"):
        assert text in out, text
    copy_row = next(line for line in out.splitlines() if line.strip().startswith(bench.COPY))
    assert copy_row.split()[-1] == "100%"  # the reference is its own 100 %


def test_bench_times_one_door_when_asked(capsys):
    assert bench.main(["--device", "cpu", "--size", "188", "--base", "2", "--repeat", "1",
                       "--warmup", "0", "--no-torch", "--no-ops", "--ops", "plain"]) == 0
    out = capsys.readouterr().out
    assert "plain s" in out and "fast s" not in out
    assert "peak memory MB" in out and "training step" in out.split("peak memory MB")[1]


def test_bench_refuses_to_time_a_wrong_fast_path(monkeypatch, capsys):
    wrong = cpu.maxpool2x2_forward

    def bad(x):
        out, arg = wrong(x)
        return out + 1, arg

    monkeypatch.setattr(cpu, "maxpool2x2_forward", bad)
    assert bench.main(["--device", "cpu", "--size", "188", "--base", "2", "--repeat", "1",
                       "--no-torch", "--no-ops"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_bench_layers_prints_one_row_per_layer(capsys):
    assert bench.main(["--device", "cpu", "--size", "188", "--base", "2", "--repeat", "1",
                       "--rounds", "1", "--warmup", "0", "--no-torch", "--layers"]) == 0
    out = capsys.readouterr().out
    assert "7. per layer" in out and "thread dispatches per step" in out and "BLAS:" in out
    rows = {line.split()[0] for line in out.splitlines() if line.startswith("   ")}
    for name in ("down0.conv0", "down3.pool", "drop.enc", "bottleneck.conv1", "up0.upconv",
                 "up0.concat", "up0.conv1", "final", "loss", "sgd"):
        assert name in rows, name
    assert "hot loops" not in out and "3. U-Net" not in out  # --layers replaces them


def test_layer_specs_follow_the_network():
    from minunet.models.unet import UNetConfig, layer_table

    cfg = UNetConfig(base=2)
    specs = bench.layer_specs(cfg, 188, 1)
    names = [s["name"] for s in specs]
    assert set(r["layer"] for r in layer_table(cfg, 188)) <= set(names)
    final = specs[names.index("final")]
    assert final["x"] == (1, 2, 4, 4)  # 188 -> 4: the last conv sees the output size
