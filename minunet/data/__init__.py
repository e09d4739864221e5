"""Data for minunet: built-in synthetic EM, ISBI 2012 and folder loaders, the paper's weight map,
elastic augmentation and training tiles. Never imports the model or the ops (one-way data flow).

    from minunet.data import load_dataset, TileSampler, AugmentConfig
    data = load_dataset("isbi2012:../shared/data/isbi2012")       # or "synthetic", "folder:PATH"
    with TileSampler(data.train, 572, 388, AugmentConfig(), seed=0, prefetch=4) as tiles:
        x, labels, weights = next(tiles)   # (1, 572, 572) float32, (388, 388) int64, float32
"""

from .augment import (
    AugmentConfig,
    augment_sample,
    coordinate_map,
    draw_transform,
    elastic_displacement,
    mirror_pad,
    warp,
)
from .loaders import (
    DataError,
    Dataset,
    Sample,
    load_dataset,
    load_folder,
    load_isbi2012,
    load_synthetic,
    read_array,
    to_float_image,
    to_label,
)
from .synthetic import (
    SyntheticSample,
    TouchingCells,
    settle_cells,
    synthetic_dataset,
    synthetic_em,
    touching_cells,
)
from .tiles import TileSampler, random_tile, tiles_per_second
from .weightmap import (
    cached_weight_map,
    class_balance,
    fill_separation_borders,
    instances_to_mask,
    plot_weightmap,
    separation_borders,
    weight_map,
)

__all__ = [
    "AugmentConfig", "DataError", "Dataset", "Sample", "SyntheticSample", "TileSampler",
    "TouchingCells", "augment_sample", "cached_weight_map", "class_balance", "coordinate_map",
    "draw_transform", "elastic_displacement", "fill_separation_borders", "instances_to_mask",
    "load_dataset", "load_folder", "load_isbi2012", "load_synthetic", "mirror_pad",
    "plot_weightmap", "random_tile", "read_array", "separation_borders", "settle_cells",
    "synthetic_dataset", "synthetic_em", "tiles_per_second",
    "to_float_image", "to_label", "touching_cells", "warp", "weight_map",
]
