"""Benchmark: `python -m minunet.bench` (see --help). Check first, then time.

For one configuration (input size, base, batch, dtype, device) it
  1. checks every twin (Numba on the CPU, CUDA on the GPU) against the plain op of
     minunet/ops on small inputs, and stops if one disagrees;
  2. times the hot loops (im2col, col2im, max-pool, softmax + cross-entropy, SGD)
     at the sizes of the paper network and prints GB/s beside the time, and the share of
     the bandwidth of a plain 256 MiB copy on the same device;
  3. times forward, forward + backward and a whole training step of the U-Net on
     the fast ops (minunet/fast, what training runs) and on the plain ops
     (minunet/ops, the lesson) (median over --rounds x --repeat runs, each after
     --warmup), with GFLOP/s and peak memory, each in a fresh process: the process's
     peak, and the training steps' own (the high-water mark reset after the forward and
     forward + backward timings, on Linux; on the GPU both are the memory pool's);
  4. if PyTorch happens to be importable (never a dependency), times the same
     network in PyTorch in the same run and prints our time / PyTorch's time;
  5. optionally (--data) the tiles per second of the augmentation pipeline.
On the GPU, times come from CUDA events and no host copy happens inside a step.

`--predict` times prediction instead (section 6): megapixels per second of the in-memory
overlap-tile prediction (minunet/inference/tiles.py) and of chunked prediction into zarr
(minunet/inference/chunked.py) of the same generated --image, with the same tile (--size), after
checking that the two agree bit for bit; optionally (--cluster N) chunked on a LocalCluster
of N worker processes; and (--big N) the peak memory (max RSS) of a fresh process that
predicts a lazily generated N x N image chunk by chunk (nothing of the image is held).

`--layers` (CPU) times a training step layer by layer instead (section 7): each layer's
forward and backward inside a real step (a clock around each layer object), its FLOPs and the
bytes it must move at least once, its thread dispatches (`parallel_for` calls) per step, and
the cost of an empty dispatch; beside them PyTorch's same layer, timed alone on inputs of its
shapes (in a fresh process), when torch is importable. It shows which layers lose, and whether
they are compute-, memory- or overhead-bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from minunet import backend
from minunet.models import registry
from minunet.models.sizes import output_size
from minunet.models.unet import UNetConfig, build_model, layer_table, parameter_shapes
from minunet.nn.layers import op_module
from minunet.nn.optim import MomentumSGD, SGDConfig


class Timer:
    """Wall-clock timing on the CPU; CUDA events around the work on the GPU."""

    def __init__(self, xp):
        self.xp = xp

    def __call__(self, fn, repeat: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        if self.xp is np:
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return times
        cp = self.xp
        for _ in range(repeat):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return times


def median(ts):
    return statistics.median(ts)


# --- 1. correctness before timing -------------------------------------------------


def check_fast_paths(xp, dtype) -> list[tuple[str, float]]:
    """Max abs difference of each twin (Numba on the CPU, CUDA on the GPU) from the plain
    op of minunet/ops that it speeds up, on small random inputs."""
    from minunet import ops
    from minunet.ops.pool import MaxPool2x2Cache
    from minunet.ops.softmax import SoftmaxXentCache

    rng = np.random.default_rng(0)

    def arr(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(dtype))

    x = arr(3, 11, 13)  # (C, H, W); output rows 0..8 of a 3x3 conv use input rows 0..10
    cols = xp.empty((27, 9 * 11), dtype=dtype)
    res = [("im2col", _maxdiff(backend.im2col(x, 3, 0, 9, cols), ops.im2col(x[None], 3)))]
    c = arr(27, 9 * 11)
    res.append(("col2im", _maxdiff(backend.col2im(c, 3, 0, 9, xp.zeros_like(x)),
                                   ops.col2im(c, (1, *x.shape), 3)[0])))
    p = xp.asarray(rng.permutation(2 * 3 * 8 * 10).reshape(2, 3, 8, 10).astype(dtype))
    o1, a1 = backend.maxpool2x2_forward(p)
    o2, cache = ops.maxpool2x2_forward(p)
    res.append(("maxpool fwd", max(_maxdiff(o1, o2), _maxdiff(a1, cache.arg))))
    d = arr(2, 3, 4, 5)
    res.append(("maxpool bwd", _maxdiff(backend.maxpool2x2_backward(d, a1),
                                        ops.maxpool2x2_backward(d, MaxPool2x2Cache(a1)))))
    logits = arr(2, 3, 6, 7) * 5
    labels = xp.asarray(rng.integers(0, 3, (2, 6, 7)))
    w = xp.asarray(rng.random((2, 6, 7)).astype(dtype))
    l1, p1 = backend.softmax_xent_forward(logits, labels, w)  # the sum over pixels
    l2, cache = ops.softmax_cross_entropy_forward(logits, labels, w)  # the mean
    l2 = float(l2) * logits[:, 0].size
    res.append(("softmax-xent fwd", max(_maxdiff(l1, l2) / max(1.0, abs(l2)),
                                        _maxdiff(p1, cache.probs))))
    res.append(("softmax-xent bwd", _maxdiff(
        backend.softmax_xent_backward(p1, labels, w, 0.1),
        ops.softmax_cross_entropy_backward(1.0, SoftmaxXentCache(p1, labels, w, 0.1)))))
    wt, v, g = arr(1000), arr(1000), arr(1000)
    w_ref, v_ref = wt.copy(), v.copy()
    backend.sgd_update(wt, v, g, 0.01, 0.99, 1e-4)
    v_ref = 0.99 * v_ref - 0.01 * (g + 1e-4 * w_ref)  # minunet/nn/optim.py, Caffe convention
    res.append(("sgd update", max(_maxdiff(wt, w_ref + v_ref), _maxdiff(v, v_ref))))
    return res


def _maxdiff(a, b) -> float:
    return float(np.max(np.abs(backend.to_host(a).astype(np.float64)
                               - backend.to_host(b).astype(np.float64))))


# --- 2. the hot loops at paper sizes ------------------------------------------------


COPY_BYTES = 256 << 20  # the reference copy: larger than the H200's 50 MB L2 and CPU caches
COPY = "copy 256 MiB (reference)"


def _copy_seconds(xp, dtype, timer, repeat, warmup) -> float:
    """Median time of one copy of COPY_BYTES on the device (freed on return)."""
    n = COPY_BYTES // np.dtype(dtype).itemsize
    src, dst = xp.ones(n, dtype), xp.empty(n, dtype)
    return median(timer(lambda: xp.copyto(dst, src), repeat, warmup))


def bench_ops(xp, dtype, timer, repeat, warmup, size=572, base=64) -> list[tuple]:
    """(name, seconds, bytes moved) per hot loop, at the paper network's biggest sizes. The
    first row is a plain copy of COPY_BYTES, more than any cache holds: the memory bandwidth
    the others are measured against (read + write, as a device-to-device copy counts it)."""
    rng = np.random.default_rng(0)
    item = np.dtype(dtype).itemsize
    s = size - 2  # after the first conv: (base, s, s) feeds the second 3x3 conv
    x = xp.asarray(rng.standard_normal((base, s, s)).astype(dtype))
    rows = max(1, min(s - 2, backend.chunk_bytes(xp) // (base * 9 * (s - 2) * item)))
    cols = xp.empty((base * 9, rows * (s - 2)), dtype=dtype)
    nbytes = 2 * cols.size * item  # read ~ the same, write the columns
    out = [(COPY, _copy_seconds(xp, dtype, timer, repeat, warmup), 2 * COPY_BYTES)]
    out.append(("im2col (one workspace chunk)", median(timer(
        lambda: backend.im2col(x, 3, 0, rows, cols), repeat, warmup)), nbytes))
    dx = xp.zeros_like(x)
    out.append(("col2im (one workspace chunk)", median(timer(
        lambda: backend.col2im(cols, 3, 0, rows, dx), repeat, warmup)),
        cols.size * item + 2 * 9 * base * rows * (s - 2) * item))  # read cols, 9 x read+write dx
    p = xp.asarray(rng.standard_normal((1, base, s - 2, s - 2)).astype(dtype))
    o, a = backend.maxpool2x2_forward(p)
    out.append(("maxpool fwd", median(timer(lambda: backend.maxpool2x2_forward(p), repeat,
                                            warmup)), p.size * item * 1.25 + o.size))
    out.append(("maxpool bwd", median(timer(lambda: backend.maxpool2x2_backward(o, a), repeat,
                                            warmup)), p.size * item * 1.25 + o.size))
    n = output_size(size)
    logits = xp.asarray(rng.standard_normal((1, 2, n, n)).astype(dtype))
    labels = xp.asarray(rng.integers(0, 2, (1, n, n)))
    w = xp.asarray(rng.random((1, n, n)).astype(dtype))
    _, probs = backend.softmax_xent_forward(logits, labels, w)
    px = n * n * (2 * 2 * item + 8 + item)
    out.append(("softmax-xent fwd", median(timer(
        lambda: backend.softmax_xent_forward(logits, labels, w), repeat, warmup)), px))
    out.append(("softmax-xent bwd", median(timer(
        lambda: backend.softmax_xent_backward(probs, labels, w, 1.0), repeat, warmup)), px))
    m = build_model(UNetConfig(base=base, dtype=np.dtype(dtype).name))
    m.to("cpu" if xp is np else "cuda")
    opt = MomentumSGD(m.params, SGDConfig())
    nparam = m.num_parameters()
    out.append(("sgd update (all parameters)", median(timer(
        lambda: opt.step(m.grads, 0), repeat, warmup)), 5 * nparam * item))
    return out


# --- 2b. the U-Net family's fast ops against their plain ops -------------------------------


def family_cases(xp, dtype, size=572, base=64):
    """(name, module name, op name, make inputs -> (args, kwargs)) of the family's hot loops,
    at sizes of the padded networks' first level (a size x size tile, base channels)."""
    rng = np.random.default_rng(0)
    s = max(8, size - 2)

    def arr(*shape, scale=1.0):
        return xp.asarray((rng.standard_normal(shape) * scale).astype(dtype))

    C = base
    x, x2, x8 = arr(1, C, s, s), arr(1, C, s // 2, s // 2), arr(1, C, s // 8, s // 8)
    w3, wd3, wd5 = arr(C, C, 3, 3, scale=0.1), arr(C, 1, 3, 3), arr(C, 1, 5, 5)
    b = arr(C)
    bufs = (xp.zeros(C, dtype), xp.ones(C, dtype), xp.asarray(np.array([1], np.int64)))
    return [
        ("batchnorm2d (training)", "norm", "batchnorm2d", (x, arr(C), b, *bufs), {}),
        ("bilinear x2", "resample", "bilinear_upsample", (x2,), dict(factor=2)),
        ("bilinear x8 (align)", "resample", "bilinear_upsample", (x8,),
         dict(factor=8, align_corners=True)),
        ("depthwise 3x3 same", "conv_general", "conv2d_general", (x, wd3, b),
         dict(padding=1, groups=C)),
        ("depthwise 5x5 s2", "conv_general", "conv2d_general", (x, wd5, b),
         dict(stride=2, padding=2, groups=C)),
        ("conv 3x3 same", "conv_general", "conv2d_general", (x2, w3, b), dict(padding=1)),
        ("conv 3x3 s2 p1", "conv_general", "conv2d_general", (x2, w3, b),
         dict(stride=2, padding=1)),
    ]


def bench_family(xp, dtype, timer, repeat, warmup, size=572, base=64):
    """(name, max relative difference fast vs plain, fast s, plain s) per family op, forward +
    backward; the difference is checked first (the caller refuses to time a mismatch)."""
    import importlib

    rows = []
    rng = np.random.default_rng(1)
    for name, mod, op, args, kw in family_cases(xp, dtype, size, base):
        fns = {door: (getattr(m, op + "_forward"), getattr(m, op + "_backward"))
               for door, m in (("fast", importlib.import_module(f"minunet.fast.{mod}")),
                               ("plain", importlib.import_module(f"minunet.ops.{mod}")))}
        results, dout = {}, None
        for door, (fwd, bwd) in fns.items():
            out, cache = fwd(*args, **kw)
            if dout is None:  # a random upstream gradient (dout = out would cancel in BN's dx)
                dout = xp.asarray(rng.standard_normal(out.shape).astype(dtype))
            grads = bwd(dout, cache)
            results[door] = [out, *(g for g in (grads if isinstance(grads, tuple) else (grads,))
                                   if g is not None)]
        err = max(_maxdiff(a, b) / max(_maxdiff(b, 0 * b), 1e-30)
                  for a, b in zip(results["fast"], results["plain"], strict=True))

        def step(fwd, bwd, args=args, kw=kw, dout=dout):
            _, cache = fwd(*args, **kw)
            bwd(dout, cache)

        t = {door: median(timer(lambda f=f: step(*f), repeat, warmup)) for door, f in fns.items()}
        rows.append((name, err, t["fast"], t["plain"]))
    return rows


# --- 3. the network ---------------------------------------------------------------------


def bench_model(cfg: UNetConfig, size, batch, device, timer, repeat, warmup) -> dict:
    m = build_model(cfg).to(device)  # in training mode: dropout on, as in a real step
    xp = m.xp
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((batch, cfg.in_channels, size, size)).astype(cfg.dtype))
    n = registry.geometry(cfg).output_size(size)
    labels = xp.asarray(rng.integers(0, cfg.n_classes, (batch, n, n)))
    weights = xp.ones((batch, n, n), dtype=cfg.dtype)
    opt = MomentumSGD(m.params, SGDConfig(lr=1e-6))

    def fwd():
        return m.forward(x, dropout_key=1)

    def fwd_bwd():  # the model's own loss, on the same door as the network
        logits = m.forward(x, dropout_key=1)
        loss, cache = m.loss_forward(logits, labels, weights)
        m.zero_grad()
        m.backward(m.loss_backward(cache))

    def step():
        fwd_bwd()
        opt.step(m.grads, 0)

    res = {}
    for name, fn in (("forward", fwd), ("forward+backward", fwd_bwd), ("training step", step)):
        if name == "training step":
            res["peak_mb"] = _peak_mb(xp)  # the process's, so far
            if xp is np:
                backend.reset_peak_rss()  # from here the steps' own peak (Linux)
        res[name] = timer(fn, repeat, warmup)  # all the times; the parent takes the median
    res["peak_mb"] = max(res["peak_mb"], _peak_mb(xp))
    res["step_peak_mb"] = _peak_mb(xp)
    return res


def _peak_mb(xp) -> float:
    if xp is np:
        return backend.peak_rss_mb()  # this process's own pages (not its parent's)
    return xp.get_default_memory_pool().total_bytes() / 2**20


def net_config(a, ops: str = "fast"):
    """The network of section 3: the U-Net (--base, --depth) or --arch with --model options
    (and --base/--depth where its config has them), at --dtype on the `ops` door."""
    if a.arch == "unet" and not a.model:
        return UNetConfig(base=a.base, depth=a.depth, dtype=a.dtype, ops=ops)
    from dataclasses import fields

    from minunet.training.config import parse_model_options

    cls = registry.get(a.arch).config_class
    known = {f.name for f in fields(cls)}
    shared = {k: getattr(a, k) for k in ("base", "depth") if k in known and k in a.explicit}
    return registry.config_for(a.arch, {**shared, **parse_model_options(a.model, cls),
                                        "dtype": a.dtype, "ops": ops})


def _in_subprocess(which: str, a, device: str) -> dict | None:
    """Run one network benchmark in a fresh process (so peak memory is its own) -> dict."""
    import json
    import subprocess

    if which in ("torch", "torch_layers"):
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return None
    sizes = [f"--{k}={getattr(a, k)}" for k in ("base", "depth")
             if k in a.explicit or a.arch == "unet"]
    argv = [sys.executable, "-m", "minunet.bench", "--_worker", which, "--device", device,
            "--size", str(a.size), *sizes,
            "--batch", str(a.batch), "--dtype", a.dtype, "--repeat", str(a.repeat),
            "--warmup", str(a.warmup), "--rounds", str(a.rounds), "--arch", a.arch,
            "--model", a.model] + (["--tf32"] if a.tf32 else [])
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"   {which} benchmark failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def _alternate(a, device: str) -> dict:
    """Run the network benchmarks in turn (ours on the fast ops, ours on the plain ops, and
    PyTorch's), --rounds times, and pool the times: {which: {name: median seconds}}.

    The machines we measure on are shared: slow spells come and go for seconds. Taking
    turns exposes every implementation to the same spells; the medians are over all
    repeats of all rounds.
    """
    names = ("forward", "forward+backward", "training step")
    order = ["fast", "plain"] if a.ops == "both" else [a.ops]
    order += [] if a.no_torch else ["torch"]
    runs = {which: [] for which in order}
    for _ in range(a.rounds):
        for which in order:
            r = _in_subprocess(which, a, device)
            if r is not None:
                runs[which].append(r)
    pooled = {}
    for which, rs in runs.items():
        if rs:
            pooled[which] = {n: median([t for r in rs for t in r[n]]) for n in names}
            for peak in ("peak_mb", "step_peak_mb"):
                pooled[which][peak] = max(r[peak] for r in rs)
    return pooled


def _worker(which: str, a, device: str) -> int:
    """Child process of _in_subprocess: print one JSON line of timings."""
    import json

    if which == "torch_layers":
        cfg = UNetConfig(base=a.base, depth=a.depth, dtype=a.dtype)
        res = bench_layers_torch(cfg, a.size, a.batch, a.rounds * a.repeat, max(1, a.warmup))
    elif which == "torch":
        from minunet.exporters import torch_mirror as torch_ref

        cfg = net_config(a)
        res = torch_ref.bench(cfg, a.size, a.batch, device, a.repeat, a.warmup, a.tf32)
    else:
        cfg = net_config(a, ops=which)
        xp = np if device == "cpu" else backend._cupy()
        res = bench_model(cfg, a.size, a.batch, device, Timer(xp), a.repeat, a.warmup)
    print(json.dumps(res))
    return 0


def _ratios(times: dict) -> dict:
    """The ratio columns of the network table: {header: (numerator, denominator)}."""
    pairs = {"fast/torch": ("fast", "torch"), "plain/torch": ("plain", "torch"),
             "plain/fast": ("plain", "fast")}
    return {h: p for h, p in pairs.items() if p[0] in times and p[1] in times}


# --- 6. prediction: in memory vs chunked into zarr (--predict) ---------------------------


class GeneratedImage:
    """An 8-bit gray image of any size whose pixels are made when it is sliced (nothing is
    held, so a 20000 x 20000 one costs no memory): smooth membranes-like waves plus hashed
    noise. Picklable: worker processes make their own pixels."""

    def __init__(self, height: int, width: int):
        self.shape, self.dtype, self.ndim = (height, width), np.dtype(np.uint8), 2

    def __repr__(self) -> str:
        return f"GeneratedImage({self.shape[0]}, {self.shape[1]})"

    def __getitem__(self, index):
        ys, xs = index
        y = np.arange(*ys.indices(self.shape[0]))[:, None]
        x = np.arange(*xs.indices(self.shape[1]))[None, :]
        yf, xf = y.astype(np.float32), x.astype(np.float32)
        v = 128 + 50 * np.sin(xf / 37 + yf / 53) * np.cos(yf / 29 - xf / 71) \
            + 30 * np.sin((xf + 2 * yf) / 11)
        noise = ((y * 73856093) ^ (x * 19349663)) & 63  # a hash of the position
        return np.clip(v + noise - 32, 0, 255).astype(np.uint8)


def bench_predict(a, device: str) -> int:
    """Section 6 (module doc)."""
    import tempfile
    from pathlib import Path

    from minunet.inference import chunked
    from minunet.inference.outputs import to_channels
    from minunet.inference.tiles import predict

    cfg = UNetConfig(base=a.base, depth=a.depth, dtype=a.dtype)
    model = build_model(cfg).eval().to(device)
    img = GeneratedImage(a.image, a.image)
    x = to_channels(img[0 : a.image, 0 : a.image], cfg.in_channels, "image", "max")
    mp = a.image * a.image / 1e6
    print(f"\n6. prediction of a {a.image} x {a.image} image ({mp:.1f} MP), U-Net base "
          f"{a.base}, {a.dtype}, tile {a.size}, tta 1")
    with tempfile.TemporaryDirectory() as tmp:
        n = 0

        def chunked_run(**kw):
            nonlocal n
            n += 1
            out = Path(tmp) / f"run{n}.zarr"
            s = chunked.predict_zarr(model, img, out, tile=a.size, progress=False, **kw)
            return s, out

        p_mem = backend.to_host(predict(model, x, tile=a.size))  # also warms up
        s, out = chunked_run()
        import zarr

        equal = bool((zarr.open_group(str(out), mode="r")["prob"][...] == p_mem[1]).all())
        print(f"   chunks {s.chunk[0]} x {s.chunk[1]} ({s.chunks}); chunked == in memory, "
              f"bit for bit: {'yes' if equal else 'NO (MISMATCH)'}")
        if not equal:
            return 1
        times = {"in memory": [], "chunked, threads": []}
        for _ in range(a.rounds):  # alternate, so both meet the same slow spells
            t0 = time.perf_counter()
            backend.to_host(predict(model, x, tile=a.size))
            times["in memory"].append(time.perf_counter() - t0)
            times["chunked, threads"].append(chunked_run()[0].seconds)
        if a.cluster:
            import distributed

            # the cores shared out: each worker process runs the fast ops on its part
            os.environ.setdefault("MINUNET_CPU_THREADS",
                                  str(max(1, backend.workers(np) // a.cluster)))
            with distributed.LocalCluster(n_workers=a.cluster, threads_per_worker=1,
                                          processes=True, dashboard_address=None) as cluster:
                where = cluster.scheduler_address
                chunked_run(scheduler=where)  # warm-up: imports, compilation
                times[f"chunked, {a.cluster} processes"] = [
                    chunked_run(scheduler=where)[0].seconds for _ in range(a.rounds)]
    base = median(times["in memory"])
    print(f"   {'':<24}{'s':>8}{'MP/s':>8}{'vs in memory':>14}")
    for name, ts in times.items():
        t = median(ts)
        print(f"   {name:<24}{t:8.2f}{mp / t:8.2f}{t / base:13.2f}x")
    if a.cluster:
        print("   (cluster: one LocalCluster for all runs; each run sends the model to every "
              "worker, which builds it once)")
    if a.big:
        r = _predict_big_in_subprocess(a, device)
        if r is None:
            return 1
        print(f"   {a.big} x {a.big} generated ({a.big * a.big / 1e6:.0f} MP) chunked into zarr "
              f"in a fresh process: {r['seconds']:.0f} s, {r['mp_per_s']:.2f} MP/s, chunks "
              f"{r['chunk']}, peak memory {r['peak_mb']:.0f} MB"
              + (f" (GPU pool {r['gpu_mb']:.0f} MB)" if r.get("gpu_mb") else ""))
    return 0


def _predict_big_in_subprocess(a, device: str) -> dict | None:
    import json
    import subprocess

    argv = [sys.executable, "-m", "minunet.bench", "--_predict_big", "--device", device,
            "--size", str(a.size), "--base", str(a.base), "--depth", str(a.depth),
            "--dtype", a.dtype, "--big", str(a.big)]
    r = subprocess.run(argv, stdout=subprocess.PIPE, text=True)  # stderr: the progress bar
    if r.returncode != 0:
        print("   the large-image run failed (its error is above)", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def _predict_big(a, device: str) -> int:
    """Child of _predict_big_in_subprocess: one JSON line (seconds, MP/s, peak memory)."""
    import json
    import tempfile

    from minunet.inference import chunked

    model = build_model(UNetConfig(base=a.base, depth=a.depth, dtype=a.dtype)).eval()
    model.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        s = chunked.predict_zarr(model, GeneratedImage(a.big, a.big), f"{tmp}/big.zarr",
                                 tile=a.size)
    res = {"seconds": s.seconds, "mp_per_s": s.mp_per_s, "chunk": f"{s.chunk[0]}x{s.chunk[1]}",
           "peak_mb": backend.peak_rss_mb()}
    if device == "cuda":
        res["gpu_mb"] = model.xp.get_default_memory_pool().total_bytes() / 2**20
    print(json.dumps(res))
    return 0


# --- CLI ----------------------------------------------------------------------------------


# --- 7. per layer, ours beside PyTorch's (--layers) ---------------------------------------


def layer_specs(cfg: UNetConfig, size: int, batch: int) -> list[dict]:
    """The U-Net's layers in forward order, each {name, kind, x (input shape), w (weight shape),
    skip (the skip's shape, concat only), relu}: what one layer of PyTorch is timed on."""
    from minunet.models.unet import channels

    B, specs, skips = batch, [], []
    s, cin = size, cfg.in_channels

    def conv(name, cin, cout, k, s, relu=True):
        specs.append({"name": name, "kind": "conv", "x": (B, cin, s, s), "w": (cout, cin, k, k),
                      "relu": relu})

    for i in range(cfg.depth):
        c = channels(cfg, i)
        conv(f"down{i}.conv0", cin, c, 3, s)
        conv(f"down{i}.conv1", c, c, 3, s - 2)
        if i == cfg.depth - 1:
            specs.append({"name": "drop.enc", "kind": "dropout", "x": (B, c, s - 4, s - 4)})
        skips.append((B, c, s - 4, s - 4))
        specs.append({"name": f"down{i}.pool", "kind": "pool", "x": (B, c, s - 4, s - 4)})
        s, cin = (s - 4) // 2, c
    c = channels(cfg, cfg.depth)
    conv("bottleneck.conv0", cin, c, 3, s)
    conv("bottleneck.conv1", c, c, 3, s - 2)
    s, cin = s - 4, c
    specs.append({"name": "drop.mid", "kind": "dropout", "x": (B, c, s, s)})
    for i in reversed(range(cfg.depth)):
        c = channels(cfg, i)
        specs.append({"name": f"up{i}.upconv", "kind": "upconv", "x": (B, cin, s, s),
                      "w": (cin, c, 2, 2)})
        specs.append({"name": f"up{i}.concat", "kind": "concat", "x": (B, c, 2 * s, 2 * s),
                      "skip": skips[i]})
        conv(f"up{i}.conv0", 2 * c, c, 3, 2 * s)
        conv(f"up{i}.conv1", c, c, 3, 2 * s - 2)
        s, cin = 2 * s - 4, c
    conv("final", cin, cfg.n_classes, 1, s, relu=False)
    specs.append({"name": "loss", "kind": "loss", "x": (B, cfg.n_classes, s, s)})
    specs.append({"name": "sgd", "kind": "sgd"})
    return specs


def dispatch_seconds(n: int = 300) -> tuple[int, float]:
    """(workers, median seconds) of one empty `parallel_for` over one item per worker: what a
    thread dispatch costs before any work is done (hand-off, wake-up, BLAS limit, join)."""
    from minunet.backend import threads

    T = threads.workers()
    items = list(range(T))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        threads.parallel_for(items, lambda item, worker: None)
        ts.append(time.perf_counter() - t0)
    return T, median(ts)


def bench_layers_ours(cfg: UNetConfig, size, batch, repeat, warmup) -> dict:
    """Ours, in the network: each layer's forward and backward time inside a real training
    step (each layer object's forward/backward wrapped with a clock), and how many thread
    dispatches (`parallel_for` calls) each makes. {name: {"fwd": [s], "bwd": [s], "dispatch":
    n per step}, "step": [s]}; "loss" and "sgd" are the loss pair and the optimiser's step."""
    from minunet.backend import threads

    m = build_model(cfg)
    o = op_module(cfg.ops)
    names = {}
    for i in range(cfg.depth):
        names[id(m.pools[i])] = f"down{i}.pool"
        names[id(m.skips[i])] = f"up{i}.concat"
        names[id(m.ups[i])] = f"up{i}.upconv"
    names[id(m.drop_enc)], names[id(m.drop_mid)] = "drop.enc", "drop.mid"
    rec = {"step": []}
    current = [None]
    counting = [False]

    def clocked(fn, name, part):
        def run(*args, **kw):
            current[0] = name
            t0 = time.perf_counter()
            r = fn(*args, **kw)
            if counting[0]:
                rec.setdefault(name, {"fwd": [], "bwd": [], "dispatch": 0})[part].append(
                    time.perf_counter() - t0)
            current[0] = None
            return r
        return run

    for layer in m.layers():
        name = getattr(layer, "name", None) or names[id(layer)]
        layer.forward = clocked(layer.forward, name, "fwd")  # instance attributes shadow
        layer.backward = clocked(layer.backward, name, "bwd")  # the class's methods

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg.in_channels, size, size)).astype(cfg.dtype)
    n = output_size(size, cfg.depth)
    labels = rng.integers(0, cfg.n_classes, (batch, n, n))
    weights = np.ones((batch, n, n), dtype=cfg.dtype)
    opt = MomentumSGD(m.params, SGDConfig(lr=1e-6))
    loss_f = clocked(o.softmax_cross_entropy_forward, "loss", "fwd")
    loss_b = clocked(o.softmax_cross_entropy_backward, "loss", "bwd")
    sgd = clocked(opt.step, "sgd", "fwd")

    def step():
        t0 = time.perf_counter()
        logits = m.forward(x, dropout_key=1)
        loss, cache = loss_f(logits, labels, weights)
        m.zero_grad()
        m.backward(loss_b(1.0, cache))
        sgd(m.grads, 0)
        if counting[0]:
            rec["step"].append(time.perf_counter() - t0)

    for _ in range(warmup):
        step()
    plain_pf = threads.parallel_for
    calls = [0]

    def counted(items, fn):
        calls[0] += 1
        if current[0] is not None and counting[0]:
            rec.setdefault(current[0], {"fwd": [], "bwd": [], "dispatch": 0})["dispatch"] += 1
        return plain_pf(items, fn)

    threads.parallel_for = counted
    counting[0] = True
    try:
        for _ in range(repeat):
            step()
    finally:
        threads.parallel_for = plain_pf
    for r in rec.values():
        if isinstance(r, dict):
            r["dispatch"] /= repeat
    rec["dispatches"] = calls[0] / repeat
    return rec


def bench_layers_torch(cfg: UNetConfig, size, batch, repeat, warmup) -> dict:
    """PyTorch, layer by layer: each layer of layer_specs alone on random inputs of its
    shapes, forward (with autograd recording, as in training) and backward timed apart.
    {name: {"fwd": [s], "bwd": [s]}}."""
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, cfg.dtype)
    g = torch.Generator().manual_seed(0)

    def t(shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)

    rec = {}
    for sp in layer_specs(cfg, size, batch):
        kind = sp["kind"]
        first = sp["name"] == "down0.conv0"
        if kind == "sgd":
            ps = [torch.zeros(sh, dtype=dtype, requires_grad=True)
                  for sh in parameter_shapes(cfg).values()]
            for p in ps:
                p.grad = torch.ones_like(p)
            opt = torch.optim.SGD(ps, lr=1e-6, momentum=0.99)
            f, inputs = opt.step, ()
        elif kind == "conv":
            inputs = (t(sp["x"], not first), t(sp["w"]), t(sp["w"][:1]))
            relu = sp["relu"]

            def f(x, w, b, relu=relu):
                y = F.conv2d(x, w, b.reshape(-1))
                return F.relu(y) if relu else y
        elif kind == "upconv":
            inputs = (t(sp["x"]), t(sp["w"]), t(sp["w"][1:2]))

            def f(x, w, b):
                return F.conv_transpose2d(x, w, b.reshape(-1), stride=2)
        elif kind == "pool":
            inputs, f = (t(sp["x"]),), (lambda x: F.max_pool2d(x, 2))
        elif kind == "dropout":
            inputs, f = (t(sp["x"]),), (lambda x: F.dropout(x, 0.5, training=True))
        elif kind == "concat":
            inputs = (t(sp["skip"]), t(sp["x"]))

            def f(s, x):
                c = (s.shape[2] - x.shape[2]) // 2
                return torch.cat([s[:, :, c:c + x.shape[2], c:c + x.shape[3]], x], 1)
        else:  # loss
            B, K, H, W = sp["x"]
            labels = torch.randint(0, K, (B, H, W), generator=g)
            weights = torch.ones(B, H, W, dtype=dtype)
            inputs = (t(sp["x"]),)

            def f(x, labels=labels, weights=weights):
                return (F.cross_entropy(x, labels, reduction="none") * weights).mean()
        fwd, bwd = [], []
        for i in range(warmup + repeat):
            t0 = time.perf_counter()
            y = f(*inputs)
            t1 = time.perf_counter()
            if kind != "sgd":
                dy = torch.ones_like(y) if y.ndim == 0 else torch.randn(y.shape, dtype=dtype)
                y.backward(dy)
            t2 = time.perf_counter()
            if i >= warmup:
                fwd.append(t1 - t0)
                bwd.append(t2 - t1)
            for x in inputs:
                x.grad = None
        rec[sp["name"]] = {"fwd": fwd, "bwd": bwd if kind != "sgd" else [0.0]}
    rec["_threads"] = torch.get_num_threads()
    return rec


def _layer_cost(sp, cfg, table, item) -> tuple[float, float]:
    """(GFLOP, MB) of one layer's forward + backward: FLOPs of the products (2 per
    multiply-add; the backward twice the forward, once for the first layer, which needs no
    dx), and the bytes that must move at least once (inputs, outputs, weights and their
    gradients), not the columns or the caches' second reads."""
    kind = sp["kind"]
    g = table.get(sp["name"], {}).get("gflop", 0.0)
    g *= 2 if sp["name"] == "down0.conv0" else 3
    size = float(np.prod(sp["x"])) if "x" in sp else 0.0
    if kind == "conv":
        B, cin, H, W = sp["x"]
        cout, _, k, _ = sp["w"]
        out = B * cout * (H - k + 1) * (W - k + 1)
        nbytes = (2 * size + 3 * out + 3 * np.prod(sp["w"])) * item  # x, dx, y, dy, mask; w
    elif kind == "upconv":
        B, cin, H, W = sp["x"]
        out = B * sp["w"][1] * 4 * H * W
        nbytes = (2 * size + 2 * out + 3 * np.prod(sp["w"])) * item
    elif kind == "pool":
        nbytes = (2 * size + 2 * size / 4) * item + size / 4  # x, dx; y, dy; arg-max
    elif kind == "concat":
        nbytes = 4 * (size + size) * item  # copy in, out; gradient out, in
    elif kind == "dropout":
        nbytes = 5 * size * item  # mask, x, y; dy, dx
    elif kind == "loss":
        nbytes = 4 * size * item
    else:  # sgd: w, v read and written, g read
        nbytes = 5 * sum(int(np.prod(s)) for s in parameter_shapes(cfg).values()) * item
    return g, nbytes / 2**20


def print_layers(a) -> int:
    """Section 7 (--layers): the per-layer table of a training step, ours beside PyTorch's."""
    cfg = UNetConfig(base=a.base, depth=a.depth, dtype=a.dtype, ops=a.ops if a.ops != "both"
                     else "fast")
    ours = bench_layers_ours(cfg, a.size, a.batch, a.rounds * a.repeat, max(1, a.warmup))
    torch_rec = None if a.no_torch else _in_subprocess("torch_layers", a, "cpu")
    T, disp = dispatch_seconds()
    table = {r["layer"]: r for r in layer_table(cfg, a.size, a.batch)}
    item = np.dtype(a.dtype).itemsize
    step = median(ours["step"])
    print(f"\n   BLAS: {backend.blas_kernel()}; torch threads: "
          f"{torch_rec.pop('_threads', '?') if torch_rec else 'not run'}")
    print(f"\n7. per layer: one training step at {a.size}/{a.base} on the {cfg.ops} ops, medians "
          f"of {a.rounds * a.repeat} steps (ours: inside the step; PyTorch: each layer alone "
          f"on inputs of its shapes)")
    head = (f"   {'layer':<17}{'GFLOP':>7}{'MB':>8}{'fwd ms':>8}{'bwd ms':>8}{'GFLOP/s':>8}"
            f"{'GB/s':>6}{'disp':>6}")
    if torch_rec:
        head += f"{'t fwd':>8}{'t bwd':>8}{'ours/t':>8}"
    print(head)
    tot = {"ours": 0.0, "torch": 0.0, "gflop": 0.0}
    for sp in layer_specs(cfg, a.size, a.batch):
        r = ours.get(sp["name"])
        if r is None:
            continue
        gf, mb = _layer_cost(sp, cfg, table, item)
        f, b = median(r["fwd"]), median(r["bwd"]) if r["bwd"] else 0.0
        tot["ours"] += f + b
        tot["gflop"] += gf
        line = (f"   {sp['name']:<17}{gf:7.2f}{mb:8.1f}{f * 1e3:8.2f}{b * 1e3:8.2f}"
                f"{gf / (f + b):8.1f}{mb / 1024 / (f + b):6.1f}{r['dispatch']:6.0f}")
        if torch_rec and sp["name"] in torch_rec:
            tf, tb = median(torch_rec[sp["name"]]["fwd"]), median(torch_rec[sp["name"]]["bwd"])
            tot["torch"] += tf + tb
            line += f"{tf * 1e3:8.2f}{tb * 1e3:8.2f}{(f + b) / (tf + tb):7.2f}x"
        print(line)
    line = f"   {'sum of layers':<17}{tot['gflop']:7.1f}{'':8}{tot['ours'] * 1e3:16.1f}"
    if torch_rec:
        line += f"{'':36}{tot['torch'] * 1e3:16.1f}{tot['ours'] / tot['torch']:7.2f}x"
    print(line)
    print(f"   training step {step * 1e3:.1f} ms (outside the layers: "
          f"{(step - tot['ours']) * 1e3:.1f} ms); {ours['dispatches']:.0f} thread dispatches "
          f"per step, an empty one costs "
          f"{disp * 1e6:.0f} us on {T} workers: {ours['dispatches'] * disp * 1e3:.1f} ms "
          f"({ours['dispatches'] * disp / step:.0%} of the step)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minunet.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to run: auto (the GPU when CuPy sees one, else the CPU)")
    p.add_argument("--size", type=int, default=572, help="input tile side (valid size)")
    p.add_argument("--base", type=int, default=None,
                   help="channels at level 0 (paper 64, the default for the U-Net; 16 is the "
                        "CPU preset; another --arch: its own default unless given)")
    p.add_argument("--depth", type=int, default=None,
                   help="number of 2x2 poolings (paper 4; another --arch: its own default "
                        "unless given)")
    p.add_argument("--arch", default="unet",
                   help=f"the network of section 3: {', '.join(registry.names())} (default "
                        "unet; --base and --depth apply where its config has them)")
    p.add_argument("--model", default="",
                   help="the architecture's options, e.g. 'width=0.5,head=softmax' (as "
                        "`train --model`)")
    p.add_argument("--batch", type=int, default=1, help="tiles per step (paper 1)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="float32 (training) or float64")
    p.add_argument("--repeat", type=int, default=5,
                   help="timed runs per measurement and round (the median is reported)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed runs before the timed ones (compilation, caches, workspaces)")
    p.add_argument("--rounds", type=int, default=2,
                   help="alternate ours and PyTorch this many times (times are pooled)")
    p.add_argument("--no-ops", action="store_true", help="skip the per-op table")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--tf32", action="store_true", help="allow TF32 GEMMs (GPU; ours and torch)")
    p.add_argument("--data", action="store_true", help="also time the tile pipeline")
    p.add_argument("--ops", choices=["both", "fast", "plain"], default="both",
                   help="which of our op modules to time the network on: fast (minunet/fast, "
                        "the default of training), plain (minunet/ops, the lesson) or both")
    p.add_argument("--predict", action="store_true",
                   help="time prediction instead: in memory vs chunked into zarr (MP/s) of "
                        "one generated --image, tile --size (section 6 of the doc above)")
    p.add_argument("--image", type=int, default=3072,
                   help="with --predict: side of the generated image (default 3072)")
    p.add_argument("--cluster", type=int, default=0,
                   help="with --predict: also chunked on a LocalCluster of this many worker "
                        "processes (default 0: not)")
    p.add_argument("--big", type=int, default=0,
                   help="with --predict: peak memory of a fresh process predicting a lazily "
                        "generated BIG x BIG image chunk by chunk (e.g. 20000; default 0: not)")
    p.add_argument("--layers", action="store_true",
                   help="time a training step layer by layer instead (section 7): each layer's "
                        "forward and backward, FLOPs, bytes and thread dispatches, beside "
                        "PyTorch's same layer when torch is importable (CPU)")
    p.add_argument("--_worker", choices=["fast", "plain", "torch", "torch_layers"],
                   help=argparse.SUPPRESS)
    p.add_argument("--_predict_big", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.explicit = {k for k in ("base", "depth") if getattr(a, k) is not None}
    a.base, a.depth = a.base or 64, a.depth or 4
    device = backend.resolve_device(a.device)
    if a._worker:
        return _worker(a._worker, a, device)
    if a._predict_big:
        return _predict_big(a, device)
    if device == "cuda" and a.tf32:
        backend.set_tf32(True)
    xp = np if device == "cpu" else backend._cupy()
    try:
        cfg = net_config(a)  # for the FLOP count
        registry.geometry(cfg).output_size(a.size)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.arch != "unet" and (a.layers or a.predict):
        print("error: --layers and --predict time the U-Net; leave --arch out", file=sys.stderr)
        return 2
    timer = Timer(xp)
    print(f"minunet.bench: {backend.device_info()}")
    options = ", ".join(f"{k}={v}" for k, v in vars(cfg).items() if k not in ("dtype", "ops"))
    net = f"base {a.base}, depth {a.depth}" if cfg.arch == "unet" else f"{cfg.arch} ({options})"
    print(f"config: input {a.batch}x{a.size}x{a.size}, {net}, "
          f"{a.dtype}, median of {a.rounds} rounds x {a.repeat} runs, each after {a.warmup} "
          f"warm-up (ours and PyTorch take turns)")

    print("\n1. twins (Numba / CUDA) vs the plain ops of minunet/ops (max abs difference)")
    bad = False
    for name, err in check_fast_paths(xp, np.dtype(a.dtype)):
        tol = 1e-4 if a.dtype == "float32" else 1e-10
        ok = err <= tol
        bad |= not ok
        print(f"   {name:<20} {err:10.2e}  {'ok' if ok else 'MISMATCH'}")
    if bad:
        print("a twin disagrees with its plain op: not timing", file=sys.stderr)
        return 1
    if a.predict:
        return bench_predict(a, device)
    if a.layers:
        if device != "cpu":
            print("--layers times the CPU (a clock around each layer); use --device cpu",
                  file=sys.stderr)
            return 2
        return print_layers(a)

    if not a.no_ops:
        print("\n2. hot loops at the paper network's sizes")
        print(f"   {'op':<30}{'ms':>9}{'GB/s':>9}{'of copy':>9}")
        ops = bench_ops(xp, np.dtype(a.dtype), timer, a.repeat, a.warmup, a.size, a.base)
        copy_rate = ops[0][2] / ops[0][1]  # bytes per second of the plain copy
        for name, t, nbytes in ops:
            print(f"   {name:<30}{t * 1e3:9.2f}{nbytes / t / 1e9:9.1f}"
                  f"{nbytes / t / copy_rate:9.0%}")

        print(f"\n2b. the U-Net family's ops, forward + backward, fast vs plain (a {a.size - 2}"
              f" tile, {a.base} channels; checked first: max difference / max |plain|)")
        print(f"   {'op':<26}{'diff':>10}{'fast ms':>10}{'plain ms':>10}{'plain/fast':>12}")
        tol = 1e-4 if a.dtype == "float32" else 1e-10
        for name, err, tf, tp in bench_family(xp, np.dtype(a.dtype), timer, a.repeat, a.warmup,
                                              a.size, a.base):
            if err > tol:
                print(f"   {name:<26}{err:10.2e}  MISMATCH: not timing the rest")
                return 1
            print(f"   {name:<26}{err:10.1e}{tf * 1e3:10.2f}{tp * 1e3:10.2f}{tp / tf:11.1f}x")

    flops = sum(r["gflop"] for r in registry.get(cfg.arch).layer_table(cfg, a.size, a.batch))
    n_params = sum(r["params"] for r in registry.get(cfg.arch).layer_table(cfg, a.size, 1))
    what = f"U-Net {a.size}/{a.base}" if cfg.arch == "unet" else f"{cfg.arch} at {a.size}"
    print(f"\n3. {what}: {n_params:,} parameters, forward {flops:.1f} GFLOP, training step "
          f"~{3 * flops:.0f} GFLOP")
    times = _alternate(a, device)
    if not any(k in times for k in ("fast", "plain")):
        return 1  # _in_subprocess printed why
    cols = [k for k in ("fast", "plain", "torch") if k in times]
    label = {"fast": "fast s", "plain": "plain s", "torch": "torch s"}
    print(f"   {'':<18}" + "".join(f"{label[k]:>10}{'GFLOP/s':>9}" for k in cols)
          + "".join(f"{r:>13}" for r in _ratios(times)))
    for name, mult in (("forward", 1), ("forward+backward", 3), ("training step", 3)):
        line = f"   {name:<18}" + "".join(
            f"{times[k][name]:10.3f}{mult * flops / times[k][name]:9.1f}" for k in cols)
        for num, den in _ratios(times).values():
            line += f"{times[num][name] / times[den][name]:12.2f}x"
        print(line)
    for label, key in (("peak memory MB", "peak_mb"), ("  training step", "step_peak_mb")):
        peaks = "".join(f"{times[k][key]:10.0f}{'':9}" for k in cols)
        print(f"   {label:<18}{peaks}")
    if "torch" not in times and not a.no_torch:
        print("   (PyTorch not installed: no comparison)")

    if a.data:
        from minunet.data import tiles_per_second

        tps = tiles_per_second(n_tiles=10, in_size=a.size, out_size=output_size(a.size))
        print(f"\n5. data pipeline: {tps:.1f} tiles/s at {a.size}x{a.size}, all augmentations, "
              f"one thread")
    return 0


if __name__ == "__main__":
    sys.exit(main())
