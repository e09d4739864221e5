"""Validation during training: whole validation images by overlap-tile inference, scored as
predict and evaluate score them, and the score that chooses best.npz."""

from __future__ import annotations

import math

import numpy as np

from minunet import backend
from minunet.evaluation import metrics
from minunet.inference.outputs import to_uint8
from minunet.inference.tiles import predict


def score_of(row: dict) -> float:
    """The score best.npz minimises, of a metrics row (numbers, or metrics.csv's strings):
    the validation pixel error for two classes (ISBI, at its best threshold: it follows the
    segmentation, and it is steady where the Rand scores of a few images swing from one
    validation to the next), else the validation loss, else (nothing validated) the
    training loss."""
    for key in ("pixel_error", "val_xent", "train_loss_weighted"):
        if row.get(key, "") != "":
            return float(row[key])
    return math.inf


def _best_of(rng: dict) -> float:
    """The best score so far that a checkpoint recorded (None: none yet)."""
    best = rng.get("best_score")
    return math.inf if best is None else float(best)



def validate(trainer) -> dict:
    """Whole validation images by overlap-tile inference, dropout off: val_xent (the
    unweighted cross-entropy, see minunet/training/runfolder.py), pixel accuracy, and for two
    classes the four ISBI 2012 scores of the validation images pooled, exactly as predict
    (8-bit probabilities) and evaluate compute them."""

    if not trainer.data.val:
        return {}
    trainer.model.release_caches()  # the last step's activations are not needed again
    trainer.model.eval()
    losses, correct, total, counts, trainer.val_preds = [], 0, 0, [], []
    try:
        for s in trainer.data.val:
            with np.errstate(all="ignore"):  # overflow shows as non-finite output:
                probs = backend.to_host(predict(trainer.model, s.image))  # (K, H, W)
            if not np.isfinite(probs).all():
                trainer.diverged(trainer.it, f"the prediction of validation image {s.name} is "
                              "not finite (the weights grew too large)")
            p_true = np.take_along_axis(probs, s.label[None], axis=0)[0]  # (H, W)
            losses.append(float(-np.log(np.maximum(p_true, 1e-12)).mean()))
            pred = probs.argmax(0)
            correct += int((pred == s.label).sum())
            total += s.label.size
            if trainer.data.n_classes == 2:
                counts.append(metrics.slice_counts(to_uint8(probs[1]) / 255.0,
                                                   s.label == 1))
            trainer.val_preds.append((s.image, s.label, probs))
    finally:
        trainer.model.train()
    res = {"val_xent": float(np.mean(losses)), "pixel_accuracy": correct / total}
    if counts:
        res.update(metrics.scores_of(counts).as_dict())
    return res
