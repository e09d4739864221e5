"""The parameters as safetensors: float32, under the contract's names and PyTorch's layouts
(docs/DESIGN.md, "Parameter names and layouts"), with what a reader needs besides them as
metadata (the architecture, its config, the input normalisation)."""

from __future__ import annotations

import json

import numpy as np

from minunet.nn.model import INPUT_MEAN, INPUT_STD
from minunet.training.checkpoint import checkpoint_normalize


def float32_params(model) -> dict[str, np.ndarray]:
    """The parameters as contiguous float32 host arrays, by name."""
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.state_dict().items()}


def safetensors_bytes(params: dict, metadata: dict) -> bytes:
    """The parameters (float32, PyTorch layouts, the contract's names) as safetensors bytes;
    metadata values become strings."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v, np.float32) for k, v in params.items()},
                metadata={k: str(v) for k, v in metadata.items()})


def export_metadata(ckpt, config) -> dict:
    """What a reader of the exported weights needs besides them (strings)."""
    return {"format": "pt", "producer": "minunet", "arch": ckpt.arch,
            "config": json.dumps({k: v for k, v in vars(config).items()}, sort_keys=True),
            "normalize": checkpoint_normalize(ckpt), "iteration": str(ckpt.iteration),
            "input": f"images in [0, 1]; the network takes (x - {INPUT_MEAN}) / {INPUT_STD}",
            "names": "docs/DESIGN.md 'Parameter names and layouts': Conv2d (Cout, Cin, k, k), "
                     "ConvTranspose2d (Cin, Cout, 2, 2)"}
