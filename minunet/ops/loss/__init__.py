"""The U-Net family's losses, as plain forward/backward pairs (the lesson door).

Each file is one loss with its definition cited and its gradient derived in its docstring:

    bce.py       binary cross-entropy on logits, optionally weighted by the U-Net weight map
    dice.py      soft Dice on probabilities, per image and class, smoothing s
    iou.py       soft IoU (Jaccard) on probabilities, per image and class, smoothing s
    focal.py     binary focal loss on logits (Lin et al. 2017)
    msssim.py    1 - MS-SSIM (Wang, Simoncelli and Bovik 2003), backward by hand
    combined.py  weighted sums on one output: UNet++'s BCE + Dice, UNet 3+'s focal + MS-SSIM + IoU

Every forward returns (loss, cache) with the loss a 0-d array of the prediction's dtype; every
backward takes the scalar dloss and returns the gradient of the prediction (targets are not
differentiated). NumPy or CuPy from the inputs; float32 and float64.
"""

from .bce import BceCache, bce_with_logits_backward, bce_with_logits_forward
from .combined import (
    LossTerm,
    WeightedSumCache,
    unet3p_loss_backward,
    unet3p_loss_forward,
    unet3p_terms,
    unetpp_loss_backward,
    unetpp_loss_forward,
    unetpp_terms,
    weighted_sum_backward,
    weighted_sum_forward,
)
from .dice import SoftDiceCache, soft_dice_backward, soft_dice_forward
from .focal import FocalCache, focal_backward, focal_forward
from .iou import SoftIouCache, soft_iou_backward, soft_iou_forward
from .msssim import (
    MSSSIM_WEIGHTS,
    MsssimCache,
    gaussian_window,
    msssim_backward,
    msssim_forward,
)

__all__ = [
    "BceCache", "bce_with_logits_forward", "bce_with_logits_backward",
    "SoftDiceCache", "soft_dice_forward", "soft_dice_backward",
    "SoftIouCache", "soft_iou_forward", "soft_iou_backward",
    "FocalCache", "focal_forward", "focal_backward",
    "MSSSIM_WEIGHTS", "MsssimCache", "gaussian_window", "msssim_forward", "msssim_backward",
    "LossTerm", "WeightedSumCache", "weighted_sum_forward", "weighted_sum_backward",
    "unetpp_terms", "unetpp_loss_forward", "unetpp_loss_backward",
    "unet3p_terms", "unet3p_loss_forward", "unet3p_loss_backward",
]
