"""One spec per op (minunet/nn/opspec.py), read by the gradcheck command, the tests and the
coursework's grader: nothing else lists an op's differentiable inputs or thresholds, and where
the command and the grader check the same case they draw the same inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from minunet.coursework import checks
from minunet.coursework.hidden import hidden_checks
from minunet.nn import gradcheck, opspec
from minunet.ops import conv2d_forward


def test_one_spec_per_op_and_every_reader_names_one():
    assert len(opspec.SPECS) == len({s.op for s in opspec.SPECS.values()})
    rows = gradcheck.op_checks(family=True)
    assert [c.op for c in rows] == [s.op for s in opspec.checked_specs(True) for _ in s.cases]
    assert all(c.spec is opspec.SPECS[c.op] for c in rows)
    for kind in checks.KINDS.values():
        assert kind.op_spec is opspec.SPECS[kind.spec]
        assert (kind.forward_fn, kind.backward_fn) == (kind.op_spec.forward,
                                                       kind.op_spec.backward)
    # the rows and the graded checks carry no wrt, threshold, floor or step of their own
    own = {"wrt", "threshold", "threshold_float64", "threshold_float32", "floor_float64",
           "floor64", "h", "step"}
    for cls in (gradcheck.OpCheck, checks.Check):
        assert not own & {f.name for f in dataclasses.fields(cls)}, cls


@pytest.mark.parametrize("which", ["public", "hidden"])
def test_a_graded_check_reads_its_spec(which):
    cs = checks.public_checks() if which == "public" else hidden_checks()
    for position, c in enumerate(cs):
        s = opspec.spec(checks.KINDS[c.kind].spec)
        assert c.threshold == s.threshold(c.dtype) and c.floor_fraction == s.floor(c.dtype)
        inputs = c.make_inputs(np.random.default_rng([0, position]), np.dtype(c.dtype))
        if checks.KINDS[c.kind].forward_only:
            assert c.wrt == ()
            continue
        # wrt: the spec's, less an optional input the maker leaves out (a conv's bias)
        assert c.wrt == tuple(n for n in s.wrt if inputs.get(n) is not None), c.name
        assert c.step(inputs) == s.step(c.dtype, relu=bool(inputs.get("relu", False)))


def test_the_command_and_the_grader_draw_the_same_inputs():
    """Every public check that is a row of the command (its label, its shapes; conv2d's
    fused ReLU aside: it keeps off its kink by the checker's own step) draws what the row draws
    from the same generator."""
    rows = {c.name: c for c in gradcheck.op_checks(family=True)}
    shared = 0
    for c in checks.public_checks():
        if c.name not in rows:
            continue
        a = c.make_inputs(np.random.default_rng(5), np.dtype(c.dtype))
        if a.get("relu"):
            continue
        b = rows[c.name].make_inputs(np.random.default_rng(5), np.dtype(c.dtype))
        assert list(a) == list(b), c.name
        if next(iter(a.values())).shape != next(iter(b.values())).shape:
            continue  # the same label, other shapes: conv2d_general (k=3, s=2, p=1) at N = 2
        for k in a:
            if isinstance(a[k], np.ndarray):
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{c.name}: {k}")
            else:
                assert a[k] == b[k], (c.name, k)
        shared += 1
    assert shared == 12  # conv2d (2), upconv, max-pool, relu, concat, softmax, dropout,
    # conv2d_general (same), batchnorm2d (3): dropout's and BatchNorm's makers were two


def test_a_conv_without_bias_has_no_bias_gradient():
    make = opspec.conv_general_inputs(2, 4, 6, 5, 5, 1, bias=False)
    assert opspec.spec("conv2d_general").wrt_of(make) == ("x", "w")
    by_name = {c.name: c for c in gradcheck.op_checks(family=True)}
    assert by_name["conv2d_general (k=1, no bias)"].wrt == ("x", "w")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_conv_relu_inputs_stay_off_the_kink_of_the_real_conv(dtype):
    """The maker's own pre-activations (so that a check's inputs never depend on the conv it
    checks) are the conv's, and every one is further from 0 than the step can reach."""
    step = opspec.spec("conv2d").step(dtype, relu=True)
    for seed in range(5):
        inputs = checks.conv_inputs(2, 3, 4, 3, 6, 5, relu=True)(np.random.default_rng(seed),
                                                                   dtype)
        z, _ = conv2d_forward(inputs["x"], inputs["w"], inputs["b"])
        mine = opspec._valid_conv(inputs["x"], inputs["w"], inputs["b"])
        np.testing.assert_allclose(mine, z, rtol=1e-4 if dtype == "float32" else 1e-12,
                                   atol=1e-5 if dtype == "float32" else 1e-12)
        reach = step * max(np.abs(inputs["x"]).max(), np.abs(inputs["w"]).max(), 1.0)
        assert np.abs(z).min() > 2 * reach


def test_check_spec_takes_the_specs_threshold_and_floor(rng):
    from minunet.ops.loss import msssim_backward, msssim_forward

    inputs = opspec.msssim_inputs(rng, np.float64)
    (r,) = gradcheck.check_spec("msssim", msssim_forward, msssim_backward, inputs, rng)
    assert r.threshold == opspec.spec("msssim").threshold_float64 == 1e-6 and r.passed
