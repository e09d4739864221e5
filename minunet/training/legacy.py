"""Settings of older checkpoints brought up to date: one place that knows what older versions
of minunet wrote (their training settings, their model configs), so that every command reads
an old checkpoint as if it were new (tests/test_checkpoint.py loads one written before the
house move, tests/data/checkpoint_pre_house_base2.npz)."""

from __future__ import annotations


def migrate_train_settings(saved: dict) -> dict:
    """A checkpoint's config["train"] with the defaults that older runs used for options that
    did not exist yet."""
    saved = {"normalize": "max", **saved}  # what runs did before --normalize existed
    if "holdout" not in saved:  # before --holdout: nothing held out, ISBI validated 25-29
        isbi_val = saved.get("data", "").startswith("isbi2012") and not saved.get("val")
        saved = {**saved, "holdout": "none", **({"val": str(1 / 6)} if isbi_val else {})}
    return saved


def migrate_model_config(conf: dict, arch: str) -> dict:
    """A checkpoint's config["model"] for the config class of `arch`: checkpoints from before
    issue 10 have no `arch` and no `ops` in it (the U-Net, on the fast ops: the defaults);
    those from before the models/ registry no `loss` (the U-Net's default)."""
    return {**conf, "arch": arch}
