"""Value probes for results in the wrong places: what a wrong result's values say.

When no stored wrong version (mistakes.py) matches a failed result, the grader
compares the result `a` with the reference `r` (both arrays of one shape) and
asks what the difference looks like. These probes recognise results whose
values are right but sit in the wrong places, or that let through what the
reference blocks. The first that fits, in this order (most specific first):

    taps_swapped     a == r with its last two axes (the kernel taps i, j) swapped
    window_layout    a == r with each 2x2 window's axes left next to the window
                     grid: (Ho, Wo, i, j) read as an image, not (Ho, i, Wo, j)
    passes_blocked   a == r wherever r is not 0, and a is not 0 somewhere r is:
                     a mask that lets through what it must block (e.g. at exactly 0)
    wrong_order      a holds the values of r, zeros where r has zeros, in another
                     order: a reshape where the axes need a transpose

`classify(a, r, tol)` returns the probe id ('' when none fits); the hints are
in mistakes.PROBES, and a region's own Mistake with `probe=<id>` names it more
precisely (mistakes.for_region). Every probe compares values to `tol` times
the largest |r|, so a result that is right up to rounding never fits one.
"""

from __future__ import annotations

import numpy as np

ORDER = ("taps_swapped", "window_layout", "passes_blocked", "wrong_order")


def _close(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= atol))


def taps_swapped(a: np.ndarray, r: np.ndarray, atol: float) -> bool:
    """a is r with its last two axes (i, j), of equal length >= 2, swapped."""
    if a.ndim < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] < 2:
        return False
    return _close(a, np.swapaxes(r, -1, -2), atol)


def window_layout(a: np.ndarray, r: np.ndarray, atol: float) -> bool:
    """a (N, C, H, W), H and W even, is r's (N, C, Ho, i, Wo, j) laid out as (Ho, Wo, i, j)
    (or the reverse): per-window values reshaped to an image without the transpose."""
    if a.ndim != 4 or a.shape[2] % 2 or a.shape[3] % 2:
        return False
    N, C, H, W = a.shape
    r6 = r.reshape(N, C, H // 2, 2, W // 2, 2)  # (N, C, Ho, i, Wo, j)
    as_windows = r6.transpose(0, 1, 2, 4, 3, 5).reshape(N, C, H, W)  # (Ho, Wo, i, j) as HW
    windows_as_image = r.reshape(N, C, H // 2, W // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return _close(a, as_windows, atol) or _close(a, windows_as_image.reshape(a.shape), atol)


def _zeros(r: np.ndarray, atol: float) -> np.ndarray:
    """Where r is 0 (a blocked gradient, a zero margin): exactly, up to 1e-9 of max |r|."""
    return np.abs(r) <= min(atol, 1e-9 * float(np.abs(r).max(initial=0.0)))


def passes_blocked(a: np.ndarray, r: np.ndarray, atol: float) -> bool:
    """a agrees with r wherever r is not 0, and is not 0 somewhere r is (a leaky mask)."""
    blocked = _zeros(r, atol)
    if not blocked.any() or blocked.all():
        return False
    return _close(a[~blocked], r[~blocked], atol) and bool((np.abs(a[blocked]) > atol).any())


def wrong_order(a: np.ndarray, r: np.ndarray, atol: float) -> bool:
    """a holds r's values (as a multiset) in another order, with its zeros where r's are.

    The zeros must stay put: a result that moved a block of values into a zero margin
    (a crop's gradient at the wrong offset) is an offset mistake, not an order one.
    """
    if a.size < 2:
        return False
    if not np.array_equal(_zeros(a, atol), _zeros(r, atol)):
        return False
    return _close(np.sort(a, axis=None), np.sort(r, axis=None), atol)


def classify(a, r, tol: float) -> str:
    """The first probe of ORDER that fits a (a result) against r (the reference), or ''.

    tol is relative to max |r|; a result equal to r or to -r within it fits none (a
    negated two-class gradient is also a permutation: the sign is the mistake there).
    """
    a, r = np.asarray(a, dtype=np.float64), np.asarray(r, dtype=np.float64)
    if a.shape != r.shape or a.size == 0 or not (np.all(np.isfinite(a))
                                                   and np.all(np.isfinite(r))):
        return ""
    atol = tol * max(float(np.abs(r).max()), 1e-30)
    if _close(a, r, atol) or _close(a, -r, atol):  # right, or the sign probe's
        return ""
    for name in ORDER:
        if globals()[name](a, r, atol):
            return name
    return ""
