"""A network as a stand-alone PyTorch module, run from its op sequence: the nodes that
minunet/nn/trace.py records from the network's own forward (minunet/exporters/torch_mirror.py,
`graph_of`), each node one torch call (`TracedNet`). This file imports nothing but torch, so
`python -m minunet.export --to bioimageio` copies it into the package (as unet_torch.py) with
the exported network's graph appended (`package_source`): bioimage.io's `pytorch_state_dict`
weights need such an architecture file.

The parameters are registered under minunet's names and in its layouts (docs/DESIGN.md,
"Parameter names and layouts"): `down0.conv0.weight` (Cout, Cin, 3, 3), `up0.upconv.weight`
(Cin, Cout, 2, 2), `final.bias`, so a state dict of the safetensors export loads as it is.
In the package the module takes images in [0, 1] (the package's preprocessing gets them there),
standardises them with (x - 0.5) / 0.25 as minunet's training did, and returns the class
probabilities (softmax over the channels); `standardize` and `softmax` in the graph say so.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _crop(x, size):
    """The centre (size[0], size[1]) of x (N, C, H, W), as minunet's center_crop."""
    dy, dx = (x.shape[2] - size[0]) // 2, (x.shape[3] - size[1]) // 2
    return x[:, :, dy:dy + size[0], dx:dx + size[1]]


def _conv(x, w, b, n, values):
    out = F.conv2d(x, w, b)
    return torch.relu(out) if n["attrs"].get("relu") else out


def _conv_general(x, w, b, n, values):
    a = n["attrs"]
    return F.conv2d(x, w, b, stride=tuple(a["stride"]), padding=tuple(a["padding"]),
                    groups=a["groups"])


def _center_crop(x, n, values):
    like = n["attrs"].get("like")
    return _crop(x, values[like].shape[2:] if like else n["attrs"]["size"])


def _maxpool(x, n, values):
    k = n["attrs"]["k"]
    return F.max_pool2d(x, k, ceil_mode=n["attrs"]["ceil_mode"])


def _batchnorm(x, w, b, mean, var, n, values):
    a = n["attrs"]
    training = bool(values.get("__training__"))
    if training:  # PyTorch's BatchNorm2d counts the batches; F.batch_norm does not
        count = n["inputs"][3][:-len("running_mean")] + "num_batches_tracked"
        values["__tensors__"][count].add_(1)
    return F.batch_norm(x, mean, var, w, b, training=training, momentum=a.get("momentum", 0.1),
                        eps=a.get("eps", 1e-5))


def _log_mean_softmax(*args):
    # args: the heads' logits, then the node and the values: log of their mean softmax
    heads = args[:-2]
    return (torch.logsumexp(torch.stack([F.log_softmax(a, dim=1) for a in heads]), dim=0)
            - math.log(len(heads)))


# trace op -> torch: (inputs..., node, values) -> output; parameters come in as tensors
OPS = {
    "conv2d": _conv,
    "conv2d_general": _conv_general,
    "upconv2x2": lambda x, w, b, n, v: F.conv_transpose2d(x, w, b, stride=2),
    "maxpool2x2": lambda x, n, v: F.max_pool2d(x, 2),
    "maxpool": _maxpool,
    "global_avgpool": lambda x, n, v: x.mean(dim=(2, 3), keepdim=True),
    "global_maxpool": lambda x, n, v: x.amax(dim=(2, 3), keepdim=True),
    "nearest_upsample2": lambda x, n, v: F.interpolate(x, scale_factor=2, mode="nearest"),
    "bilinear_upsample": lambda x, n, v: F.interpolate(
        x, scale_factor=n["attrs"]["factor"], mode="bilinear",
        align_corners=n["attrs"]["align_corners"]),
    "center_crop": _center_crop,
    "concat": lambda a, b, n, v: torch.cat([a, b], dim=1),  # a's channels first
    "relu": lambda x, n, v: torch.relu(x),
    "sigmoid": lambda x, n, v: torch.sigmoid(x),
    "relu6": lambda x, n, v: F.relu6(x),
    "silu": lambda x, n, v: F.silu(x),
    "add": lambda a, b, n, v: a + b,
    "channel_scale": lambda x, s, n, v: x * s.reshape(s.shape[0], s.shape[1], 1, 1),
    "binary_logits": lambda z, n, v: torch.cat([torch.zeros_like(z), z], dim=1),
    "batchnorm2d": _batchnorm,
    "log_mean_softmax": _log_mean_softmax,
}


class TracedNet(nn.Module):
    """(N, C, H, W) -> the network's output, computed node by node. `graph`: {"nodes": [{"op",
    "inputs", "attrs", "out"}, ...] in forward order, "params": {name: shape}, "output": the
    output value's name, "dropout": p (applied where the network has dropout, in training
    mode), "standardize" and "softmax": booleans (module doc)}."""

    def __init__(self, graph: dict):
        super().__init__()
        self.graph = graph
        for name, shape in graph["params"].items():
            *path, leaf = name.split(".")
            module = self
            for part in path:  # nested modules, so the state dict keys are minunet's names
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            module.register_parameter(leaf, nn.Parameter(torch.zeros(*shape)))
        for name, shape in graph.get("buffers", {}).items():  # BatchNorm's running statistics
            *path, leaf = name.split(".")
            module = self
            for part in path:
                if not hasattr(module, part):
                    module.add_module(part, nn.Module())
                module = getattr(module, part)
            dtype = torch.long if leaf == "num_batches_tracked" else None
            module.register_buffer(leaf, torch.zeros(*shape, dtype=dtype))
        for n in graph["nodes"]:
            if n["op"] not in OPS and n["op"] != "dropout":
                raise NotImplementedError(f"the torch mirror has no rule for {n['op']}: add one "
                                          f"to minunet/exporters/bioimageio_torch.py (OPS)")

    def forward(self, x):
        if self.graph.get("standardize"):
            x = (x - 0.5) / 0.25  # minunet's standardisation (minunet/models/unet.py)
        params = dict(self.named_parameters()) | dict(self.named_buffers())
        values = {"input": x, "__training__": self.training, "__tensors__": params}
        for n in self.graph["nodes"]:
            args = [values[i] if i in values else params.get(i) for i in n["inputs"]]
            if n["op"] == "dropout":
                out = F.dropout(args[0], self.graph.get("dropout", 0.0), self.training)
            else:
                out = OPS[n["op"]](*args, n, values)
            values[n["out"]] = out
        out = values[self.graph["output"]]
        return torch.softmax(out, dim=1) if self.graph.get("softmax") else out
