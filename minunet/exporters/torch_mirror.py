"""Any registered network in PyTorch, built from its own forward: the op sequence that
minunet/nn/trace.py records (as minunet/exporters/onnx.py builds the ONNX graph from it), each
node one torch call (minunet/exporters/bioimageio_torch.py, `TracedNet`). Used for the
benchmark's comparison, the parity tests and the bioimage.io package's `pytorch_state_dict`
weights (torch is never a dependency).

The module's state dict holds minunet's parameter names and layouts (docs/DESIGN.md,
"Parameter names and layouts"), so `load_state_dict` takes minunet's parameters as they are;
in training mode dropout sits where the network's forward has it (p = config.dropout), and
`bench` times it with minunet's loss (weighted pixel-wise cross-entropy, mean over pixels;
"Loss") and optimiser cost (SGD, momentum 0.99).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from minunet.models import registry
from minunet.nn import trace as tracing


def graph_of(cfg, standardize: bool = False, softmax: bool = False) -> dict:
    """The traced forward of the network `cfg` describes, as plain data for `TracedNet`:
    nodes (op, inputs, attrs, out), parameter shapes, the output's name. Traced at the
    smallest tile; crops read their size from the runtime shape, so any valid size runs."""
    cls = registry.get(cfg.arch)
    geometry = cls.geometry_of(cfg)
    t = tracing.trace(cls, cfg, geometry.nearest_valid_sizes(geometry.min_tile())[1])
    nodes = [{"op": n.op, "inputs": list(n.inputs), "attrs": n.attrs, "out": n.out}
             for n in t.nodes]
    return {"nodes": json.loads(json.dumps(nodes)),  # tuples -> lists: plain JSON data
            "params": {k: list(v) for k, v in t.param_shapes.items()},
            "buffers": {k: list(v) for k, v in t.buffer_shapes.items()}, "output": t.output,
            "dropout": float(getattr(cfg, "dropout", 0.0)), "standardize": standardize,
            "softmax": softmax}


def build(cfg, standardize: bool = False, softmax: bool = False):
    """The torch module (a `TracedNet`) of the network `cfg` describes: logits by default."""
    from minunet.exporters.bioimageio_torch import TracedNet

    return TracedNet(graph_of(cfg, standardize, softmax))


PACKAGE_TAIL = '''

# --- the exported network (written by minunet/exporters/torch_mirror.py, package_source) ---

import json  # noqa: E402

GRAPH = json.loads(r"""{graph}""")
CONFIG = json.loads(r"""{config}""")


class MinUNet(TracedNet):
    """The exported network: (N, C, H, W) in [0, 1] -> class probabilities. The keyword
    arguments (the rdf.yaml's kwargs) must be the exported network's config."""

    def __init__(self, **kwargs):
        differ = {{k: v for k, v in kwargs.items() if CONFIG.get(k) != v}}
        if differ:
            raise ValueError(f"this module holds the network {{CONFIG}}; got {{differ}}")
        super().__init__(GRAPH)
'''


def package_source(cfg, kwargs: dict) -> str:
    """The package's architecture file: bioimageio_torch.py (torch only) with the network's
    graph appended and `MinUNet(**kwargs)` to build it (standardised input, probabilities)."""
    from minunet.exporters import bioimageio_torch

    graph = graph_of(cfg, standardize=True, softmax=True)
    return Path(bioimageio_torch.__file__).read_text() + PACKAGE_TAIL.format(
        graph=json.dumps(graph), config=json.dumps(kwargs))


def bench(cfg, size, batch, device, repeat, warmup, tf32=False) -> dict:
    import torch

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, cfg.dtype)
    net = build(cfg).to(device=device, dtype=dtype).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.99)
    n = registry.geometry(cfg).output_size(size)
    x = torch.randn(batch, cfg.in_channels, size, size, device=device, dtype=dtype)
    labels = torch.randint(0, cfg.n_classes, (batch, n, n), device=device)
    weights = torch.ones(batch, n, n, device=device, dtype=dtype)

    def fwd():
        with torch.no_grad():
            net(x)

    def fwd_bwd():
        logits = net(x)
        loss = (torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                * weights).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()

    def step():
        fwd_bwd()
        opt.step()

    def timed(fn):
        for _ in range(warmup):
            fn()
        ts = []
        for _ in range(repeat):
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        return ts

    from minunet import backend

    def peak():
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return backend.peak_rss_mb()  # this process's own pages

    res = {"forward": timed(fwd), "forward+backward": timed(fwd_bwd)}
    res["peak_mb"] = peak()
    if device == "cuda":  # the training steps' own peak, as minunet.bench measures ours
        torch.cuda.reset_peak_memory_stats()
    else:
        backend.reset_peak_rss()
    res["training step"] = timed(step)
    res["step_peak_mb"] = peak()
    res["peak_mb"] = max(res["peak_mb"], res["step_peak_mb"])
    return res
