"""Input validation shared by the ops: clear ValueErrors that name the shapes."""

from __future__ import annotations


def check_ndim(name: str, a, ndim: int, layout: str) -> None:
    """Raise ValueError unless `a` has `ndim` dimensions (layout like 'NCHW')."""
    if getattr(a, "ndim", None) != ndim:
        shape = getattr(a, "shape", type(a).__name__)
        raise ValueError(f"{name} must be a {ndim}-D array ({layout}), got shape {shape}")


def check_float(name: str, a) -> None:
    """Raise ValueError unless `a` holds float32 or float64."""
    if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
        raise ValueError(f"{name} must be float32 or float64, got {a.dtype}")


def check_same_dtype(**arrays) -> None:
    """Raise ValueError unless all arrays share one dtype."""
    dtypes = {k: v.dtype for k, v in arrays.items() if v is not None}
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{k} {d}" for k, d in dtypes.items())
        raise ValueError(f"dtypes differ ({listed}); cast them to one (float32 or float64)")
