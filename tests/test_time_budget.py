"""`--time`: a budget instead of an iteration count. It measures, chooses the iterations and
writes them to config.json; `--iters N` repeats the run exactly, `--resume` goes to the same
end."""

import json
import os
import signal

import numpy as np
import pytest

from minunet.train import TrainConfig, Trainer, main, parse_duration, resolve_config
from minunet.training.checkpoint import load_checkpoint

TINY = dict(base=2, depth=4, tile=188, lr=0.01, val_every=10, prefetch=0, device="cpu",
            data="synthetic:n=3,size=200", schedule="poly")


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), ("1m 30s", 90),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "10x", "m", "0s", "5m-1s"])
def test_bad_durations_name_the_fix(text):
    with pytest.raises(ValueError, match="--time"):
        parse_duration(text)


def test_a_timed_run_defaults_to_a_schedule_that_ends_with_it():
    assert resolve_config({"device": "cpu", "time": "10m"}).schedule == "poly"
    assert resolve_config({"device": "cpu", "time": "10m", "schedule": "step"}).schedule == "step"
    assert resolve_config({"device": "cpu"}).time == ""


def _interrupt_at(trainer, k):
    """Make `trainer` behave as if Ctrl-C came during its k-th training step."""
    step, count = trainer.step, {"n": 0}

    def interrupted_step():
        count["n"] += 1
        if count["n"] == k:
            os.kill(os.getpid(), signal.SIGINT)  # the handler run() installs saves last.npz
        return step()
    trainer.step = interrupted_step


@pytest.mark.slow  # 9-16 s on a 2-core CPU
def test_timed_run_is_repeated_by_its_iterations_and_resumes_to_the_same_end(tmp_path):
    timed = Trainer(TrainConfig(**TINY, time="8s", out=str(tmp_path / "timed")), quiet=True)
    n = timed.cfg.iters
    config = json.loads((tmp_path / "timed" / "config.json").read_text())
    assert config["train"]["iters"] == config["budget"]["iters"] == n >= 4
    assert config["optimizer"]["max_iter"] == n  # the poly schedule reaches 0 at the end
    assert config["budget"]["seconds"] == 8 and config["budget"]["step_s"] > 0
    _interrupt_at(timed, n // 2)
    assert timed.run() == 130
    assert load_checkpoint(tmp_path / "timed" / "last.npz").iteration == n // 2

    # the command line's resume, with no --iters: to the saved end, without measuring again
    assert main(["--resume", str(tmp_path / "timed" / "last.npz"), "--device", "cpu"]) == 0
    resumed = load_checkpoint(tmp_path / "timed" / "last.npz")
    assert resumed.iteration == n and resumed.config["budget"] == config["budget"]

    straight = Trainer(TrainConfig(**TINY, iters=n, out=str(tmp_path / "straight")), quiet=True)
    assert straight.run() == 0
    again = load_checkpoint(tmp_path / "straight" / "last.npz")
    for k in again.params:
        np.testing.assert_array_equal(resumed.params[k], again.params[k], err_msg=k)
    for k in again.velocity:
        np.testing.assert_array_equal(resumed.velocity[k], again.velocity[k], err_msg=k)


def test_a_budget_too_short_is_one_error_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    args = ["--device", "cpu", "--preset", "tiny", "--time", "0.2s", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --time 0.2s is too short") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.slow  # 8-10 s on a 2-core CPU
def test_validations_spread_evenly_over_a_budget_whatever_the_step_costs(tmp_path):
    """--validations K: val_every = ceil(N / K), chosen with N and written to config.json;
    the run validates K times at most, the last at N."""
    run = tmp_path / "run"
    timed = Trainer(TrainConfig(**{**TINY, "val_every": 10**6}, time="8s", validations=3,
                                out=str(run)), quiet=True)
    n, every = timed.cfg.iters, timed.cfg.val_every
    assert every == -(-n // 3) and n >= 3
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["val_every"] == config["budget"]["val_every"] == every
    assert timed.run() == 0
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    validated = sorted({*range(every, n + 1, every), n})
    assert len(validated) <= 3
    done = [int(r.split(",")[0]) for r in rows]  # a slow moment may skip some, never the last
    assert set(done) <= set(validated) and done[-1] == n
    assert len(done) == len(validated) - timed.skipped


def test_validations_need_a_budget(capsys):
    with pytest.raises(ValueError, match="--validations spreads validations over a --time"):
        TrainConfig(**TINY, iters=5, validations=3)
    with pytest.raises(ValueError, match="--validations must be an integer >= 0"):
        TrainConfig(**TINY, time="1m", validations=-1)
    assert main(["--device", "cpu", "--preset", "tiny", "--validations", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --validations spreads") and err.count("\n") == 1


def test_time_and_resume_do_not_mix(tmp_path, capsys):
    run = tmp_path / "run"
    assert Trainer(TrainConfig(**TINY, iters=2, out=str(run)), quiet=True).run() == 0
    assert main(["--resume", str(run / "last.npz"), "--time", "1m", "--device", "cpu"]) == 2
    assert "a resumed run continues to its saved end" in capsys.readouterr().err


def test_a_run_behind_its_budget_skips_validations_but_not_steps(tmp_path, capsys):
    """A machine that slows down after the measurement: the run skips the validations that
    would end it late (never the last) and keeps every step, so its model is that of
    `--iters N`."""
    slow = Trainer(TrainConfig(**{**TINY, "val_every": 2}, time="8s", out=str(tmp_path / "slow")))
    n = slow.cfg.iters
    slow.budget["seconds"] = 0.01  # as if every step had taken far longer than measured
    assert slow.run() == 0
    assert "validation(s) skipped: the steps ran slower than measured" in capsys.readouterr().out
    rows = (tmp_path / "slow" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(n)]  # only the last validation
    straight = Trainer(TrainConfig(**{**TINY, "val_every": 2}, iters=n,
                                   out=str(tmp_path / "straight")), quiet=True)
    assert straight.run() == 0
    a = load_checkpoint(tmp_path / "slow" / "last.npz")
    b = load_checkpoint(tmp_path / "straight" / "last.npz")
    assert a.iteration == b.iteration == n
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=k)
