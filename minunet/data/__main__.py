"""`python -m minunet.data`: timings of the data pipeline on this CPU (for the benchmark).

Prints the time of one 512x512 synthetic slice, one 512x512 weight map (ISBI-like label with a
few hundred cells) and the tile throughput at 572x572 with every augmentation on.
"""

from __future__ import annotations

import time

import numpy as np

from .synthetic import synthetic_em
from .tiles import tiles_report
from .weightmap import weight_map


def best_time(fn, repeat: int = 5) -> float:
    """Best wall time of `repeat` calls after one warm-up call, in seconds."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def report() -> str:
    sample = synthetic_em(512, seed=0, cell_diameter=25.0)  # dense: ~500 cells
    label = (sample.label > 0).astype(np.int64)
    lines = [
        f"data: synthetic_em 512x512: {1000 * best_time(lambda: synthetic_em(512, seed=1)):.0f} ms",
        f"data: weight_map 512x512, {sample.instances.max()} cells: "
        f"{1000 * best_time(lambda: weight_map(label)):.0f} ms",
        tiles_report(),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
