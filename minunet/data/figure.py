"""Regenerate tutorials/figures/synthetic_em.png: synthetic EM, labels, a deformed copy, weight map.

    python -m minunet.data.figure [PATH] [--seed N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..files import save_figure
from .augment import AugmentConfig, augment_sample
from .synthetic import synthetic_em
from .weightmap import weight_map

DEFAULT_PATH = Path("tutorials/figures/synthetic_em.png")


def synthetic_em_figure(path: str | Path = DEFAULT_PATH, seed: int = 0, size: int = 512) -> Path:
    """Draw a 2x2 figure: image, label, elastic deformation (paper parameters), weight map.

    The deformed panel carries a faint grid drawn on the image before deforming, so the smooth
    displacement field of the coarse 3x3 grid (std 10 px, paper Sec. 3.1) is visible.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = synthetic_em(size, seed=seed)
    image = s.image.astype(np.float32) / 255.0
    label = (s.label > 0).astype(np.int64)
    weights = weight_map(label)  # ISBI style: cells = 4-connected components of the label
    gridded = image.copy()
    gridded[::64, :] = 1.0
    gridded[:, ::64] = 1.0
    elastic_only = AugmentConfig(rotate=False, flip=False, shift=False).only_geometry()
    deformed, deformed_label, _ = augment_sample(
        gridded, label, None, np.random.default_rng(seed), elastic_only
    )

    fig = Figure(figsize=(10, 10.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    panels = [
        (image, "gray", "synthetic EM image (uint8, 512x512)"),
        (label, "gray", "label: 1 = cell (white), 0 = membrane"),
        (deformed, "gray", "elastic deformation: 3x3 grid, std 10 px"),
        (weights, "jet", f"weight map w0=10, sigma=5 (max {weights.max():.1f})"),
    ]
    for ax, (data, cmap, title) in zip(axes.ravel(), panels, strict=True):
        im = ax.imshow(data, cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_axis_off()
    axes[1, 0].contour(deformed_label, levels=[0.5], colors="tab:orange", linewidths=0.5)
    fig.colorbar(im, ax=axes[1, 1], fraction=0.046, pad=0.02)
    fig.tight_layout()
    path = Path(path)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(synthetic_em_figure(args.path, seed=args.seed))


if __name__ == "__main__":
    main()
