"""The time budget (--time; docs/DESIGN.md, "Time budget"): measure a step and a validation,
undo them, choose --iters; during the run, skip a validation that would end it late."""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np

from minunet.training.runfolder import RunFolder

# steps run and then undone to measure the step time: WARM_STEPS untimed, then up to
# TIMED_STEPS timed, fewer (but at least 3) once they take MEASURE_SHARE of the budget
WARM_STEPS, TIMED_STEPS, MEASURE_SHARE = 3, 40, 0.03


def fit_budget(trainer, seconds: float) -> None:
    """Set cfg.iters (and the schedule's end) so that the run ends within `seconds` of
    this Trainer's start: time a few steps after a warm-up and one validation with its
    checkpoint and plots (after one more to warm up), undo them (the run then starts from
    iteration 0 exactly as `--iters N` would), and take the largest N with
        N * step + ceil(N / val_every) * validation <= seconds left - reserve
    (docs/DESIGN.md, "Time budget").
    """
    cfg = trainer.cfg
    params = {k: p.copy() for k, p in trainer.model.state_dict().items()}
    velocity = {k: v.copy() for k, v in trainer.opt.state_dict().items()}
    times = []
    while len(times) < WARM_STEPS + TIMED_STEPS:
        t = time.perf_counter()
        throwaway_step(trainer)
        times.append(time.perf_counter() - t)
        timed = times[WARM_STEPS:]
        if len(timed) >= 3 and sum(timed) > MEASURE_SHARE * seconds:
            break
    trainer.model.release_caches()
    step = float(np.median(times[WARM_STEPS:]))  # a slow outlier says little
    run_folder = trainer.folder
    with tempfile.TemporaryDirectory() as tmp:  # nothing in the run folder before it fits
        trainer.folder = RunFolder(tmp)
        # validated after the timed steps (BatchNorm's running statistics have seen batches)
        trainer.validate_and_save(quiet=True)  # the first one also imports and compiles
        t = time.perf_counter()
        trainer.validate_and_save(quiet=True)
        validation = time.perf_counter() - t
    trainer.folder, trainer.val_preds, trainer.best = run_folder, [], math.inf
    trainer.model.load_state_dict(params)  # undo the timed steps: parameters, buffers
    trainer.opt.load_state_dict(velocity)
    trainer.model.train()
    trainer.sampler.close()
    trainer.sampler = trainer._sampler(0)
    left = seconds - (time.monotonic() - trainer.started)
    reserve = 0.03 * seconds + 0.5  # the step time drifts; closing the run takes a moment
    if cfg.validations:  # K validations, whatever the step costs: N * step + K * validation
        n = int(max(0.0, left - reserve - cfg.validations * validation) / step)
    else:
        n = int(max(0.0, left - reserve) / (step + validation / cfg.val_every))

    def every(n: int) -> int:  # the validation interval for n iterations
        return -(-n // cfg.validations) if cfg.validations else cfg.val_every

    while n > 0 and n * step + math.ceil(n / every(n)) * validation > left - reserve:
        n -= 1
    if n < 1:
        raise ValueError(f"--time {cfg.time} is too short: setting up took "
                         f"{seconds - left:.1f} s, a step takes {step:.2f} s and a "
                         f"validation {validation:.1f} s; give more time or use --iters")
    cfg.iters = trainer.opt.config.max_iter = n
    cfg.val_every = every(n)
    trainer.budget = {"time": cfg.time, "seconds": seconds, "step_s": round(step, 4),
                   "validation_s": round(validation, 3), "setup_s": round(seconds - left, 2),
                   "iters": n, "val_every": cfg.val_every}
    trainer._say(f"--time {cfg.time}: a step takes {step:.3f} s, a validation with its "
              f"checkpoint {validation:.1f} s, setting up took {seconds - left:.1f} s: "
              f"training {n} iterations, validating every {cfg.val_every} (repeat with "
              f"--iters {n} --val-every {cfg.val_every}; config.json)")


def throwaway_step(trainer) -> None:
    """One training step whose loss is thrown away (a step being timed, or a warm-up), done
    when this returns: float() waits for the device."""
    with np.errstate(all="ignore"):
        float(trainer.step()[0])


def behind_budget(trainer) -> bool:
    """Would a timed run, at the pace of its steps so far, end after its budget if it
    validated now? Then it skips this validation (never the last): the steps, and so the
    model, stay those of `--iters N`; only the metrics row and best.npz wait."""
    if not trainer.budget or trainer.resumed_from:  # a resumed run keeps every validation
        return False
    pace = (time.monotonic() - trainer.loop_started - trainer.validating) / max(trainer.it, 1)
    validations = 1 + math.ceil((trainer.cfg.iters - trainer.it) / trainer.cfg.val_every)
    projected = (trainer.elapsed() + (trainer.cfg.iters - trainer.it) * pace
                 + validations * trainer.budget["validation_s"])
    return projected > trainer.budget["seconds"]
