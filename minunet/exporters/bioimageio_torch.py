"""The U-Net as a stand-alone PyTorch module, for the `pytorch_state_dict` weights of a
bioimage.io package (`python -m minunet.export --to bioimageio` copies this file into the
package, where it imports nothing but torch).

The parameter names and layouts are minunet's (docs/DESIGN.md, "Parameter names and layouts"):
`down{i}.conv0.weight` (Cout, Cin, 3, 3), ..., `bottleneck.conv1.bias`, `up{i}.upconv.weight`
(Cin, Cout, 2, 2), `final.weight`, so a state dict of the safetensors export loads as it is.
Like the package's ONNX graph, the module takes images in [0, 1] (the package's preprocessing
gets them there), standardises them with (x - 0.5) / 0.25 as minunet's training did, and returns
the class probabilities (softmax over the channels) of the input's centre: 184 pixels smaller at
depth 4, for the valid sizes 188 + 16k.
"""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Module):
    """Two valid 3x3 convolutions, each followed by a ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = nn.Conv2d(cin, cout, 3)
        self.conv1 = nn.Conv2d(cout, cout, 3)

    def forward(self, x):
        return torch.relu(self.conv1(torch.relu(self.conv0(x))))


class UpBlock(DoubleConv):
    """A 2x2 up-convolution, the skip's centre crop concatenated before it, two convolutions."""

    def __init__(self, cin: int, cout: int, upconv_relu: bool):
        super().__init__(2 * cout, cout)
        self.upconv = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.upconv_relu = upconv_relu

    def forward(self, x, skip):
        x = self.upconv(x)
        if self.upconv_relu:
            x = torch.relu(x)
        dy = (skip.shape[2] - x.shape[2]) // 2
        dx = (skip.shape[3] - x.shape[3]) // 2
        crop = skip[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
        return super().forward(torch.cat([crop, x], dim=1))  # the skip's channels first


class MinUNet(nn.Module):
    """(N, in_channels, H, W) in [0, 1] -> (N, n_classes, H - margin, W - margin) probabilities."""

    def __init__(self, in_channels: int = 1, n_classes: int = 2, depth: int = 4, base: int = 64,
                 upconv_relu: bool = False):
        super().__init__()
        self.depth = depth
        width = [base * 2**i for i in range(depth + 1)]
        for i in range(depth):
            self.add_module(f"down{i}", DoubleConv(in_channels if i == 0 else width[i - 1],
                                                   width[i]))
        self.bottleneck = DoubleConv(width[depth - 1], width[depth])
        for i in range(depth):
            self.add_module(f"up{i}", UpBlock(width[i + 1], width[i], upconv_relu))
        self.final = nn.Conv2d(base, n_classes, 1)

    def forward(self, x):
        x = (x - 0.5) / 0.25  # minunet's standardisation (minunet/models/unet.py, standardize)
        skips = []
        for i in range(self.depth):
            x = getattr(self, f"down{i}")(x)
            skips.append(x)
            x = torch.max_pool2d(x, 2)
        x = self.bottleneck(x)  # dropout is off at inference
        for i in reversed(range(self.depth)):
            x = getattr(self, f"up{i}")(x, skips[i])
        return torch.softmax(self.final(x), dim=1)
