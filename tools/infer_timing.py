"""Time overlap-tile inference of whole images with the paper's network (issue 17, stage 3).

    python3 tools/infer_timing.py [--device cuda] [--sizes 512,4096] [--repeat 10]

For each size S it builds the paper U-Net (`build_model(UNetConfig())`: base 64, depth 4,
float32), moves it to the device, runs `minunet.inference.tiles.predict(model, image)` on one S x S
image (tile=None: the tile is chosen from free memory, the whole padded image in one pass
when it fits) once or twice as a warm-up (kernel compilation, cuBLAS, the memory pool),
then times `repeat` calls, each ending with a device synchronisation, and prints the
median. The timed call includes the image's one host->device copy, the mirror padding,
every tile's forward pass and the stitching; the probabilities stay on the device.

Each result is one line that tools/gpu_check.sh copies into summary.md:
    RESULT infer 512x512: median 18.3 ms, min 18.1 ms, max 19.0 ms, 10 runs, ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 tools/infer_timing.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    p.add_argument("--sizes", default="512,4096", help="comma-separated image sides")
    p.add_argument("--repeat", type=int, default=10,
                   help="timed runs of the smallest size; larger sizes get fewer (at least 3)")
    p.add_argument("--base", type=int, default=64, help="channels at level 0 (paper 64)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 GEMMs (GPU)")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]

    import numpy as np

    from minunet import backend
    from minunet.inference.tiles import predict
    from minunet.models.unet import UNetConfig, build_model

    if a.tf32:
        backend.set_tf32(True)  # before the first GPU computation (see set_tf32)
    cfg = UNetConfig(base=a.base)
    model = build_model(cfg).to(a.device).eval()
    xp = model.xp
    print(f"infer_timing: {backend.device_info()}; U-Net base {cfg.base}, depth {cfg.depth}, "
          f"{cfg.dtype}, {model.num_parameters():,} parameters, tf32 {a.tf32}", flush=True)

    def sync():
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()

    rng = np.random.default_rng(0)
    failed = False
    for size in sizes:
        image = rng.random((size, size), dtype=np.float32)  # on the host, as a file loads it
        repeat = a.repeat if size <= 1024 else max(3, a.repeat // 3)
        warmup = 2 if size <= 1024 else 1
        try:
            for _ in range(warmup):
                probs = predict(model, image)
            sync()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                probs = predict(model, image)
                sync()
                times.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 -- report and go on to the next size
            if not backend.is_out_of_memory(e):
                raise
            print(f"RESULT infer {size}x{size}: out of memory ({e})", flush=True)
            failed = True
            continue
        pool = ("n/a" if xp is np else
                f"{xp.get_default_memory_pool().total_bytes() / 2**30:.1f} GiB")
        mpix = size * size / 1e6
        med = statistics.median(times)
        print(f"RESULT infer {size}x{size}: median {med * 1e3:.1f} ms, min {min(times) * 1e3:.1f} "
              f"ms, max {max(times) * 1e3:.1f} ms, {repeat} runs after {warmup} warm-up; "
              f"{mpix / med:.1f} Mpixel/s; output {tuple(probs.shape)}; memory pool {pool}",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
