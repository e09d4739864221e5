"""A/B timing of the training step for the house move (issue 31): the same step (the U-Net,
fast ops, cpu preset: base 8, tile 316, batch 1, float32) timed in fresh processes, alternating
between two source trees, so that both meet the same machine.

    python tools/house_ab_bench.py BEFORE_TREE AFTER_TREE [--rounds 4] [--steps 30]

Each process imports minunet from its tree (PYTHONPATH), builds the model through whichever
API that tree has, warms up, then times --steps training steps (train_step: forward, loss,
backward, SGD update) and prints their median (wall clock and CPU time of the process); the
medians of all rounds are reported per tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys, time
import numpy as np
try:  # after the house move
    from minunet.models.unet import UNetConfig, build_model
    from minunet.nn.optim import MomentumSGD, SGDConfig
    from minunet.training.trainer import train_step
    from minunet.models.sizes import output_size
except ImportError:  # before it
    from minunet.model import UNetConfig, build_model
    from minunet.optim import MomentumSGD, SGDConfig
    from minunet.train import train_step
    from minunet.sizes import output_size
import minunet
base, tile, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
m = build_model(UNetConfig(base=base, dropout=0.5), seed=0)
opt = MomentumSGD(m.params, SGDConfig(lr=1e-6))
rng = np.random.default_rng(0)
n = output_size(tile, 4)
x = rng.standard_normal((1, 1, tile, tile)).astype(np.float32)
labels = rng.integers(0, 2, (1, n, n))
w = np.ones((1, n, n), np.float32)
for it in range(5):
    float(train_step(m, opt, x, labels, w, it, it)[0])
ts, cs = [], []
for it in range(steps):
    t, c = time.perf_counter(), time.process_time()
    float(train_step(m, opt, x, labels, w, it, it)[0])
    ts.append(time.perf_counter() - t)
    cs.append(time.process_time() - c)
print(json.dumps({"file": minunet.__file__, "median_s": sorted(ts)[len(ts) // 2],
                  "median_cpu_s": sorted(cs)[len(cs) // 2]}))
'''


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--base", type=int, default=8)
    p.add_argument("--tile", type=int, default=316)
    a = p.parse_args()
    times = {"before": [], "after": []}
    cpu = {"before": [], "after": []}
    for r in range(a.rounds):
        for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
            tree = getattr(a, name)
            env = {**os.environ, "PYTHONPATH": tree}
            out = subprocess.run([sys.executable, "-c", CHILD, str(a.base), str(a.tile),
                                  str(a.steps)], env=env, capture_output=True, text=True,
                                 check=True, cwd="/")
            res = json.loads(out.stdout.strip().splitlines()[-1])
            assert res["file"].startswith(os.path.abspath(tree)), res
            times[name].append(res["median_s"])
            cpu[name].append(res["median_cpu_s"])
            print(f"round {r} {name:6s} {res['median_s'] * 1e3:8.1f} ms/step wall, "
                  f"{res['median_cpu_s'] * 1e3:8.1f} ms CPU", flush=True)
    b, f = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"training step (base {a.base}, tile {a.tile}, fast ops, CPU): before "
          f"{b * 1e3:.1f} ms, after {f * 1e3:.1f} ms, after/before {f / b:.3f} (wall); CPU time "
          f"{statistics.median(cpu['before']) * 1e3:.1f} -> "
          f"{statistics.median(cpu['after']) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
