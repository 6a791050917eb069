"""The parity harness's tensors: our model's variables in the authors' layout, and the
relative difference of two tensors as a row of the comparison.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

TINY = 1e-30
RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# float32 (a user's run): the tolerance of a tensor at the first step and after it.
TOLERANCES = {"first": 1e-4, "later": 1e-3}
# float32: a row outside its tolerance is rounding where ours is within this many times the
# furthest of their float32 runs (on oneDNN's kernels, on PyTorch's own, from weights one ulp
# away) from float64.
SPREAD_MARGIN = 3.0
# float64: flat tolerances, the first step's forward pass and loss terms, and the rest
# (gradients, parameters, Adam's moments, BatchNorm statistics, later forward passes).
TOLERANCES64 = {"first": 1e-9, "later": 1e-8}
# float64's own growth (their float64 run against itself from weights one ulp away) times
# this is a tensor's tolerance at a step where it exceeds the flat one.
GROWTH_MARGIN = 100.0
# The finetuning classifier: classifier.py's defaults.
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


# --- the recipe ------------------------------------------------------------------------


def recipe(name: str = "cifar100"):
    """configs/NAME.cfg read into a Config (its model and optimiser fields; data left out)."""
    from patchvae_tf.config import Config, ModelConfig, TrainConfig

    values = {}
    with open(os.path.join(RECIPE, f"{name}.cfg")) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            key, eq, value = line[2:].partition("=")
            values[key] = value if eq else True
    sections = {}
    for cls in (ModelConfig, TrainConfig):
        kwargs = {}
        for fld in dataclasses.fields(cls):
            if fld.name in values:
                kwargs[fld.name] = _parse(values[fld.name], fld.type)
            elif f"no{fld.name}" in values:
                kwargs[fld.name] = False
        sections[cls] = cls(**kwargs)
    return Config(model=sections[ModelConfig], train=sections[TrainConfig])


def _parse(value, kind: str):
    if value is True:
        return True
    return {"int": int, "float": float}.get(kind, str)(value)


# Each variant: the recipe it starts from and what it changes.
VARIANT_SPECS = {
    "cifar": ("cifar100", {}),
    "categorical": ("cifar100", {"categorical": True}),
    "hard": ("cifar100", {"hard": True}),
    "categorical_hard": ("cifar100", {"categorical": True, "hard": True}),
    # The default run's model and optimiser (configs/shapes.cfg): the pyramid encoder.
    "pyramid": ("shapes", {}),
    "vae": ("cifar100", {"arch": "vae"}),
    # configs/imagenet.cfg's architecture (scale 32: the whole ResNet-18, 512 channels,
    # N 64, L 16) at a smaller image size (--imagenet_size).
    "imagenet": ("imagenet", {}),
}
# Documented differences float64 can see, as options of ours, with the authors' value: the
# comparison sets them so and lists them; the project's defaults (ModelConfig's) are run
# separately (values="project") to show what they change.
AUTHORS_VALUES = {
    "occurrence_rate_epsilon": 1e-7,
    "hard_categorical": "sign",
    # Only their PatchyVAE runs its decoder twice per step.
    "decoder_batch_norm_updates": 2,
    # run.py's compounding schedule (configs/shapes.cfg holds t for 1000 steps instead).
    "anneal_schedule": "reference",
}


# The documented differences whose project default is not the authors' value.
PROJECT_DEFAULTS = ("occurrence_rate_epsilon", "hard_categorical")


def _relevant(option_name: str, model) -> bool:
    if option_name == "hard_categorical":
        return model.categorical and model.hard
    if option_name in ("decoder_batch_norm_updates", "occurrence_rate_epsilon"):
        return model.arch == "patchvae"
    return True


def variant_config(name: str, image_size: int | None = None, values: str = "authors"):
    """The variant's Config. values: "authors" sets every AUTHORS_VALUES option that
    matters for it to the authors' value; "project" sets the PROJECT_DEFAULTS options to
    this project's defaults and keeps the recipe's values for the rest (the variant as
    train.py runs its recipe).
    """
    from patchvae_tf.config import ModelConfig

    recipe_name, changes = VARIANT_SPECS[name]
    cfg = recipe(recipe_name)
    model = dataclasses.replace(
        cfg.model, **changes, **({"image_size": image_size} if image_size else {})
    )
    defaults = ModelConfig()
    settings = {k: v for k, v in AUTHORS_VALUES.items() if _relevant(k, model)}
    if values == "project":
        # The documented differences at this project's defaults, the rest as the recipe.
        settings = {k: getattr(defaults, k) for k in settings if k in PROJECT_DEFAULTS}
    return cfg.replace(model=dataclasses.replace(model, **settings))


def set_options(name: str, values: str = "authors") -> dict:
    """The AUTHORS_VALUES options that matter for the variant, as the comparison sets them
    ({option: value}), and where the variant's recipe has another value, that value.
    """
    cfg = variant_config(name, values=values)
    own = recipe(VARIANT_SPECS[name][0]).model
    return {
        k: {"set": getattr(cfg.model, k), "recipe": getattr(own, k)}
        for k in AUTHORS_VALUES
        if _relevant(k, cfg.model)
    }


# --- our model's tensors in the authors' layout -------------------------------------------


def _leaves(model) -> list:
    """Our weight-bearing layers in the order of the authors' modules."""
    if hasattr(model, "heads"):
        return _flat([model.encoder, model.heads, model.decoder])
    roots = [model.encoder, model.reduce, model.posterior_mean]
    return _flat(roots + [model.posterior_logvar, model.expand, model.decoder])


def _flat(roots) -> list:
    """The Conv, transposed Conv, BatchNorm and Dense layers under roots, depth first in the
    order each layer holds its sub-layers (Keras's recursive _flatten_layers runs backwards).
    """
    import keras

    kinds = (
        keras.layers.Conv2DTranspose,
        keras.layers.Conv2D,
        keras.layers.BatchNormalization,
        keras.layers.Dense,
    )
    out = []
    for root in roots:
        if isinstance(root, kinds):
            out.append(root)
        else:
            out += _flat(root._flatten_layers(include_self=False, recursive=False))
    return out


_TORCH_TYPE = {
    "Conv2DTranspose": "ConvTranspose2d",
    "Conv2D": "Conv2d",
    "BatchNormalization": "BatchNorm2d",
    "FusedBatchNorm": "BatchNorm2d",
    "Dense": "Linear",
}


def _pairs(layer) -> dict:
    """Torch tensor name -> our variable, for one layer."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return {
            "weight": layer.gamma,
            "bias": layer.beta,
            "running_mean": layer.moving_mean,
            "running_var": layer.moving_variance,
        }
    out = {"weight": layer.kernel}
    if getattr(layer, "bias", None) is not None:
        out["bias"] = layer.bias
    return out


def to_torch(value: np.ndarray) -> np.ndarray:
    """A Keras tensor in PyTorch's layout: conv kernels HWIO -> OIHW, transposed conv
    kernels (h, w, out, in) -> (in, out, h, w) (the same permutation), dense (in, out) ->
    (out, in); vectors unchanged.
    """
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def mapping(layers: list, modules: list, prefix: str = "") -> dict:
    """Torch state name ("features.4.0.conv1.weight") -> our variable, checking that each
    layer's kind and each tensor's shape (in torch's layout) match the authors' module.
    """
    if len(layers) != len(modules):
        raise ValueError(f"{len(layers)} weight layers here, {len(modules)} in their model")
    out = {}
    for layer, module in zip(layers, modules, strict=True):
        kind = _TORCH_TYPE[type(layer).__name__]
        if kind != module["type"]:
            raise ValueError(
                f"{layer.path} ({kind}) is paired with {module['name']} ({module['type']})"
            )
        pairs = _pairs(layer)
        if set(pairs) != set(module["tensors"]):
            raise ValueError(
                f"{layer.path}: tensors {sorted(pairs)}, theirs {sorted(module['tensors'])}"
            )
        for k, var in pairs.items():
            shape = list(to_torch(np.zeros(var.shape, np.float32)).shape)
            if shape != module["tensors"][k]:
                raise ValueError(
                    f"{layer.path}.{k}: {shape} in torch's layout, theirs {module['tensors'][k]}"
                )
            out[f"{prefix}{module['name']}.{k}"] = var
    return out


# --- the comparison ------------------------------------------------------------------------


def difference(ours, theirs) -> tuple[float, float, float]:
    """(max |ours - theirs|, max |theirs|, their ratio, the relative difference)."""
    a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape}")
    abs_diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return abs_diff, scale, abs_diff / max(scale, TINY)


def row(variant: str, group: str, name: str, ours, theirs, tolerance: float, **extra) -> dict:
    abs_diff, scale, rel = difference(ours, theirs)
    return {
        "variant": variant,
        "group": group,
        "name": name,
        "shape": list(np.shape(theirs)),
        "max_abs_difference": abs_diff,
        "max_abs_reference": scale,
        "difference": rel,
        "tolerance": tolerance,
        "within_tolerance": bool(rel <= tolerance),
        **extra,
    }
