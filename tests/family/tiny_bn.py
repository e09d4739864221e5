"""A tiny network with the family's layers (tests/family/test_infra.py): ConvNormAct units,
a ceil-mode pool, bilinear up-sampling, a concat skip, a sigmoid head as two-class logits, and
deep supervision (two heads) when `heads=2`.

    a      conv3x3-BN-ReLU     cin -> 4      H      --skip--.
    pool   2x2 max-pool                      H/2            |
    b      conv3x3-BN-ReLU     4 -> 4                       |
    up     bilinear x2                       H              |
    cat    [skip, up]          8     <----------------------'
    c      conv3x3-BN-ReLU     8 -> 4
    head   conv1x1             4 -> 1, [0, z]    (head2 on `a`'s output when heads=2)
"""

from __future__ import annotations

from dataclasses import dataclass

from minunet.models.registry import register
from minunet.nn.geometry import PaddedGeometry
from minunet.nn.layers import BinaryHead, Concat, ConvGeneral, ConvNormAct, Pool, Upsample
from minunet.nn.model import Heads, Model, ModelConfig, conv_norm_shapes, conv_shapes


@dataclass
class TinyBNConfig(ModelConfig):
    arch: str = "tiny_bn"
    heads: int = 1  # 2: deep supervision, a second head on the first unit


@register("tiny_bn")
class TinyBN(Model):
    config_class = TinyBNConfig

    def parameter_shapes(self):
        c = self.config
        return (conv_norm_shapes("a", c.in_channels, 4, 3) | conv_norm_shapes("b", 4, 4, 3)
                | conv_norm_shapes("c", 8, 4, 3) | conv_shapes("head", 4, 1, 1)
                | (conv_shapes("head2", 4, 1, 1) if c.heads == 2 else {}))

    def build(self, o):
        self.a, self.pool = ConvNormAct(o, "a", self), Pool(o, 2, ceil_mode=True)
        self.b, self.up = ConvNormAct(o, "b", self), Upsample(o, "bilinear", 2)
        self.cat, self.c = Concat(o), ConvNormAct(o, "c", self)
        self.head, self.bin = ConvGeneral(o, "head", padding=0, relu=False), BinaryHead(o)
        self.head2, self.bin2 = ConvGeneral(o, "head2", padding=0, relu=False), BinaryHead(o)

    @classmethod
    def geometry_of(cls, config):
        return PaddedGeometry(grid=2)

    @classmethod
    def test_config(cls, **common):
        return TinyBNConfig(**common)

    def layers(self):
        return [self.a, self.pool, self.b, self.up, self.cat, self.c, self.head, self.bin,
                self.head2, self.bin2]

    def forward(self, x, dropout_key=None):
        self._begin_forward(x)
        p = self.params
        s = self.a.forward(p, x)
        h = self.up.forward(self.b.forward(p, self.pool.forward(s)))
        out = self.bin.forward(self.head.forward(p, self.c.forward(p, self.cat.forward(s, h))))
        if self.config.heads == 2 and self.training:
            return Heads((out, self.bin2.forward(self.head2.forward(p, s))))
        return out

    def backward(self, dlogits):
        g = self.grads
        d2 = None
        if isinstance(dlogits, Heads):
            dlogits, d2 = dlogits
        d = self.c.backward(g, self.head.backward(g, self.bin.backward(dlogits)))
        ds, dh = self.cat.backward(d)
        ds = ds + self.pool.backward(self.b.backward(g, self.up.backward(dh)))
        if d2 is not None:
            ds = ds + self.head2.backward(g, self.bin2.backward(d2))
        self.a.backward(g, ds)
