"""The U-Net family's ops and losses (issue 25) in the gradient check: which door holds them.

Their specs (inputs away from every kink: distinct values for the max-pools, |x| away from
ReLU6's 0 and 6, sigmoid's flat tails and SiLU's minimum; which inputs are differentiable; the
thresholds, with the measured reasons) are in minunet/nn/opspec.py, beside the U-Net's, and
`python -m minunet.gradcheck` runs them after the U-Net's; `--op NAME` picks one.

The two doors: "plain" checks minunet/ops/<module>.py; "fast" checks the fast twin at
minunet/fast/<module>.py where one exists (same module name), and otherwise the plain op, which
is then the fast door's op too (its docstring says why a twin is not worth it).

MS-SSIM (and UNet 3+'s loss, which holds it) is smooth but curved: at h = 1e-4 the central
difference's own error is ~1e-7, and its near-zero gradient entries carry the loss's rounding
divided by h. Their float64 rows therefore take a floor of 1 % of the largest entry and a
threshold of 1e-6 (a planted bug, the luminance term dropped, is off by > 1e-3), and they have
no float32 row: float32's step (3e-2) is far too coarse for that curvature (their specs' notes).
"""

from __future__ import annotations

import importlib
import importlib.util

from minunet.nn.opspec import SPECS

# the files of the family's ops in minunet/ops, from their specs
FAMILY_MODULES = tuple(dict.fromkeys(s.module for s in SPECS.values() if s.family))


def door_module(name: str, kind: str):
    """minunet.fast.<name> when kind is 'fast' and a twin exists, else minunet.ops.<name>."""
    if kind == "fast" and importlib.util.find_spec(f"minunet.fast.{name}") is not None:
        return importlib.import_module(f"minunet.fast.{name}")
    return importlib.import_module(f"minunet.ops.{name}")
