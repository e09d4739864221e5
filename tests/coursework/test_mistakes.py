"""The grader itself, in process: the solutions get full marks; every wrong version its hint."""

from __future__ import annotations

import pytest

from minunet import ops
from minunet.coursework import bundle, grader, mistakes
from minunet.coursework.checks import KINDS, public_checks
from minunet.coursework.hidden import hidden_checks

ALL = ({k.forward_region for k in KINDS.values()} | {k.backward_region for k in KINDS.values()})


@pytest.fixture(scope="module")
def bundles():
    return [bundle.build(public_checks(), 0), bundle.build(hidden_checks(), 1, hidden=True)]


@pytest.mark.parametrize("seed", range(20))
def test_the_solutions_get_full_marks(seed):
    """The reference ops pass every public and hidden check, whatever the seed."""
    b = [bundle.build(public_checks(), seed), bundle.build(hidden_checks(), 100 + seed, True)]
    results = grader.grade_checks(ops, b, ALL)
    failed = [(r.check, r.input, r.error, r.diagnosis, r.detail) for r in results if not r.passed]
    assert not failed
    assert sum(r.points for r in results) == sum(r.max_points for r in results) > 100


@pytest.mark.parametrize("mistake", [m.id for m in mistakes.MISTAKES])
def test_every_wrong_version_fails_and_gets_its_own_hint(mistake, bundles):
    m = mistakes.by_id(mistake)
    ns = mistakes.wrong_namespace(ops, m)
    for b in bundles:  # public checks alone already name it; the hidden ones too
        results = grader.grade_checks(ns, [b], ALL, ops=[m.region.split(".")[0]])
        failed = [r for r in results if not r.passed]
        assert failed, f"{mistake} passes every {b.kind} check"
        assert mistake in {r.diagnosis for r in failed}, (
            f"{mistake}: {b.kind} diagnoses {sorted({r.diagnosis for r in failed})}")


def test_the_catalogue():
    ids = [m.id for m in mistakes.MISTAKES]
    assert len(ids) == len(set(ids)) >= 20
    per_region = {}
    for m in mistakes.MISTAKES:
        assert m.region in ALL and m.hint and m.wrong
        assert m.id.split(".")[0] in (m.region.split(".")[0], m.region.split(".")[1])
        per_region.setdefault(m.region.split(".")[0], []).append(m.id)
    assert all(len(v) >= 2 for v in per_region.values()), per_region
    assert set(per_region) == {k.op for k in KINDS.values()}
    with pytest.raises(KeyError, match="no mistake 'nope'"):
        mistakes.by_id("nope")


def test_probes_name_what_the_difference_looks_like(bundles):
    """No stored wrong version matches a result off by a factor of 3 or of -1: the probes do."""
    real = ops.relu_backward

    def times(c):
        return lambda dout, cache: c * real(dout, cache)

    for factor, probe in ((3.0, "constant_ratio"), (-1.0, "sign")):
        ns = mistakes.wrong_namespace(ops, mistakes.Mistake("x.y", "relu.backward", "",
                                                            {"relu_backward": times(factor)}))
        results = grader.grade_checks(ns, bundles[:1], ALL, ops=["relu"])
        assert {r.diagnosis for r in results if not r.passed} == {probe}
    ns = mistakes.wrong_namespace(ops, mistakes.Mistake(
        "x.y", "center_crop.backward", "",
        {"center_crop_backward": lambda d, c: _first_image(ops.center_crop_backward(d, c))}))
    results = grader.grade_checks(ns, bundles[:1], ALL, ops=["center_crop"])
    assert {r.diagnosis for r in results if not r.passed} == {"first_image_only"}


def _first_image(dx):
    dx = dx.copy()
    dx[1:] *= 0.5
    return dx


def test_a_forward_right_for_one_image_only_is_batch_mixing(bundles):
    def relu_forward(x):
        out, cache = ops.relu_forward(x)
        out = out.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(1, 0, 2, 3).copy()
        return out, cache

    ns = mistakes.wrong_namespace(ops, mistakes.Mistake("x.y", "relu.forward", "",
                                                        {"relu_forward": relu_forward}))
    results = grader.grade_checks(ns, bundles[:1], ALL, ops=["relu"])
    assert {r.diagnosis for r in results if r.input == "forward"} == {"batch_mixing"}
