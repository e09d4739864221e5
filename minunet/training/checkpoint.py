"""Checkpoints: one .npz holding everything needed to continue a run exactly.

Contents (docs/DESIGN.md, "Checkpoints"): the parameters under the contract's names
("down0.conv0.weight", ...), the model's buffers ("buffer.<name>": running statistics and
the like; none for the U-Net), the optimiser's velocities ("velocity.<name>"), the run's
log ("log.train_losses": the training loss of every iteration so far), and four JSON
strings: "arch" (the architecture's name, also config["model"]["arch"]), "config" (model,
optimiser and training settings), "iteration" and "rng" (the seeds and counters that
determine every random draw still to come). No pickles: it loads with allow_pickle=False.
Writes are atomic: a temporary file in the same folder, then a rename, so a crash never
leaves a half-written checkpoint behind. Checkpoints written before "arch" and the buffers
existed load as the U-Net with no buffers.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from minunet.files import atomic_write

META_KEYS = ("config", "iteration", "rng")
BUFFER, VELOCITY, LOG = "buffer.", "velocity.", "log."  # key prefixes


class Checkpoint(NamedTuple):
    """What a checkpoint holds; arrays on the host, keyed as in the module doc."""

    params: dict  # parameter name -> array
    buffers: dict  # buffer name (without "buffer.") -> array; {} for the U-Net
    velocity: dict  # "velocity.<parameter name>" -> array, as MomentumSGD.state_dict gives
    iteration: int  # iterations done
    config: dict  # {"train": ..., "model": ..., "optimizer": ...}
    rng: dict  # the seeds and counters of the random draws to come
    arch: str  # the architecture's name ("unet")
    log: dict = {}  # name (without "log.") -> array: the run's record, e.g. "train_losses"

    def state(self) -> dict:
        """Parameters and buffers: what model.load_state_dict takes."""
        return {**self.params, **self.buffers}


class NonFiniteError(ValueError):
    """A parameter holds NaN or infinite values: a diverged model is never saved or loaded."""


def check_arrays(arrays: dict, where) -> None:
    """ValueError naming the first array of `arrays` (name -> host array) that is not float32
    or float64, NonFiniteError for the first that holds NaN or infinite values; `where` (a
    path, or what the arrays are) begins the message."""
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
            kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise ValueError(f"{where}: {name} is {kind}; parameters are float32 or float64 "
                             "arrays (was this file written by minunet?)")
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise NonFiniteError(f"{where}: {name} holds {bad} NaN or infinite value(s) of "
                                 f"{a.size}: the model diverged; use an earlier checkpoint "
                                 "(or train again with a lower --lr)")


def save_checkpoint(path, params: dict, velocity: dict, iteration: int, config: dict,
                    rng: dict, buffers: dict | None = None, arch: str = "unet",
                    log: dict | None = None) -> Path:
    """Write a checkpoint atomically. params, buffers: name -> host array; velocity:
    "velocity.<name>" -> host array (see the module doc). ValueError (NonFiniteError) if an
    array is not float or not finite: nothing is written then."""
    check_arrays({**params, **{BUFFER + k: v for k, v in (buffers or {}).items()}, **velocity},
                 f"not saving {path}")
    arrays = (dict(params) | {BUFFER + k: v for k, v in (buffers or {}).items()}
              | dict(velocity) | {LOG + k: v for k, v in (log or {}).items()})
    arrays["arch"] = np.array(json.dumps(arch))
    arrays["config"] = np.array(json.dumps(config, sort_keys=True))
    arrays["iteration"] = np.array(json.dumps(int(iteration)))
    arrays["rng"] = np.array(json.dumps(rng, sort_keys=True))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint. Clear errors for a missing file, a file that is no .npz archive of
    plain arrays (never NumPy's advice to unpickle it) and an .npz that is not ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    not_ours = (f"{path} is not a minunet checkpoint: expected the .npz archive that "
                "python -m minunet.train writes (last.npz or best.npz in its run folder)")
    if not zipfile.is_zipfile(path):  # np.load would try to unpickle it, and say so
        raise ValueError(f"{not_ours}; this file is not an .npz (zip) archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:  # no message of NumPy's: it may advise allow_pickle=True
        raise ValueError(f"{not_ours}; its arrays cannot be read ({type(e).__name__})") from e
    missing = [k for k in META_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not a minunet training checkpoint")
    meta = {k: json.loads(str(data.pop(k))) for k in (*META_KEYS, "arch") if k in data}
    if not isinstance(meta["config"], dict):
        raise ValueError(f"{path}: its config is not a JSON object: not a minunet checkpoint")
    arch = meta.get("arch") or meta["config"].get("model", {}).get("arch", "unet")
    check_arrays(data, path)  # parameters, buffers, velocities: float and finite
    return Checkpoint(
        params={k: v for k, v in data.items() if not k.startswith((BUFFER, VELOCITY, LOG))},
        buffers={k[len(BUFFER):]: v for k, v in data.items() if k.startswith(BUFFER)},
        velocity={k: v for k, v in data.items() if k.startswith(VELOCITY)},
        iteration=meta["iteration"], config=meta["config"], rng=meta["rng"], arch=arch,
        log={k[len(LOG):]: v for k, v in data.items() if k.startswith(LOG)})


def model_from_checkpoint(ckpt: Checkpoint, path, seed: int = 0):
    """The model that wrote `ckpt` (read from `path`, named in errors): built by the models/
    registry from config["model"] and the architecture the checkpoint records (unet/fast where
    an old checkpoint lacks arch/ops: minunet/training/legacy.py), with its parameters and
    buffers loaded, on the host."""
    from minunet.models import registry
    from minunet.training.legacy import migrate_model_config

    conf = ckpt.config.get("model")
    if not isinstance(conf, dict):
        raise ValueError(f"{path} has no model config (config keys: {sorted(ckpt.config)}); "
                         "was it written by python -m minunet.train?")
    try:  # an unknown architecture: the message names the known ones
        cls = registry.get(ckpt.arch).config_class
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    try:
        config = cls(**migrate_model_config(conf, ckpt.arch))
    except TypeError as e:  # a key the config class does not know
        raise ValueError(f"{path}: its model config {conf} does not fit {cls.__name__} "
                         f"({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    import dataclasses

    # the weights come from the checkpoint: options that only chose initial weights (a file of
    # pretrained encoder weights, which need not be on this machine) are not read again
    config = dataclasses.replace(config, **{k: "" for k in config.init_only})
    model = registry.build_model(config, seed=seed)
    model.load_state_dict(ckpt.state())  # refuses missing, unexpected or misshapen arrays
    return model


def checkpoint_normalize(ckpt) -> str:
    """How the checkpoint's model saw its images (TrainConfig.normalize); 'max' for
    checkpoints written before that option existed."""
    train = ckpt.config.get("train")
    return train.get("normalize", "max") if isinstance(train, dict) else "max"
