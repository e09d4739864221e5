"""The whole U-Net and a short training run agree on the CPU and the GPU, and a training step
never copies between host and device nor waits for the device (needs a GPU)."""

import re

import numpy as np
import pytest

from minunet import backend, ops
from minunet.models.sizes import output_size
from minunet.models.unet import UNet, UNetConfig, build_model
from minunet.nn.optim import MomentumSGD, SGDConfig
from minunet.train import TrainConfig, Trainer, step_key, train_step

pytestmark = pytest.mark.gpu


def _loss_and_grads(m, x, labels, weights):
    logits = m.forward(x, dropout_key=5)
    loss, cache = ops.softmax_cross_entropy_forward(logits, labels, weights)
    m.zero_grad()
    m.backward(ops.softmax_cross_entropy_backward(1.0, cache))
    return (backend.to_host(logits), float(loss),
            {k: backend.to_host(v) for k, v in m.grads.items()})


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-4)])
def test_whole_network_cpu_and_gpu_agree(dtype, tol):
    """Logits, loss and every gradient: float64 to 1e-10, float32 by norm per tensor to 1e-4."""
    rng = np.random.default_rng(0)
    cfg = UNetConfig(base=4, dtype=dtype)
    x = rng.standard_normal((2, 1, 204, 220)).astype(dtype)
    labels = rng.integers(0, 2, (2, 20, 36))
    weights = (rng.random((2, 20, 36)) + 0.5).astype(dtype)
    cpu = _loss_and_grads(UNet(cfg, seed=1), x, labels, weights)
    gpu_model = UNet(cfg, seed=1).to("cuda")
    gpu = _loss_and_grads(gpu_model, backend.to_device(x), backend.to_device(labels),
                          backend.to_device(weights))

    def rel(a, b):
        return np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)

    assert rel(cpu[0], gpu[0]) <= tol
    assert abs(cpu[1] - gpu[1]) <= tol * abs(cpu[1])
    for k in cpu[2]:
        assert rel(cpu[2][k], gpu[2][k]) <= tol, k


def test_short_training_run_gives_the_same_loss_curve(tmp_path):
    """20 iterations of the tiny preset on each device: the losses agree within float32 noise."""
    curves = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(base=4, depth=4, tile=188, iters=20, lr=0.001, val_every=20,
                          prefetch=0, device=device, data="synthetic:n=3,size=200",
                          out=str(tmp_path / device))
        t = Trainer(cfg, quiet=True)
        losses = []
        for _ in range(cfg.iters):
            losses.append(float(t.step()[0]))
            t.it += 1
        t.sampler.close()
        curves[device] = np.array(losses)
    np.testing.assert_allclose(curves["cuda"], curves["cpu"], rtol=1e-3)


# --- no host<->device copy and no synchronisation inside a training step (issue 17) ---------
#
# A training step on the GPU must never wait for the host: the loss stays a device scalar
# (train.py reads it every 10 steps), the learning rate and the dropout key are Python
# numbers passed as kernel arguments, the SGD pointer tables are built once. Two witnesses:
#   1. CuPy's Python-level doors to the host, counted while a step runs (every call from
#      minunet's code goes through one of them; calls inside CuPy's compiled code do not,
#      e.g. Device.synchronize, whose class cannot be patched);
#   2. the CUDA profiler (CUPTI, through torch.profiler when torch with CUDA is there),
#      which sees every copy the device makes, whoever asked for it.
# Both are first shown to see a copy and a synchronisation made on purpose.


def _small_training_setup(ops: str):
    """A small U-Net (base 4, depth 4) on the GPU, its optimiser and one 220x220 tile,
    after one warm-up step (kernel compilation, the memory pool, the SGD pointer tables)."""
    rng = np.random.default_rng(4)
    model = build_model(UNetConfig(base=4, ops=ops), seed=0).to("cuda").train()
    opt = MomentumSGD(model.params, SGDConfig(lr=1e-3, momentum=0.99, warmup=10))
    size = 220
    out = output_size(size)  # 36
    x = backend.to_device(rng.standard_normal((1, 1, size, size)).astype(np.float32))
    labels = backend.to_device(rng.integers(0, 2, (1, out, out)))
    weights = backend.to_device((rng.random((1, out, out)) + 0.5).astype(np.float32))

    def step(it: int):
        return train_step(model, opt, x, labels, weights, it, step_key(0, it))

    step(0)
    backend._cupy().cuda.get_current_stream().synchronize()
    return step


class _HostDoors:
    """Counts calls of CuPy's Python-level host<->device copies and synchronisations while
    `self.counting` is true. Patches with pytest's monkeypatch (undone after the test)."""

    def __init__(self, cp, monkeypatch):
        self.calls: list[str] = []
        self.counting = False
        self.patched: set[str] = set()
        nd, rt = cp.ndarray, cp.cuda.runtime
        for name in ("get", "__array__", "item", "tolist", "__float__", "__int__",
                     "__index__", "__bool__", "__complex__", "__repr__", "__str__"):
            self._count(monkeypatch, nd, "ndarray", name, "device->host")
        self._count(monkeypatch, nd, "ndarray", "set", "host->device")
        self._count(monkeypatch, cp, "cupy", "asnumpy", "device->host")

        def from_host(args, kwargs):  # cupy.asarray(x) copies unless x is on the device
            a = args[0] if args else kwargs.get("a", kwargs.get("obj"))
            return not isinstance(a, cp.ndarray)

        for name in ("asarray", "array", "asanyarray", "ascontiguousarray"):
            self._count(monkeypatch, cp, "cupy", name, "host->device", when=from_host)
        for owner in (cp.cuda.Stream, cp.cuda.Event, cp.cuda.Device):
            self._count(monkeypatch, owner, owner.__name__, "synchronize", "synchronisation")
        for name in ("deviceSynchronize", "streamSynchronize", "eventSynchronize"):
            self._count(monkeypatch, rt, "runtime", name, "synchronisation")

        # runtime.memcpy(dst, src, size, kind[, stream]), memcpy2D(dst, dpitch, src, spitch,
        # width, height, kind[, stream]): every kind but device-to-device
        for name, at in (("memcpy", 3), ("memcpyAsync", 3), ("memcpy2D", 6),
                         ("memcpy2DAsync", 6)):
            self._count(monkeypatch, rt, "runtime", name, "copy",
                        when=lambda args, kwargs, at=at: not (
                            len(args) > at and args[at] == rt.memcpyDeviceToDevice))

    def _count(self, monkeypatch, owner, label, name, kind, when=None):
        original = getattr(owner, name, None)
        if original is None:  # not in this CuPy version
            return
        doors = self

        def counted(*args, **kwargs):
            if doors.counting and (when is None or when(args, kwargs)):
                doors.calls.append(f"{kind}: {label}.{name} called from {_caller()}")
            return original(*args, **kwargs)

        try:
            monkeypatch.setattr(owner, name, counted)
        except (TypeError, AttributeError):  # a compiled (cdef) class: cannot be patched
            return
        self.patched.add(f"{label}.{name}")


def _caller() -> str:
    """The innermost minunet frame of the current stack (file:line function)."""
    import traceback

    frames = [f for f in traceback.extract_stack() if "/minunet/" in f.filename.replace("\\", "/")]
    if not frames:
        return "outside minunet"
    f = frames[-1]
    return f"{f.filename.rsplit('/minunet/', 1)[-1]}:{f.lineno} {f.name}"


def test_the_host_door_counter_sees_copies_and_synchronisations(monkeypatch):
    """The counter of the next test can fail: each door used on purpose is counted, and
    what stays on the device is not."""
    cp = backend._cupy()
    doors = _HostDoors(cp, monkeypatch)
    assert {"ndarray.get", "ndarray.__float__", "cupy.asnumpy", "cupy.asarray",
            "Stream.synchronize", "runtime.deviceSynchronize"} <= doors.patched
    x = cp.arange(4, dtype=cp.float32)

    def kinds_of(fn):
        doors.calls.clear()
        doors.counting = True
        try:
            fn()
        finally:
            doors.counting = False
        return {c.split(":")[0] for c in doors.calls}

    assert kinds_of(lambda: cp.asarray(x) + 1) == set()  # on the device: no copy, no wait
    assert kinds_of(lambda: x.get()) == {"device->host"}
    assert kinds_of(lambda: float(x[1])) == {"device->host"}
    assert "host->device" in kinds_of(lambda: cp.asarray(np.ones(3)))
    assert kinds_of(lambda: cp.cuda.runtime.deviceSynchronize()) == {"synchronisation"}
    assert "synchronisation" in kinds_of(lambda: cp.cuda.Stream.null.synchronize())


@pytest.mark.parametrize("ops", ["fast", "plain"])
def test_a_training_step_makes_no_host_copy_and_no_synchronisation(ops, monkeypatch):
    """train.train_step after a warm-up step: forward with dropout, the weighted softmax
    cross-entropy, zero_grad, backward, the momentum-SGD update; no call of a door."""
    step = _small_training_setup(ops)
    doors = _HostDoors(backend._cupy(), monkeypatch)
    doors.counting = True
    try:
        loss, grad_norm = step(1)
    finally:
        doors.counting = False
    monkeypatch.undo()
    assert doors.calls == [], "\n".join(doors.calls)
    assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm))


def _cuda_trace(fn, path):
    """Run fn() under torch.profiler (CPU and CUDA activity) inside a user range named
    'minunet.step'; returns (the trace's events, (start, end) of that range in us)."""
    import json

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    cp = backend._cupy()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("minunet.step"):
            fn()
        cp.cuda.Device().synchronize()  # outside the range: the step's work is complete
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(path))
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]
    ranges = [e for e in events if e.get("name") == "minunet.step"
              and e.get("cat") == "user_annotation"]
    if not ranges:
        return events, None
    return events, (float(ranges[0]["ts"]), float(ranges[0]["ts"]) + float(ranges[0]["dur"]))


def _host_copies(events):
    """Device copies between host and device ('Memcpy HtoD (Pageable -> Device)', ...)."""
    return [e["name"] for e in events if re.match(r"Memcpy (HtoD|DtoH)", e.get("name", ""))]


def _synchronisations(events, window):
    """CUDA runtime and driver calls that wait for the device, made inside window."""
    lo, hi = window
    return [e["name"] for e in events
            if e.get("cat") in ("cuda_runtime", "cuda_driver")
            and re.search(r"Synchronize|^cudaMemcpy$|^cuMemcpy[DH]to[DH]$", e.get("name", ""))
            and lo <= float(e["ts"]) <= hi]


def _profiler_or_skip():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA: no CUDA profiler to watch the step with")


def test_the_cuda_profiler_sees_no_host_copy_in_a_training_step(tmp_path):
    """Every Memcpy HtoD / DtoH the device runs during a step (after a warm-up step),
    whoever issued it: CuPy's compiled code, cuBLAS, our kernels' launchers."""
    _profiler_or_skip()
    cp = backend._cupy()
    x = cp.arange(1000, dtype=cp.float32)
    control, _ = _cuda_trace(lambda: x.get(), tmp_path / "control.json")
    if not _host_copies(control):
        pytest.skip("torch.profiler does not see CuPy's copies on this machine")
    step = _small_training_setup("fast")
    events, _ = _cuda_trace(lambda: step(1), tmp_path / "step.json")
    assert any(e.get("cat") == "kernel" for e in events), "the profiler saw no kernel"
    assert _host_copies(events) == []


def test_the_cuda_profiler_sees_no_synchronisation_in_a_training_step(tmp_path):
    """CUDA runtime/driver calls that wait for the device (stream, event, device
    synchronize, synchronous memcpy) made while the step's Python code runs."""
    _profiler_or_skip()
    cp = backend._cupy()
    control, window = _cuda_trace(lambda: cp.cuda.get_current_stream().synchronize(),
                                  tmp_path / "control.json")
    if window is None or not _synchronisations(control, window):
        pytest.skip("torch.profiler does not see CuPy's synchronisations on this machine")
    step = _small_training_setup("fast")
    events, window = _cuda_trace(lambda: step(1), tmp_path / "step.json")
    assert _synchronisations(events, window) == []
