"""The same U-Net in PyTorch, only for the benchmark's comparison (torch is never a dependency).

Same layers, sizes, parameter names and layouts (docs/DESIGN.md, "Parameter names
and layouts"), loss (weighted pixel-wise cross-entropy, mean over pixels; "Loss"),
dropout placement and optimiser cost (SGD, momentum 0.99).
"""

from __future__ import annotations

import time

from minunet.models.sizes import output_size
from minunet.models.unet import UNetConfig, channels


def build(cfg: UNetConfig):
    import torch
    from torch import nn

    def double(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3), nn.ReLU(inplace=True))

    class TorchUNet(nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg.depth
            cins = [cfg.in_channels] + [channels(cfg, i) for i in range(d)]
            self.down = nn.ModuleList(double(cins[i], channels(cfg, i)) for i in range(d))
            self.mid = double(channels(cfg, d - 1), channels(cfg, d))
            self.ups = nn.ModuleList(nn.ConvTranspose2d(channels(cfg, i + 1), channels(cfg, i), 2,
                                                        stride=2) for i in range(d))
            self.up = nn.ModuleList(double(2 * channels(cfg, i), channels(cfg, i))
                                    for i in range(d))
            self.final = nn.Conv2d(cfg.base, cfg.n_classes, 1)
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, x):
            skips = []
            for i, block in enumerate(self.down):
                x = block(x)
                if i == len(self.down) - 1:
                    x = self.drop(x)
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
            x = self.drop(self.mid(x))
            for i in reversed(range(len(self.up))):
                x = self.ups[i](x)
                s = skips[i]
                t = (s.shape[2] - x.shape[2]) // 2
                x = torch.cat([s[:, :, t:t + x.shape[2], t:t + x.shape[3]], x], 1)
                x = self.up[i](x)
            return self.final(x)

    return TorchUNet()


def bench(cfg: UNetConfig, size, batch, device, repeat, warmup, tf32=False) -> dict:
    import torch

    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    dtype = getattr(torch, cfg.dtype)
    net = build(cfg).to(device=device, dtype=dtype).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-6, momentum=0.99)
    n = output_size(size, cfg.depth)
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

    res = {"forward": timed(fwd), "forward+backward": timed(fwd_bwd), "training step": timed(step)}
    if device == "cuda":
        res["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        from minunet import backend

        res["peak_mb"] = backend.peak_rss_mb()  # this process's own pages
    return res
