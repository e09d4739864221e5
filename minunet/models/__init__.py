"""The networks: a registry (name -> model class, which names its config class and builds
itself) and one file per architecture.

    registry.py   register, build_model, config_for, names; BUILT_IN: the architectures
                  below, each imported when first asked for
    sizes.py      the valid U-Net's size arithmetic and its geometry object
    unet.py       the U-Net of Ronneberger, Fischer and Brox (2015)
    mobile_unet.py  smp's Unet with a MobileNetV2 encoder (Sandler et al. 2018)
    eff_unet.py   smp's Unet with an EfficientNet-B0..B7 encoder (Tan and Le 2019)
    smp_decoder.py  segmentation_models_pytorch's Unet decoder, shared by the encoder U-Nets
    unet_bn.py    the U-Net with BatchNorm and padded convs (milesial/Pytorch-UNet's layout)
    resunet.py    the deep residual U-Net of Zhang, Liu and Wang (2018)
    unet3p.py     UNet 3+ (Huang et al. 2020): full-scale skips, deep supervision, CGM
    unetpp.py     UNet++, the nested U-Net of Zhou et al. (2018), deep supervision

Each architecture is described once, by its own file: its parameter shapes, its layers, its
forward and backward, its geometry. Its per-layer table, ONNX graph and PyTorch mirror are
read off its forward by minunet/nn/trace.py.
"""

from minunet.models import unet  # noqa: F401  (registers "unet"; the others on first use:

# registry.BUILT_IN)
from minunet.models.registry import ARCHITECTURES, build_model, config_for, get, names, register
from minunet.nn.model import INPUT_MEAN, INPUT_STD, standardize

__all__ = ["ARCHITECTURES", "INPUT_MEAN", "INPUT_STD", "build_model", "config_for", "get",
           "names", "register", "standardize"]
