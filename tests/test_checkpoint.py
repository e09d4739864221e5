"""Checkpoints (minunet/training/checkpoint.py): the format, old files, bad files, the model
rebuilt."""

import json
import os
from dataclasses import asdict

import numpy as np
import pytest

from minunet.models import unet as model_module
from minunet.models.unet import UNet, UNetConfig, build_model
from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


def test_format_is_atomic_and_pickle_free(tmp_path):
    p = tmp_path / "c.npz"
    save_checkpoint(p, {"a.weight": np.ones(3)}, {"velocity.a.weight": np.zeros(3)}, 7,
                    {"x": 1}, {"seed": 0}, buffers={"a.mean": np.full(2, 5.0)})
    c = load_checkpoint(p)
    assert c.iteration == 7 and c.config == {"x": 1} and c.rng == {"seed": 0}
    assert c.arch == "unet" and list(c.params) == ["a.weight"]
    assert list(c.velocity) == ["velocity.a.weight"] and list(c.buffers) == ["a.mean"]
    assert sorted(c.state()) == ["a.mean", "a.weight"]
    with np.load(p, allow_pickle=False) as z:
        assert set(z.files) == {"a.weight", "buffer.a.mean", "velocity.a.weight", "arch",
                                "config", "iteration", "rng"}
    assert os.listdir(tmp_path) == ["c.npz"]


@pytest.mark.parametrize("content", [b"not a zip", b"\x93NUMPY", b"PK\x03\x04 torn"])
def test_a_file_that_is_no_npz_is_named_without_advice_to_unpickle(tmp_path, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_checkpoint(bad)
    assert f"{bad} is not a minunet checkpoint" in str(err.value)
    assert "pickle" not in str(err.value).lower()


def test_an_npz_of_something_else_is_refused(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="lacks config, iteration, rng: not a minunet"):
        load_checkpoint(tmp_path / "other.npz")
    np.savez(tmp_path / "objects.npz", config=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "objects.npz")
    assert "not a minunet checkpoint" in str(err.value) and "pickle" not in str(err.value)


def test_the_model_is_rebuilt_with_its_ops_arch_and_parameters(tmp_path):
    m = build_model(UNetConfig(base=2, ops="plain"), seed=4)
    save_checkpoint(tmp_path / "m.npz", m.state_dict(), {}, 0, {"model": asdict(m.config)}, {},
                    arch=m.arch)
    again = model_from_checkpoint(load_checkpoint(tmp_path / "m.npz"), tmp_path / "m.npz")
    assert again.config == m.config and again.config.ops == "plain"
    for k, v in m.params.items():
        np.testing.assert_array_equal(again.params[k], v, err_msg=k)


def test_old_checkpoints_without_arch_or_ops_load_as_the_fast_unet(tmp_path):
    m = UNet(UNetConfig(base=2), seed=1)
    old = {k: v for k, v in asdict(m.config).items() if k not in ("arch", "ops")}
    path = tmp_path / "old.npz"
    np.savez(path, **m.state_dict(), config=np.array(json.dumps({"model": old})),
             iteration=np.array("0"), rng=np.array("{}"))  # as written before issue 10
    c = load_checkpoint(path)
    assert c.arch == "unet" and c.buffers == {}
    again = model_from_checkpoint(c, path)
    assert again.arch == "unet" and again.config.ops == "fast"


class BufferedUNet(UNet):
    arch = "buffered_unet"

    def __init__(self, config=None, seed=0):
        super().__init__(config, seed)
        self.buffers["bn.running_mean"] = np.zeros(3, config.dtype)


def test_architecture_and_buffers_come_back(tmp_path, monkeypatch):
    monkeypatch.setitem(model_module.ARCHITECTURES, "buffered_unet", BufferedUNet)
    m = build_model(UNetConfig(base=2, arch="buffered_unet"))
    m.buffers["bn.running_mean"][:] = [1, 2, 3]
    state = m.state_dict()
    buffers = {k: state.pop(k) for k in m.buffers}
    save_checkpoint(tmp_path / "b.npz", state, {}, 0, {"model": asdict(m.config)}, {},
                    buffers=buffers, arch=m.arch)
    again = model_from_checkpoint(load_checkpoint(tmp_path / "b.npz"), "b.npz")
    assert isinstance(again, BufferedUNet)
    np.testing.assert_array_equal(again.buffers["bn.running_mean"], [1, 2, 3])


def test_an_unknown_architecture_names_the_known_ones(tmp_path):
    m = UNet(UNetConfig(base=2))
    config = {"model": {**asdict(m.config), "arch": "transunet"}}
    save_checkpoint(tmp_path / "t.npz", m.state_dict(), {}, 0, config, {}, arch="transunet")
    with pytest.raises(ValueError,
                       match=r"t\.npz: unknown architecture 'transunet'; known: .*unet"):
        model_from_checkpoint(load_checkpoint(tmp_path / "t.npz"), tmp_path / "t.npz")


def test_a_checkpoint_written_before_the_house_move_still_loads_and_predicts_the_same():
    """tests/data/checkpoint_pre_house_base2.npz was written by `python -m minunet.train` (base 2,
    2 iterations) before issue 31 moved the house; its logits on a fixed input were saved
    beside it by that code. Today's code rebuilds the same model from it (the registry, the
    legacy config: no `loss` then) and computes the same logits."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    path = data / "checkpoint_pre_house_base2.npz"
    ckpt = load_checkpoint(path)
    assert ckpt.arch == "unet" and "loss" not in ckpt.config["model"]
    model = model_from_checkpoint(ckpt, path).eval()
    assert type(model).__name__ == "UNet" and model.config.base == 2
    assert model.config.loss == "softmax_cross_entropy"
    with np.load(data / "checkpoint_pre_house_base2_logits.npz") as ref:
        np.testing.assert_allclose(model.forward(ref["x"]), ref["logits"], rtol=1e-5, atol=1e-6)
