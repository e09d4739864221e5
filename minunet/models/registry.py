"""The registry of architectures: name -> model class (which names its config class and is its
own builder: `cls(config, seed)`).

    @register("unet")            on a Model subclass in its models/ file
    build_model(config, seed)    the model config.arch names, freshly initialised
    config_for(arch, options)    the config of `arch` from a dict (a checkpoint's, the
                                 command line's), errors naming unknown options
    geometry(config)             its sizes, margin and tile grid, without building it
    names()                      the registered names

A new architecture is one module that subclasses minunet.nn.model.Model and registers itself;
nothing else in the package changes for it (tests/test_house.py shows it with a toy network).
"""

from __future__ import annotations

import dataclasses

ARCHITECTURES: dict = {}  # arch name (config.arch, checkpoints) -> model class, once imported

# The architectures of this package, name -> the module that registers it, imported when first
# asked for (`get`): `import minunet` does not load six networks, and a copy of the project
# without some of their ops (a coursework student copy) still runs the U-Net.
BUILT_IN = {
    "unet": "minunet.models.unet", "unet-bn": "minunet.models.unet_bn",
    "resunet": "minunet.models.resunet", "unetpp": "minunet.models.unetpp",
    "unet3p": "minunet.models.unet3p", "mobile-unet": "minunet.models.mobile_unet",
    "eff-unet": "minunet.models.eff_unet",
}


def register(name: str):
    """Class decorator: make a Model subclass buildable as `name`."""
    def deco(cls):
        cls.arch = name
        ARCHITECTURES[name] = cls
        return cls
    return deco


def names() -> list[str]:
    return sorted(set(ARCHITECTURES) | set(BUILT_IN))


def get(name: str):
    """The model class of `name` (its module imported on first use); ValueError naming the
    known ones, or the module that this copy of minunet lacks."""
    if name not in ARCHITECTURES and name in BUILT_IN:
        import importlib

        try:
            importlib.import_module(BUILT_IN[name])
        except ImportError as e:
            raise ValueError(f"architecture {name!r} needs {e.name}, which this copy of "
                             f"minunet does not have") from None
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(names())}") from None


def build_model(config=None, seed: int = 0):
    """The model that `config.arch` names, freshly initialised from `seed` (default: the
    paper's U-Net). The one way train, predict, infer and bench make a model, so a
    checkpoint's config rebuilds exactly what was trained."""
    if config is None:
        config = get("unet").config_class()
    return get(config.arch)(config, seed=seed)


def geometry(config):
    """The Geometry of the network `config` describes (minunet/nn/geometry.py), unbuilt."""
    return get(config.arch).geometry_of(config)


def describe(config, size: int, batch: int = 1) -> str:
    """The per-layer table of the network `config` describes (shapes, parameters, FLOPs,
    memory) for an input of side `size`."""
    return get(config.arch).describe(config, size, batch)


def config_for(arch: str, options: dict):
    """The config of `arch` from `options` (unknown names refused, naming the known ones)."""
    cls = get(arch).config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"architecture {arch!r} has no option {', '.join(unknown)}; its "
                         f"options: {', '.join(sorted(known - {'arch'}))}")
    return cls(**{**options, "arch": arch})
