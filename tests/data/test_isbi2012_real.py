"""The real ISBI 2012 slices, when present: MINUNET_ISBI2012=PATH or ../shared/data/isbi2012."""

import os
from pathlib import Path

import numpy as np
import pytest

from minunet.data.loaders import load_dataset

REPO = Path(__file__).resolve().parents[2]


def isbi_path():
    env = os.environ.get("MINUNET_ISBI2012")
    if env:
        return Path(env)
    default = REPO / ".." / "shared" / "data" / "isbi2012"
    return default if default.is_dir() else None


@pytest.mark.skipif(isbi_path() is None, reason="ISBI 2012 data not found")
def test_real_isbi2012_slices():
    d = load_dataset(f"isbi2012:{isbi_path()}")
    samples = d.train + d.val + d.holdout
    assert len(samples) == 30 and [s.name for s in d.train][-1] == "22"  # the protocol
    assert [s.name for s in d.val] == ["23", "24"]
    assert [s.name for s in d.holdout] == ["25", "26", "27", "28", "29"]
    for s in samples:
        assert s.image.shape == s.label.shape == (512, 512)
        assert s.image.dtype == np.float32 and 0 <= s.image.min() and s.image.max() <= 1
        assert set(np.unique(s.label).tolist()) == {0, 1}
    cell = np.mean([s.label.mean() for s in samples])
    assert abs(cell - 0.7804) < 0.001  # README: 78.04 % cell pixels
    assert len(d.test) == 30
