"""Right values in the wrong places: each gets its hint, by catalogue and by probe alone.

Five mistakes once got only "[unknown]": im2col and col2im with a reshape where a
transpose belongs, the ReLU mask `out >= 0`, the up-conv backward with its tap
indices swapped, max-pool's backward left in the windows' layout. Each is fed
here as a student would write it (not the catalogue's code: the grader knows
numbers, not code), to bundles with the catalogue's fingerprints and to bundles
without any (the probes of probes.py alone), and must get its own diagnosis.
The probes must not speak where they should not: not for the reference, not
for any other catalogued mistake, not for a result that is only noisy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from minunet import ops
from minunet.coursework import bundle, grader, mistakes, probes
from minunet.coursework.checks import KINDS, public_checks
from minunet.coursework.hidden import hidden_checks

ALL = ({k.forward_region for k in KINDS.values()} | {k.backward_region for k in KINDS.values()})
NEW = ("im2col.reshape_for_transpose", "col2im.reshape_for_transpose", "relu.mask_at_zero",
       "upconv2x2.backward_taps_swapped", "maxpool2x2.layout_not_restored")
SPOKEN = set(NEW) | set(probes.ORDER)  # what the new entries and probes can say


# --- the five mistakes, as a student writes them ----------------------------------------------


def im2col_reshaped(x, k):
    """Whole-array style: gather all windows, then reshape (N, C) as if it were (C, N)."""
    N, C, H, W = x.shape
    Ho, Wo = H - k + 1, W - k + 1
    win = np.stack([x[:, :, i : i + Ho, j : j + Wo] for i in range(k) for j in range(k)])
    win = win.reshape(k, k, C, N, Ho, Wo)  # (k*k, N, C, Ho, Wo) read as (k, k, C, N, ...)
    return win.transpose(2, 0, 1, 3, 4, 5).reshape(C * k * k, N * Ho * Wo)


def col2im_reshaped(cols, x_shape, k):
    """A loop over offsets into (C, N, H, W), returned with a reshape."""
    N, C, H, W = x_shape
    Ho, Wo = H - k + 1, W - k + 1
    dx = np.zeros((C, N, H, W), dtype=cols.dtype)
    for r in range(C * k * k):
        c, i, j = r // (k * k), (r // k) % k, r % k
        dx[c, :, i : i + Ho, j : j + Wo] += cols[r].reshape(N, Ho, Wo)
    return np.reshape(dx, x_shape)


def relu_backward_ge(dout, cache):
    mask = (cache.out >= 0).astype(dout.dtype)
    return dout * mask


def upconv_backward_einsum_swapped(dout, cache):
    """The backward as einsums, with i and j swapped in the reading of dout."""
    x, w = cache
    N, Cin, H, W = x.shape
    Cout = w.shape[1]
    d6 = dout.reshape(N, Cout, H, 2, W, 2)  # (N, Cout, H, i, W, j)
    dx = np.einsum("coij,nohjwi->nchw", w, d6)  # the taps read as (j, i)
    dw = np.einsum("nchw,nohjwi->coij", x, d6)
    return dx, dw, dout.sum(axis=(0, 2, 3))


def maxpool_backward_no_transpose(dout, cache):
    N, C, Ho, Wo = dout.shape
    onehot = cache.arg[..., None] == np.arange(4)  # (N, C, Ho, Wo, 4)
    return (onehot * dout[..., None]).reshape(N, C, 2 * Ho, 2 * Wo).astype(dout.dtype)


STUDENT = {"im2col.reshape_for_transpose": {"im2col": im2col_reshaped},
           "col2im.reshape_for_transpose": {"col2im": col2im_reshaped},
           "relu.mask_at_zero": {"relu_backward": relu_backward_ge},
           "upconv2x2.backward_taps_swapped": {"upconv2x2_backward":
                                               upconv_backward_einsum_swapped},
           "maxpool2x2.layout_not_restored": {"maxpool2x2_backward":
                                              maxpool_backward_no_transpose}}


@pytest.fixture(scope="module")
def bundles():
    return [bundle.build(public_checks(), 0), bundle.build(hidden_checks(), 1, hidden=True)]


@pytest.fixture(scope="module")
def bare(bundles):
    """The same bundles without fingerprints: only the probes can name a mistake."""
    out = copy.deepcopy(bundles)
    for b in out:
        for d in b.checks:
            d.fingerprints.clear()
    return out


def grade(functions: dict, region: str, bundle_list) -> list:
    ns = mistakes.wrong_namespace(ops, mistakes.Mistake("student.own", region, "", functions))
    return [r for r in grader.grade_checks(ns, bundle_list, ALL, ops=[region.split(".")[0]])
            if not r.passed]


@pytest.mark.parametrize("fingerprints", [True, False], ids=["catalogue", "probes_alone"])
@pytest.mark.parametrize("mistake", NEW)
def test_a_students_version_gets_the_mistakes_hint(mistake, fingerprints, bundles, bare):
    region = mistakes.by_id(mistake).region
    for b in bundles if fingerprints else bare:
        failed = grade(STUDENT[mistake], region, [b])
        assert failed, f"{mistake} (student's version) passes every {b.kind} check"
        said = {r.diagnosis for r in failed}
        assert mistake in said, f"{mistake}: {b.kind} diagnoses {sorted(said)}"
        others = said & (set(NEW) - {mistake})
        assert not others, f"{mistake}: also diagnosed as {sorted(others)}"
        assert "unknown" not in said or mistake == "upconv2x2.backward_taps_swapped", said


def test_the_students_versions_compute_the_catalogued_numbers():
    """The student's code and the catalogue's wrong version are the same function: so the
    test above feeds a different implementation of the same mistake."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 6, 4))
    for mistake, functions in STUDENT.items():
        wrong = mistakes.by_id(mistake).wrong
        (name,) = functions
        if name == "im2col":
            args = (x, 3)
        elif name == "col2im":
            args = (rng.standard_normal((27, 2 * 4 * 2)), x.shape, 3)
        elif name == "relu_backward":
            args = (rng.standard_normal(x.shape), ops.relu_forward(x)[1])
        elif name == "maxpool2x2_backward":
            args = (rng.standard_normal((2, 3, 3, 2)), ops.maxpool2x2_forward(x)[1])
        else:
            w = rng.standard_normal((3, 5, 2, 2))
            args = (rng.standard_normal((2, 5, 12, 8)), ops.upconv2x2_forward(x, w,
                                                                             np.zeros(5))[1])
        mine, theirs = functions[name](*args), wrong[name](*args)
        for a, b in zip(*(v if isinstance(v, tuple) else (v,) for v in (mine, theirs)),
                        strict=True):
            assert np.allclose(a, b, rtol=1e-12, atol=1e-12), mistake
        right = getattr(ops, name)(*args)
        right = right if isinstance(right, tuple) else (right,)
        mine = mine if isinstance(mine, tuple) else (mine,)
        assert any(not np.allclose(a, b) for a, b in zip(mine, right, strict=True)), mistake


@pytest.mark.parametrize("fingerprints", [True, False], ids=["catalogue", "probes_alone"])
def test_the_reference_gets_no_diagnosis(fingerprints, bundles, bare):
    results = grader.grade_checks(ops, bundles if fingerprints else bare, ALL)
    assert results and all(r.passed and not r.diagnosis for r in results)


# A transposed weight gradient is right values in the wrong order: where a check has no
# fingerprint of it (e.g. one made for timing), the generic probe says so, truly.
TRULY_WRONG_ORDER = {"conv2d.dw_transposed", "upconv2x2.dw_transposed"}


@pytest.mark.parametrize("mistake", [m.id for m in mistakes.MISTAKES if m.id not in NEW])
def test_no_other_catalogued_mistake_gets_these_hints(mistake, bundles):
    m = mistakes.by_id(mistake)
    ns = mistakes.wrong_namespace(ops, m)
    failed = [r for r in grader.grade_checks(ns, bundles, ALL, ops=[m.region.split(".")[0]])
              if not r.passed]
    said = {r.diagnosis for r in failed}
    assert mistake in said
    allowed = {"wrong_order"} if mistake in TRULY_WRONG_ORDER else set()
    assert not said & SPOKEN - allowed, f"{mistake}: {sorted(said & SPOKEN)}"


# --- the probes on small arrays --------------------------------------------------------------

RNG = np.random.default_rng(0)
R4 = RNG.standard_normal((2, 3, 4, 6))  # a dense result (N, C, H, W)
TAPS = RNG.standard_normal((3, 2, 2, 2))  # a weight gradient (Cin, Cout, 2, 2)
MASKED = np.where(R4 > 0, RNG.standard_normal(R4.shape), 0.0)  # a ReLU's gradient


def _window_scrambled(r):
    N, C, H, W = r.shape
    return r.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(r.shape)


CASES = [  # (name, result, reference, the probe that must fit: '' for none)
    ("right", R4.copy(), R4, ""),
    ("right up to rounding", R4 * (1 + 1e-12), R4, ""),
    ("noisy", R4 + 1e-3 * RNG.standard_normal(R4.shape), R4, ""),
    ("doubled", 2 * R4, R4, ""),
    ("taps swapped", np.swapaxes(TAPS, -1, -2), TAPS, "taps_swapped"),
    ("windows in the wrong layout", _window_scrambled(R4), R4, "window_layout"),
    ("mask passes at zero", np.where(R4 > 0, MASKED, 1.0), MASKED, "passes_blocked"),
    ("mask blocks too much", np.where(R4 > 1, MASKED, 0.0), MASKED, ""),
    ("reshape for transpose", R4.transpose(1, 0, 2, 3).reshape(R4.shape), R4, "wrong_order"),
    ("shuffled", RNG.permutation(R4.ravel()).reshape(R4.shape), R4, "wrong_order"),
    ("shifted into a zero margin", np.roll(np.pad(R4, ((0, 0),) * 2 + ((1, 1),) * 2), 1, 3),
     np.pad(R4, ((0, 0),) * 2 + ((1, 1),) * 2), ""),
    ("other values", R4[::-1] + 1.0, R4, ""),
    ("negated two-class gradient", -np.stack([R4, -R4], 1), np.stack([R4, -R4], 1), ""),
    ("NaN", np.full(R4.shape, np.nan), R4, ""),
]


@pytest.mark.parametrize("name, a, r, want", CASES, ids=[c[0] for c in CASES])
def test_probe_classify(name, a, r, want):
    assert probes.classify(a, r, 1e-7) == want


def test_every_probe_has_a_hint_and_a_catalogued_mistake():
    for p in probes.ORDER:
        assert mistakes.hint(p)
        assert [m.id for m in mistakes.MISTAKES if m.probe == p], p
