"""Files (minunet/files.py): atomic writes, and the permissions any new file would get."""

import os
import stat

import pytest

from minunet.files import atomic_write, atomic_write_text
from minunet.training.runfolder import RunFolder


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, want):
    umask(mask)
    atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    atomic_write_text(tmp_path / "b.txt", "y")
    (tmp_path / "plain.txt").write_text("z")  # what any other new file gets
    assert mode(tmp_path / "plain.txt") == want
    assert mode(tmp_path / "a.bin") == want and mode(tmp_path / "b.txt") == want
    folder = RunFolder(tmp_path / "run")
    folder.create({"train": {}}, 0)
    folder.log({"iteration": 1, "val_xent": 0.5})
    assert mode(tmp_path / "run" / "config.json") == want
    assert mode(tmp_path / "run" / "metrics.csv") == want


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_the_run_folder_keeps_rows_up_to_the_resumed_iteration(tmp_path):
    (tmp_path / "metrics.csv").write_text("iteration,train_loss,val_loss,pixel_accuracy,"
                                          "rand_error\n2,0.5,0.4,0.9,\n4,0.3,0.2,0.95,\n")
    folder = RunFolder(tmp_path, new=False)  # a resumed run of the older format
    folder.create({}, 2)
    assert folder.history == [{"iteration": "2", "train_loss_weighted": "0.5", "val_xent": "0.4",
                               "pixel_accuracy": "0.9", "rand_error": ""}]
    folder.log({"iteration": 3, "train_loss_weighted": 0.25})
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["iteration,elapsed_s,train_loss_weighted,val_xent,pixel_accuracy,"
                     "pixel_error,rand_error,v_rand,v_info",
                     "2,,0.5,0.4,0.9,,,,", "3,,0.25,,,,,,"]  # new columns stay empty
    with pytest.raises(ValueError, match="is a file, not a folder; name a folder"):
        RunFolder(tmp_path / "metrics.csv")
