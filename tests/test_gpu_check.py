"""tools/gpu_check.sh, the one-shot GPU check of issue 17, checked without a GPU.

Its real run needs the H200 machine; here we check that it parses (bash -n, shellcheck
where installed) and that its dry run (GPU_CHECK_DRY_RUN=1: every command printed, none
run) writes a summary listing every stage, and only files the device tool brings back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu_check.sh"
STAGES = ["1a", "1b", "1c", "2a", "2b", "3a", "3b", "4a", "4b", "4c"]
# The commands the stages run (the dry run prints each one).
COMMANDS = ["nvidia-smi", "tools/env_report.py", "-m pytest -m gpu", "--junitxml=",
            "-m minunet.bench --device cuda --size 572 --base 64", "--ops both --data",
            "--tf32 --ops fast",
            "tools/infer_timing.py --device cuda --repeat 10 --sizes 512,4096"]
ISBI_COMMANDS = ["-m minunet.train --data isbi2012:", "--preset paper --device cuda",
                 "-m minunet.predict --checkpoint", "-m minunet.evaluate"]


def dry_run(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", **env}
    return subprocess.run(["bash", str(SCRIPT), str(out), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def summary_rows(out: Path) -> dict[str, list[str]]:
    """{stage id: its cells} from the table of OUT/summary.md."""
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] in STAGES:
            rows[cells[0]] = cells
    return rows


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_finds_nothing():
    r = subprocess.run(["shellcheck", "-x", str(SCRIPT)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout


def test_dry_run_lists_every_stage_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    r = dry_run(out, str(tmp_path / "no_data_here"))
    assert r.returncode == 0, r.stderr
    rows = summary_rows(out)
    assert list(rows) == STAGES
    for stage, cells in rows.items():
        assert cells[2] == "SKIPPED", (stage, cells)
    for cmd in COMMANDS:
        assert cmd in r.stdout, cmd
    assert "no ISBI 2012 slices at" in rows["4a"][5]  # the data is missing: said, not fatal
    assert not (out / "junit.xml").exists()  # nothing ran
    # OUT holds only what the device tool brings back: at most 8 files, no sub-folders,
    # names of letters, digits, '.', '_' and '-'
    files = sorted(p.name for p in out.iterdir())
    assert "summary.md" in files and len(files) <= 8, files
    assert all((out / f).is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files)


def test_dry_run_with_the_isbi_slices_prints_the_training_commands(tmp_path):
    data = tmp_path / "isbi2012"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
        for i in range(30):
            (data / sub / f"{i:02d}.png").touch()
    out = tmp_path / "out"
    r = dry_run(out, str(data))
    assert r.returncode == 0, r.stderr
    for cmd in ISBI_COMMANDS:
        assert cmd in r.stdout, cmd
    assert f"{data}/images/29.png" in r.stdout  # predicts the held-out slices 25-29
    assert all(summary_rows(out)[s][5] == "dry run" for s in ("4a", "4b", "4c"))


def test_stages_not_selected_are_listed_as_skipped(tmp_path):
    out = tmp_path / "out"
    r = dry_run(out, GPU_CHECK_STAGES="3")
    assert r.returncode == 0, r.stderr
    rows = summary_rows(out)
    assert list(rows) == STAGES
    assert rows["3a"][5] == "dry run"
    assert all("not selected" in rows[s][5] for s in STAGES if not s.startswith("3"))
    assert "minunet.bench" not in r.stdout


def test_without_an_output_folder_it_prints_its_usage():
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "usage" in r.stderr
