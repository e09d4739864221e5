"""The comparison's step budget (`python -m minunet.compare`, issue 27): every network's step
time measured side by side on one machine, and from it the steps each one gets.

Why not a `--time` budget per run: a budget measures its step once, at the start of its own
run, and on a shared machine the pace then drifts by up to a quarter either way (a run of the
2015 U-Net measured 0.148 s a step and ran at 0.112-0.128 s; another network measured 0.37 s
and ran slower, skipping nine of its ten validations), so the steps a run got said as much about
the machine's load during that run as about the network. And runs of one comparison made on
two machines (an AVX2 and an AVX-512 host, 2.4x apart) could not be set side by side at all.

So the comparison measures once, for all its networks together, taking turns: in each of
ROUNDS rounds every network does one untimed step (its caches come back) and then STEPS timed
steps, in an order that rotates from round to round, so that a slow minute of the machine
falls on every network alike; a network's step time is the median over the rounds of its
round's mean. Each network then trains

    iters = floor(budget seconds / its step time)        (the steps its budget buys)

with `--iters iters --val-every ceil(iters / validations)` and the --time schedule (the rate
decays to 0 at the last step): the same steps on the same tiles on whatever machine a run is
made later, where only the floating-point rounding differs (another BLAS kernel sums in
another order, and thousands of steps can carry such differences as far as a seed's). The
budget is training time; setting up,
validating and scoring come on top, as the wall-clock they take does not depend on the network
alone. OUT/calibration.json records the measurement, the machine and each network's steps;
its curves are drawn against iteration * step time (minutes of training on that machine).

    measure(configs, rounds, steps, say)     {name: [step time of each round]}
    calibrate(configs, seconds, validations) the record calibration.json holds
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROUNDS, STEPS = 7, 8  # rounds of turns, timed steps of each network in a turn
WARM_STEPS = 2  # untimed steps of each network before the first round (imports, JIT)


def measure(configs: dict, rounds: int = ROUNDS, steps: int = STEPS,
            say=print) -> dict[str, list[float]]:
    """{name: [seconds a step, one per round]} of the TrainConfigs `configs` ({name: cfg}),
    each built as a Trainer (its data, model, optimiser, sampler) in a temporary folder and
    stepped in turns (see the module docstring). The trainers exist together, one process."""
    from minunet.training.budget import throwaway_step
    from minunet.training.trainer import Trainer

    times = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="minunet-calibrate-") as tmp:
        trainers = {}
        try:
            for name, cfg in configs.items():
                say(f"calibrating: building {name} and warming it up ({WARM_STEPS} steps)")
                trainer = Trainer(replace(cfg, time="", validations=0, out=str(Path(tmp) / name)),
                                  quiet=True)
                trainers[name] = trainer
                for _ in range(WARM_STEPS):
                    throwaway_step(trainer)
                trainer.model.release_caches()
            names = list(trainers)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]  # rotates
                for name in order:
                    trainer = trainers[name]
                    throwaway_step(trainer)  # untimed: caches and the tile pipeline come back
                    t = time.perf_counter()
                    for _ in range(steps):
                        throwaway_step(trainer)
                    times[name].append((time.perf_counter() - t) / steps)
                    trainer.model.release_caches()
                say(f"calibrating: round {r + 1}/{rounds}: " + ", ".join(
                    f"{n} {times[n][-1]:.3f} s" for n in names))
        finally:
            for trainer in trainers.values():
                trainer.sampler.close()
    return times


def steps_for(seconds: float, step_s: float, validations: int) -> dict:
    """The steps a budget of `seconds` buys at `step_s` a step, validated `validations` times
    evenly (the last at the last step): {'iters', 'val_every'}."""
    iters = max(1, math.floor(seconds / step_s))
    return {"iters": iters, "val_every": max(1, math.ceil(iters / max(validations, 1)))}


def calibrate(configs: dict, seconds: float, validations: int, rounds: int | None = None,
              steps: int | None = None, say=print) -> dict:
    """Measure `configs` side by side (ROUNDS rounds of STEPS steps unless given) and give
    each its steps: the record of OUT/calibration.json, {'seconds', 'validations', 'rounds',
    'steps_per_round', 'machine', 'date', 'measured_in_s', 'entries': {name: {'step_s',
    'step_s_rounds', 'iters', 'val_every'}}}."""
    from minunet import backend

    rounds, steps = rounds or ROUNDS, steps or STEPS
    device = next(iter(configs.values())).device
    started = time.monotonic()
    times = measure(configs, rounds, steps, say)
    entries = {}
    for name, per_round in times.items():
        step_s = round(statistics.median(per_round), 5)  # iters follow from the recorded
        entries[name] = {"step_s": step_s,
                         "step_s_rounds": [round(t, 5) for t in per_round],
                         **steps_for(seconds, step_s, validations)}
    return {"seconds": seconds, "validations": validations, "rounds": rounds,
            "steps_per_round": steps, "machine": backend.machine(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "measured_in_s": round(time.monotonic() - started, 1), "entries": entries}
