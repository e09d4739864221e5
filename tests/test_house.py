"""The house (issue 31): a new architecture is one module, and the package's imports run one
way.

A toy network (tests/toy_arch.py: a two-level U-Net with a residual block, padded convolutions)
is registered by importing its module, and then, with nothing else in the package edited for
it, trains from the command line (--arch, --model), predicts, describes itself, exports to ONNX
(onnxruntime agrees with minunet) and passes the whole-network float64 gradient check.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from minunet.models import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minunet"
# the commands (argument parsing plus calls); no library module may import one
COMMANDS = {"minunet.train", "minunet.predict", "minunet.evaluate", "minunet.export",
            "minunet.bench", "minunet.curve", "minunet.instances", "minunet.gradcheck",
            "minunet.compare",
            "minunet.coursework.cli", "minunet.coursework.__main__", "minunet.data.__main__"}


@pytest.fixture(scope="module")
def toy():
    """The toy architecture, registered for this module's tests and taken out afterwards."""
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        module = importlib.import_module("toy_arch")
        yield module
    finally:
        registry.ARCHITECTURES.pop("toy_resunet", None)
        sys.modules.pop("toy_arch", None)
        sys.path.remove(str(Path(__file__).parent))


def test_the_toy_registers_and_describes_itself(toy):
    assert "toy_resunet" in registry.names()
    config = registry.config_for("toy_resunet", {"width": 3})
    assert isinstance(config, toy.ToyConfig) and registry.geometry(config).margin == 0
    text = registry.describe(config, 32)
    for name in ("enc", "enc.pool", "res.conv0", "res.conv1", "up.upconv", "dec", "final"):
        assert f"\n{name} " in text, text
    model = registry.build_model(config)
    total = text.splitlines()[-2].split()
    assert int(total[1].replace(",", "")) == model.num_parameters()
    with pytest.raises(ValueError, match="has no option depthh"):
        registry.config_for("toy_resunet", {"depthh": 3})


@pytest.mark.parametrize("door", ["plain", "fast"])
def test_the_toy_passes_the_whole_network_gradient_check(toy, door):
    from minunet.nn.gradcheck import model_gradcheck

    model = registry.build_model(toy.ToyConfig(dtype="float64", ops=door), seed=1)
    rng = np.random.default_rng(0)
    for k in model.params:  # non-zero biases: no bias gradient is trivially exact
        if k.endswith(".bias"):
            model.params[k] = rng.standard_normal(model.params[k].shape) * 0.1
    x = rng.standard_normal((2, 1, 16, 16))
    labels, weights = rng.integers(0, 2, (2, 16, 16)), rng.random((2, 16, 16)) + 0.5
    results = model_gradcheck(model, x, labels, weights, n_dirs=3, threshold=1e-6)
    assert len(results) == 3 and all(r.passed for r in results), results


@pytest.mark.slow
def test_the_toy_trains_predicts_and_exports_from_the_command_line(toy, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from minunet import export, predict, train
    from minunet.exporters.bioimageio import minunet_probabilities
    from minunet.exporters.onnx import onnx_model, run_onnx
    from minunet.training.checkpoint import load_checkpoint, model_from_checkpoint

    run = tmp_path / "run"
    assert train.main(["--arch", "toy_resunet", "--model", "width=3,residual=true", "--tile",
                       "32", "--iters", "3", "--val-every", "3", "--device", "cpu",
                       "--prefetch", "0", "--data", "synthetic:n=3,size=64",
                       "--out", str(run)]) == 0
    ckpt = load_checkpoint(run / "last.npz")
    assert ckpt.arch == "toy_resunet" and ckpt.config["model"]["width"] == 3
    assert ckpt.iteration == 3 and len(ckpt.log["train_losses"]) == 3
    model = model_from_checkpoint(ckpt, run / "last.npz").eval()
    assert isinstance(model, toy.ToyResUNet) and model.config.residual

    image = (np.random.default_rng(5).random((40, 52)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    assert predict.main(["--checkpoint", str(run / "last.npz"), str(tmp_path / "img.png"),
                         "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    prob = np.asarray(Image.open(tmp_path / "pred" / "prob" / "img.png"))
    assert prob.shape == image.shape and prob.min() < prob.max()

    out = tmp_path / "toy.onnx"
    assert export.main(["--checkpoint", str(run / "last.npz"), "--to", "onnx", "--out",
                        str(out)]) == 0
    x = np.random.default_rng(6).random((2, 1, 24, 36)).astype(np.float32)  # any even size
    got = run_onnx(onnx_model(model), x)
    want = minunet_probabilities(model, x)
    assert got.shape == want.shape == (2, 2, 24, 36)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_the_toy_gets_a_torch_mirror_that_agrees_with_its_forward(toy):
    """The torch mirror is built from the toy's traced forward (nothing written for it): its
    state dict takes the toy's parameters under their own names, and it gives the same logits
    in float64 (and float32) on a size other than the traced one."""
    torch = pytest.importorskip("torch")
    from minunet.exporters import torch_mirror

    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        model = registry.build_model(toy.ToyConfig(dtype=dtype, width=3), seed=2)
        net = torch_mirror.build(model.config).to(getattr(torch, dtype)).eval()
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                             model.params.items()}, strict=True)
        x = np.random.default_rng(3).standard_normal((2, 1, 20, 28)).astype(dtype)
        want = model.forward(x)
        model.release_caches()
        with torch.no_grad():
            got = net(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape == (2, 2, 20, 28)
        assert np.abs(got - want).max() <= tol * np.abs(want).max(), dtype


# --- the imports ---------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The minunet modules a file imports, at the top or inside functions (relative imports
    resolved; `from a import b` counts as a.b when that is a module, else a)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("minunet")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                base = ".".join(up[:len(up) - node.level + 1] + ([base] if base else []))
            if not base.startswith("minunet"):
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").is_file()
                out.add(sub if is_module else base)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_no_library_module_imports_a_command():
    graph = _graph()
    assert COMMANDS <= set(graph), sorted(COMMANDS - set(graph))
    wrong = {m: sorted(deps & COMMANDS) for m, deps in graph.items()
             if m not in COMMANDS and deps & COMMANDS}
    assert not wrong, f"library modules that import a command: {wrong}"


def test_the_package_has_no_import_cycle():
    """Every import, at the top of a module or inside a function, runs one way: the graph of
    minunet's modules has no cycle (a package's __init__ counts as its own module)."""
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph or d == m:
                continue
            if state.get(d) == "open":
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_usage_errors_exit_2_on_every_command(tmp_path, capsys):
    """docs/DESIGN.md, "Exit codes": a bad option, input or checkpoint is a usage error (2,
    as argparse exits), with one "error: ..." line."""
    from minunet import curve, evaluate, export, instances, predict, train

    missing = str(tmp_path / "missing.npz")
    for main, argv in ((predict.main, ["--checkpoint", missing, str(tmp_path), "--out",
                                       str(tmp_path / "o")]),
                       (evaluate.main, [str(tmp_path / "p"), str(tmp_path / "l")]),
                       (export.main, ["--checkpoint", missing, "--to", "onnx", "--out",
                                      str(tmp_path / "m.onnx")])):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and str(e.value).startswith("error: ")
    assert train.main(["--tile", "100", "--device", "cpu"]) == 2
    assert train.main(["--arch", "nonet", "--device", "cpu"]) == 2
    assert instances.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "i")]) == 2
    assert curve.main([str(tmp_path / "norun")]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'nonet'; known: " in err
