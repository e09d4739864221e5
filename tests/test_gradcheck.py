"""minunet.nn.gradcheck: the numerical machinery, the CLI, and proof that a wrong backward FAILs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from minunet import backend
from minunet import gradcheck as gradcheck_cli
from minunet.nn import gradcheck
from minunet.ops import relu_forward


def test_numerical_gradient_of_a_known_function(rng):
    x = rng.standard_normal((3, 4))
    df = rng.standard_normal((3, 4))
    x0 = x.copy()
    h = 1e-4
    g = gradcheck.numerical_gradient(lambda v: v**3, x, df, h)
    # ((x+h)^3 - (x-h)^3) / 2h = 3x^2 + h^2 exactly: the h^2 is the curvature error
    np.testing.assert_allclose(g, (3 * x0**2 + h**2) * df, rtol=1e-8)
    np.testing.assert_array_equal(x, x0)  # x was restored


def test_numerical_gradient_survives_a_view_of_x(rng):
    # f returns a view of x (like center_crop); the plus side must be copied before the minus side
    x = rng.standard_normal(5)
    g = gradcheck.numerical_gradient(lambda v: v[1:4], x, np.ones(3))
    np.testing.assert_allclose(g, [0, 1, 1, 1, 0], atol=1e-10)


def test_rel_error_floor():
    assert gradcheck.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert gradcheck.rel_error(np.array([1e-10]), np.array([0.0])) == pytest.approx(1e-2)
    assert gradcheck.rel_error(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == pytest.approx(1 / 3)


def test_cli_runs_every_op_and_exits_zero():
    proc = subprocess.run([sys.executable, "-m", "minunet.gradcheck", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.endswith("PASS")]
    n = sum(len(c.wrt) for c in gradcheck.op_checks(family=True))  # a row per op and input
    assert n >= 19 + 44 and len(rows) == n  # the U-Net's, then the family's
    for op in gradcheck.op_names(family=True):
        assert any(ln.startswith(op) for ln in rows), op
    assert f"summary: all {n} gradients PASS" in proc.stdout


def test_cli_op_limits_rows(capsys):
    assert gradcheck_cli.main(["--op", "conv2d", "--device", "cpu"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.endswith("PASS")]
    n = sum(len(c.wrt) for c in gradcheck.op_checks() if c.op == "conv2d")  # k=3, k=1, relu
    assert n == 9 and len(rows) == n and all(ln.startswith("conv2d") for ln in rows)


def test_cli_op_list_and_repeat(capsys):
    assert gradcheck_cli.main(["--op", "relu,concat", "--op", "dropout", "--device", "cpu"]) == 0
    rows = [ln.split()[0] for ln in capsys.readouterr().out.splitlines() if ln.endswith("PASS")]
    assert rows == ["relu", "concat", "concat", "dropout"]


def test_cli_unknown_op_lists_valid_names(capsys):
    with pytest.raises(SystemExit) as e:
        gradcheck_cli.main(["--op", "conv3d"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown op 'conv3d'" in err and "valid ops: conv2d, upconv2x2" in err


def test_cli_float32_says_so(capsys):
    assert gradcheck_cli.main(["--dtype", "float32", "--op", "conv2d,softmax_cross_entropy",
                           "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "float32 on cpu" in out and f"STEP_FLOAT32 = {gradcheck.STEP_FLOAT32:g}" in out


@pytest.mark.skipif(backend.gpu_status().available, reason="this machine has a GPU")
def test_cli_cuda_without_gpu_gives_the_reason(capsys):
    with pytest.raises(SystemExit) as e:
        gradcheck_cli.main(["--device", "cuda", "--op", "relu"])
    assert e.value.code == 2
    assert backend.gpu_status().reason in capsys.readouterr().err


def _relu_backward_without_mask(dout, cache):
    return dout  # WRONG: forgets that the gradient is 0 where the input was negative


def test_wrong_backward_is_reported_as_fail(rng, capsys):
    x = rng.uniform(0.1, 1.0, (2, 3, 4)) * rng.choice([-1.0, 1.0], (2, 3, 4))
    results = gradcheck.check_op("relu", relu_forward, _relu_backward_without_mask,
                                 {"x": x}, ("x",), rng)
    (r,) = results
    assert not r.passed and r.max_rel_error == pytest.approx(1.0)  # analytic != 0, numeric 0
    assert x[r.worst_index] < 0  # the worst element is one the mask should have zeroed
    assert r.numeric == 0.0 and r.analytic != 0.0
    table = gradcheck.format_table(results)
    assert "FAIL" in table and "dx of relu is wrong" in table
    assert f"dx[{', '.join(map(str, r.worst_index))}]" in table
    assert "1 of 1 gradients FAIL (relu dx)" in gradcheck.summary_line(results)


def test_wrong_gradient_shape_and_missing_gradient_fail(rng):
    x = rng.standard_normal((2, 3)) + 3.0
    r1 = gradcheck.check_op("relu", relu_forward, lambda d, c: d.T, {"x": x}, ("x",), rng)[0]
    assert not r1.passed and "shape (3, 2)" in r1.explain()
    r2 = gradcheck.check_op("relu", relu_forward, lambda d, c: None, {"x": x}, ("x",), rng)[0]
    assert not r2.passed and "no gradient for x" in r2.explain()


def test_directional_check_passes_and_fails(rng):
    a = rng.standard_normal((3, 4))
    params = {"w": rng.standard_normal((4,)), "v": rng.standard_normal((3,))}

    def loss(p):  # L = sum(tanh(a @ w) * v)
        return float(np.sum(np.tanh(a @ p["w"]) * p["v"]))

    t = np.tanh(a @ params["w"])
    grads = {"w": a.T @ ((1 - t**2) * params["v"]), "v": t}
    good = gradcheck.directional_check(loss, params, grads, 4, rng)
    assert len(good) == 4 and all(r.passed for r in good), good
    bad = gradcheck.directional_check(loss, params, {"w": grads["w"], "v": 2 * t}, 4, rng)
    assert not any(r.passed for r in bad)
    with pytest.raises(ValueError, match=r"missing \['v'\]"):
        gradcheck.directional_check(loss, params, {"w": grads["w"]}, 1, rng)


@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_cli_checks_either_door(capsys, kind):
    assert gradcheck_cli.main(["--ops", kind, "--device", "cpu", "--unet-only"]) == 0
    out = capsys.readouterr().out
    assert f"{kind} ops (minunet/{'ops' if kind == 'plain' else 'fast'})" in out
    assert "all 19 gradients PASS" in out


def test_a_wrong_fast_backward_fails_the_fast_check(monkeypatch):
    from minunet import fast

    real = fast.maxpool2x2_backward
    monkeypatch.setattr(fast, "maxpool2x2_backward", lambda d, c: 2 * real(d, c))
    failed = [r for r in gradcheck.run_checks(["maxpool2x2"], kind="fast") if not r.passed]
    assert failed and all(r.op == "maxpool2x2" for r in failed)
    assert all(r.passed for r in gradcheck.run_checks(["maxpool2x2"], kind="plain"))


# Seeds at which the command once failed a correct op (before each op took its spec's step and
# ReLU6's inputs kept off its cap): conv2d with its ReLU (dx ~1e-5 entries, h = 1e-4 for every
# op), relu6 (inputs moved onto the cap at 6), nearest_upsample2 in float32 (its backward sums 4
# entries, checked as if it only copied). A sweep of seeds 0-59, both doors, both dtypes, finds
# no failure of a correct op (docs/DESIGN.md, "Gradient checks").
@pytest.mark.parametrize("op, dtype, seeds", [
    ("conv2d", "float64", (6, 20, 29)),
    ("relu6", "float64", (4, 5, 8, 34)),
    ("relu6", "float32", (4, 37, 40)),
    ("nearest_upsample2", "float32", (9, 11, 19)),
])
@pytest.mark.parametrize("kind", ["plain", "fast"])
def test_correct_ops_pass_at_seeds_that_once_failed(op, dtype, seeds, kind):
    for seed in seeds:
        results = gradcheck.run_checks([op], dtype, "cpu", seed, kind, family=True)
        assert results and all(r.passed for r in results), (
            f"seed {seed}: " + "; ".join(f"{r.op} d{r.input} {r.max_rel_error:.2e}"
                                         for r in results if not r.passed))


def test_relu6_inputs_stay_off_both_kinks():
    from minunet.nn.opspec import relu6_inputs

    rng = np.random.default_rng(0)
    for _ in range(200):
        x = relu6_inputs(rng, np.float64)["x"]
        assert np.abs(x).min() >= 0.1 and np.abs(x - 6.0).min() >= 0.1
    above = np.mean([(relu6_inputs(rng, np.float64)["x"] > 6).mean() for _ in range(200)])
    assert 0.15 < above < 0.25  # about a fifth above the cap, as the maker says
