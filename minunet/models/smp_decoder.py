"""The decoder of segmentation_models_pytorch's `Unet` (Yakubovskiy, qubvel/segmentation_models
.pytorch, decoders/unet/decoder.py and model.py), shared by the encoder U-Nets (mobile_unet.py,
eff_unet.py): five decoder blocks from the encoder's deepest map back to the input size, then a
3x3 segmentation head.

    bottom (stride 32) ----------------------------------------.
    block0: nearest x2, [up, skip16], conv3x3-BN-ReLU x2 -> 16 b   (b = `base`: 16 in smp)
    block1: nearest x2, [up, skip8],  conv3x3-BN-ReLU x2 ->  8 b
    block2: nearest x2, [up, skip4],  conv3x3-BN-ReLU x2 ->  4 b
    block3: nearest x2, [up, skip2],  conv3x3-BN-ReLU x2 ->  2 b
    block4: nearest x2 (no skip),     conv3x3-BN-ReLU x2 ->    b   (the input's size)
    final:  conv3x3 + bias            b -> K (softmax) or 1 (sigmoid, as [0, z])

As smp has it: decoder channels (256, 128, 64, 32, 16) (here 16 b, 8 b, 4 b, 2 b, b with
b = 16), the up-sampled map comes BEFORE the skip in the concatenation (`torch.cat([x, skip])`;
the 2015 U-Net puts the skip first), no center block, the convolutions before BatchNorm have
no bias, and the segmentation head is one 3x3 convolution with bias and no activation in the
logits. smp pads the up-sampled map to the skip's size when they differ; here the input side
is a multiple of 32 (PaddedGeometry(grid=32)), so they never do.

Parameters `dec.block{i}.conv{1,2}.conv.weight`, `.bn.weight|bias` (smp:
`decoder.blocks.{i}.conv{1,2}.{0,1}`) and `final.weight|bias` (smp: `segmentation_head.0`).

Also shared by the two encoders: `read_torch_state_dict` and `load_encoder_weights`, which put a
torchvision ImageNet state dict into an encoder through the model's own name mapping.
"""

from __future__ import annotations

from minunet.nn.layers import BinaryHead, Concat, ConvGeneral, ConvNormAct, Layer, Upsample
from minunet.nn.model import conv_norm_shapes, conv_shapes

WIDTHS = (16, 8, 4, 2, 1)  # decoder channels in units of `base` (smp: 256, 128, 64, 32, 16)


def decoder_channels(base: int) -> tuple:
    """The five decoder blocks' output channels: (16 b, 8 b, 4 b, 2 b, b)."""
    return tuple(w * base for w in WIDTHS)


def decoder_shapes(skip_channels, bottom_channels: int, base: int, n_out: int) -> dict:
    """The decoder's parameter shapes. skip_channels: the encoder's skips at strides 2, 4, 8, 16
    (in that order); bottom_channels: its stride-32 map; n_out: the head's output channels."""
    shapes = {}
    cin = bottom_channels
    skips = list(skip_channels[::-1]) + [0]  # stride 16, 8, 4, 2, then none
    for i, (skip, cout) in enumerate(zip(skips, decoder_channels(base), strict=True)):
        name = f"dec.block{i}"
        shapes |= conv_norm_shapes(name + ".conv1", cin + skip, cout, 3)
        shapes |= conv_norm_shapes(name + ".conv2", cout, cout, 3)
        cin = cout
    return shapes | conv_shapes("final", cin, n_out, 3)


class DecoderBlock(Layer):
    """Nearest x2 up-sampling, [up, skip] (when there is a skip), two conv3x3-BN-ReLU units:
    x (N, Cin, H, W), skip (N, Cs, 2H, 2W) or None -> (N, Cout, 2H, 2W)."""

    cache_names = ()
    parts = ("up", "cat", "conv1", "conv2")

    def __init__(self, ops, name: str, model, has_skip: bool):
        super().__init__(ops)
        self.has_skip = has_skip
        self.up = Upsample(ops, "nearest", 2)
        self.cat = Concat(ops)
        self.conv1 = ConvNormAct(ops, name + ".conv1", model)
        self.conv2 = ConvNormAct(ops, name + ".conv2", model)

    def forward(self, params, x, skip):
        h = self.up.forward(x)
        if self.has_skip:
            h = self.cat.forward(h, skip)  # [up, skip]: smp's order
        return self.conv2.forward(params, self.conv1.forward(params, h))

    def backward(self, grads, dout):
        """Returns (dx, dskip or None)."""
        d = self.conv1.backward(grads, self.conv2.backward(grads, dout))
        dskip = None
        if self.has_skip:
            d, dskip = self.cat.backward(d)
        return self.up.backward(d), dskip



class UnetDecoder:
    """The five blocks and the head (module doc), on `model`'s parameters and buffers.

    forward(params, skips, bottom): skips (the maps at strides 2, 4, 8, 16), bottom (stride 32)
    -> logits (N, K, H, W); backward(grads, dlogits) -> (dskips, dbottom), the gradients of
    the maps forward was given, in its order."""

    def __init__(self, ops, model, sigmoid: bool):
        self.blocks = [DecoderBlock(ops, f"dec.block{i}", model, has_skip=i < 4)
                       for i in range(5)]
        self.final = ConvGeneral(ops, "final", padding=1, relu=False)
        self.bin = BinaryHead(ops) if sigmoid else None

    def layers(self) -> list:
        return [*self.blocks, self.final] + ([self.bin] if self.bin else [])

    def forward(self, params, skips, bottom):
        h = bottom
        skips = [*skips[::-1], None]  # strides 16, 8, 4, 2, then none
        for block, skip in zip(self.blocks, skips, strict=True):
            h = block.forward(params, h, skip)
        out = self.final.forward(params, h)
        return self.bin.forward(out) if self.bin else out

    def backward(self, grads, dlogits):
        d = self.bin.backward(dlogits) if self.bin else dlogits
        d = self.final.backward(grads, d)
        dskips = []
        for block in self.blocks[::-1]:  # block4 (no skip) .. block0
            d, dskip = block.backward(grads, d)
            if dskip is not None:
                dskips.append(dskip)  # strides 2, 4, 8, 16
        return dskips, d


# --- ImageNet weights for an encoder: a torchvision state dict ------------------------------


def read_torch_state_dict(path: str) -> dict:
    """The arrays of a PyTorch state dict file (`torch.save(model.state_dict(), path)`) as
    float64 NumPy arrays, by name. torch is imported here only (never a dependency of
    minunet); the file is read with `weights_only=True` (tensors, no arbitrary pickles)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise ValueError(f"encoder_weights {path!r}: no such file")
    try:
        import torch
    except ImportError:
        raise ValueError(f"encoder_weights {path!r} is a PyTorch file, and reading it needs "
                         f"torch: pip install torch (the CPU build is enough)") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"encoder_weights {path!r} holds a {type(state).__name__}, not a "
                         f"state dict: save it with torch.save(model.state_dict(), path)")
    return {k: v.detach().double().numpy() for k, v in state.items()}


def load_encoder_weights(model, state: dict, names: dict, source: str) -> None:
    """Copy a torchvision network's encoder weights into `model` (in place). state: its state
    dict (NumPy arrays); names: torchvision name -> minunet name (parameters and BatchNorm
    buffers) for every encoder tensor; the classifier is not used. The stem's weight
    (32, 3, 3, 3) is fitted to in_channels as smp does (segmentation_models_pytorch,
    encoders/_utils.py, patch_first_conv): summed over RGB for one channel, else the RGB
    weights repeated over the channels and scaled by 3 / in_channels."""
    import numpy as np

    missing = sorted(k for k in names if k not in state)
    unexpected = sorted(k for k in state if k not in names and not k.startswith("classifier."))
    if missing or unexpected:
        raise ValueError(f"{source} is not the encoder's torchvision state dict: missing "
                         f"{', '.join(missing[:6]) or 'none'}; unexpected "
                         f"{', '.join(unexpected[:6]) or 'none'} (width and variant must be "
                         f"those of the saved network)")
    stores = model.params | model.buffers
    for theirs, ours in names.items():
        value = np.asarray(state[theirs], dtype=np.float64)
        target = stores[ours]
        if ours == "enc.stem.conv.weight" and value.shape[1] == 3 and target.shape[1] != 3:
            c = target.shape[1]
            value = value.sum(axis=1, keepdims=True) if c == 1 else \
                value[:, [i % 3 for i in range(c)]] * (3.0 / c)  # (32, c, 3, 3)
        if value.ndim == 0:  # num_batches_tracked: a 0-d integer tensor in PyTorch
            value = value.reshape(1)
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{source}: {theirs} has shape {value.shape}, the model's {ours} "
                             f"{tuple(target.shape)} (width and variant must be those of the "
                             f"saved network)")
        xp = model.xp
        store = model.params if ours in model.params else model.buffers
        store[ours] = xp.asarray(value, dtype=target.dtype)
