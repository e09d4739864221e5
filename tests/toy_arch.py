"""A toy architecture, in one module, registered by importing it: a two-level U-Net with a
residual block and padded 3x3 convolutions (margin 0, tiles on a 2-px grid). tests/test_house.py
shows that the house takes it with nothing else edited: it trains, predicts, describes itself,
exports to ONNX and passes the whole-network gradient check.

    enc      conv3x3 (padded) + ReLU          cin -> w      H x W   --skip--.
    pool     2x2 max-pool                                   H/2             |
    down     conv3x3 + ReLU                   w -> 2w                       |
    res      conv3x3 + ReLU, conv3x3, + down, ReLU   (the residual block)  |
    up       2x2 up-conv                      2w -> w       H x W           |
    cat      [skip, up]                       2w          <-----------------'
    dec      conv3x3 + ReLU                   2w -> w
    final    conv1x1                          w -> K
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.models.registry import register
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import Add, Concat, ConvGeneral, MaxPool, Relu, UpConv
from minunet.nn.model import Model, ModelConfig, conv_shapes


@dataclass
class ToyConfig(ModelConfig):
    arch: str = "toy_resunet"
    width: int = 4  # channels of the first level (2 * width in the second)
    residual: bool = True  # the residual connection around the block (off: a plain block)


@register("toy_resunet")
class ToyResUNet(Model):
    config_class = ToyConfig

    def parameter_shapes(self) -> dict[str, tuple]:
        c, w = self.config, self.config.width
        return (conv_shapes("enc", c.in_channels, w, 3) | conv_shapes("down", w, 2 * w, 3)
                | conv_shapes("res.conv0", 2 * w, 2 * w, 3)
                | conv_shapes("res.conv1", 2 * w, 2 * w, 3)
                | {"up.upconv.weight": (2 * w, w, 2, 2), "up.upconv.bias": (w,)}
                | conv_shapes("dec", 2 * w, w, 3) | conv_shapes("final", w, c.n_classes, 1))

    def build(self, o) -> None:
        self.enc, self.pool = ConvGeneral(o, "enc"), MaxPool(o)
        self.down = ConvGeneral(o, "down")
        self.res0, self.res1 = ConvGeneral(o, "res.conv0"), ConvGeneral(o, "res.conv1",
                                                                         relu=False)
        self.add, self.res_relu = Add(o), Relu(o)
        self.upconv, self.cat = UpConv(o, "up.upconv"), Concat(o)
        self.dec = ConvGeneral(o, "dec")
        self.final = ConvGeneral(o, "final", padding=0, relu=False)

    @classmethod
    def geometry_of(cls, config):
        return PaddedGeometry(grid=2)  # one pool: even sides; padded convs: output = input

    @classmethod
    def test_config(cls, **common):
        return ToyConfig(**{"width": 3, **common})

    def layers(self) -> list:
        return [self.enc, self.pool, self.down, self.res0, self.res1, self.add, self.res_relu,
                self.upconv, self.cat, self.dec, self.final]

    def forward(self, x, dropout_key=None):
        self._begin_forward(x)
        p = self.params
        skip = self.enc.forward(p, x)
        h = self.down.forward(p, self.pool.forward(skip))
        r = self.res1.forward(p, self.res0.forward(p, h))
        h = self.res_relu.forward(self.add.forward(h, r) if self.config.residual else r)
        h = self.cat.forward(skip, self.upconv.forward(p, h))
        return self.final.forward(p, self.dec.forward(p, h))

    def backward(self, dlogits):
        g = self.grads
        dh = self.dec.backward(g, self.final.backward(g, dlogits))
        dskip, dup = self.cat.backward(dh)
        dh = self.res_relu.backward(self.upconv.backward(g, dup))
        if self.config.residual:
            dh, dr = self.add.backward(dh)
        else:
            dh, dr = 0, dh
        dh = dh + self.res0.backward(g, self.res1.backward(g, dr))
        dh = self.pool.backward(self.down.backward(g, dh))
        self.enc.backward(g, dh + dskip)
