"""Bit-for-bit check of the house move (issue 31): train the U-Net 5 steps (base 2, tile 188)
on each door (plain, fast) through the command line, and save its parameters.

    python tools/house_bitcheck.py OUT.npz        # run on one commit, then on another
    python tools/house_bitcheck.py --compare A.npz B.npz

The command line is the one interface that stays the same across the move, so the same script
runs before and after it. Dropout stays on (0.5) so the dropout keys are exercised too.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(out: str, device: str = "cpu") -> None:
    arrays = {}
    for door in ("plain", "fast"):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            subprocess.run([sys.executable, "-m", "minunet.train", "--device", device,
                            "--base", "2", "--depth", "4", "--tile", "188", "--iters", "5",
                            "--val-every", "5", "--lr", "0.01", "--warmup", "0",
                            "--dropout", "0.5", "--prefetch", "0", "--ops", door,
                            "--data", "synthetic:n=2,size=200", "--seed", "3",
                            "--out", str(run_dir)], check=True, stdout=subprocess.DEVNULL)
            with np.load(run_dir / "last.npz", allow_pickle=False) as z:
                for k in z.files:
                    if z[k].dtype.kind == "f" and not k.startswith("log."):
                        arrays[f"{door}/{k}"] = z[k]
    np.savez(out, **arrays)
    print(f"{out}: {len(arrays)} arrays")


def compare(a: str, b: str) -> int:
    with np.load(a) as za, np.load(b) as zb:
        if sorted(za.files) != sorted(zb.files):
            print("different keys:", sorted(set(za.files) ^ set(zb.files)))
            return 1
        bad = [k for k in za.files if za[k].tobytes() != zb[k].tobytes()]
    for door in ("plain", "fast"):
        n = sum(k.startswith(door) for k in bad)
        print(f"{door}: {'bit for bit identical' if not n else f'{n} arrays differ'}")
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    run(sys.argv[1], *sys.argv[2:])
