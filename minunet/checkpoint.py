"""Checkpoints: one .npz holding everything needed to continue a run exactly.

Contents (DESIGN.md): the parameters under the contract's names
("down0.conv0.weight", ...), the optimiser's velocities ("velocity.<name>"),
and three JSON strings: "config" (model, optimiser and training settings),
"iteration" and "rng" (the seeds and counters that determine every random
draw still to come). No pickles: it loads with allow_pickle=False. Writes are
atomic: a temporary file in the same folder, then a rename, so a crash never
leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .files import atomic_write

META_KEYS = ("config", "iteration", "rng")


def save_checkpoint(path, params: dict, velocity: dict, iteration: int, config: dict,
                    rng: dict) -> Path:
    """Write a checkpoint atomically. params/velocity: name -> host array (see module doc)."""
    arrays = dict(params) | dict(velocity)
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    arrays["iteration"] = np.array(json.dumps(int(iteration)))
    arrays["rng"] = np.array(json.dumps(rng, sort_keys=True))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path) -> tuple[dict, dict, int, dict, dict]:
    """Read a checkpoint: (params, velocity, iteration, config, rng). Clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path} is not a readable minunet checkpoint (.npz): {e}") from e
    missing = [k for k in META_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a minunet training checkpoint")
    config = json.loads(str(data.pop("config")))
    iteration = json.loads(str(data.pop("iteration")))
    rng = json.loads(str(data.pop("rng")))
    velocity = {k: v for k, v in data.items() if k.startswith("velocity.")}
    params = {k: v for k, v in data.items() if not k.startswith("velocity.")}
    return params, velocity, iteration, config, rng
