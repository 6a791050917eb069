"""Parity with the authors' code: our training step and theirs (kampta/PatchVAE, in PyTorch)
from the same weights, batch and noise, compared tensor by tensor.

    python -m benchmarks.parity --reference=PATH [--reference_python=PY | --reference_setup]

For each variant (the CIFAR recipe, its categorical and hard variants, the VAE baseline) our
model is built from configs/cifar100.cfg, its initial weights are copied into the authors'
model (built by their model.py) module by module, and both take --steps Adam steps on one
batch with the same relaxed-occurrence uniforms and appearance epsilons, at the recipe's
learning rate and temperature schedule. The classifier variant does one SGD step of our
--mode=finetune classifier and of their classifier.py's. Compared: the encoder's output and
heads, x_hat, each loss term, every gradient, every parameter (and BatchNorm running
statistic) after the first and the last step, and the last step's forward pass and
gradients.

The difference of a tensor is max|ours - theirs| / max(max|theirs|, 1e-30): the largest
error relative to the tensor's own scale, so that entries near zero do not dominate.

Keras's Adam adds epsilon to sqrt(v) before the bias correction, which is PyTorch's update
with epsilon / sqrt(1 - beta_2^t): their Adam is given that epsilon step by step, so the
comparison is exact, and run once more with its own to measure the difference alone
(adam_epsilon_alone). Their code also runs in float64 from the same weights, batch and
noise: how far each float32 result (theirs and ours) is from it says what float32 rounding
alone does, which is the reason given for a row outside its tolerance (see explain()).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import tempfile

import numpy as np

from patchvae_tf.config.fields import option

VARIANTS = ("cifar", "categorical", "hard", "vae", "classifier")
RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity_worker.py")
TINY = 1e-30
# Tolerances on the difference above, per group of compared tensors.
TOLERANCES = {"forward": 1e-4, "loss": 1e-4, "gradient": 1e-4, "step1": 1e-4, "last": 1e-3}

# The finetuning classifier: classifier.py's defaults.
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


@dataclasses.dataclass(frozen=True)
class ParityConfig:
    """What the parity harness compares and against which checkout."""

    reference: str = option("", "A checkout of kampta/PatchVAE (model.py, loss.py, ...)")
    reference_python: str = option("", "A Python that imports torch")
    reference_setup: bool = option(
        False, "Create a virtual environment with torch for the reference (once)"
    )
    reference_venv: str = option(
        "", "Where --reference_setup creates it (default ~/.cache/patchvae-tf/torch-venv)"
    )
    out: str = option("benchmarks/results/parity.json", "JSON file (a .md table beside it)")
    variants: tuple[str, ...] = option(
        VARIANTS, "Comma-separated, of " + ",".join(VARIANTS), choices=VARIANTS
    )
    steps: int = option(
        20, "Adam steps compared (parameters after the first and the last)", positive=True
    )
    batch_size: int = option(128, "Images in the batch (the recipe's 128)", positive=True)
    image_size: int = option(32, "Image size (the CIFAR recipe's 32)", positive=True)
    num_classes: int = option(
        100, "Classes of the finetuning classifier (CIFAR-100's)", positive=True
    )
    seed: int = option(0, "Seed of the weights, the batch and the noise", minimum=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def variant_config(name: str, image_size: int):
    cfg = recipe()
    changes = {"categorical": {"categorical": True}, "hard": {"hard": True}}
    changes["vae"] = {"arch": "vae"}
    model = dataclasses.replace(cfg.model, image_size=image_size, **changes.get(name, {}))
    return cfg.replace(model=model)


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


# --- the PatchVAE / VAE training step --------------------------------------------------------


def _nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


class Inputs:
    """The batch, the per-step noise and temperatures, in our layout and in theirs."""

    def __init__(self, cfg, batch: int, steps: int, seed: int):
        from patchvae_tf.model import latents, normalization

        m = cfg.model
        rng = np.random.default_rng(seed)
        size, grid = m.image_size, m.image_size // m.scale
        self.images = rng.uniform(-1.0, 1.0, (batch, size, size, 3)).astype(np.float32)
        self.taus = np.array(
            [
                float(
                    latents.temperature(t, m.tau_init, m.tau_min, m.anneal_rate, m.anneal_schedule)
                )
                for t in range(steps)
            ],
            np.float32,
        )
        normalized = normalization.normalize(self.images, m.normalization).numpy()
        self.theirs = {"x": _nchw(normalized), "tau": self.taus}
        self.ours = []
        code = m.num_parts * m.appearance_dim
        for t in range(steps):
            noise = {}
            if m.arch == "patchvae":
                # torch.distributions clamps its uniforms to [eps, 1 - eps]: keep inside.
                u = rng.uniform(1e-6, 1 - 1e-6, (batch, grid, grid, m.num_parts)).astype(np.float32)
                e = rng.standard_normal((batch, m.num_parts, m.appearance_dim)).astype(np.float32)
                noise = {"occurrence": u, "appearance": e}
                # Theirs: [B, N, h, w] per part, or [B, h*w, N] flattened for categorical.
                self.theirs[f"uniform/{t}"] = (
                    u.reshape(batch, grid * grid, m.num_parts) if m.categorical else _nchw(u)
                )
                self.theirs[f"normal/{t}"] = e.reshape(batch, code)
            else:
                e = rng.standard_normal((batch, code)).astype(np.float32)
                noise = {"appearance": e}
                self.theirs[f"normal/{t}"] = e.reshape(batch, code, 1, 1)
            self.ours.append(noise)


def _ours_forward_extras(model, x) -> dict:
    """The encoder's output and the heads in training mode, without moving BatchNorm's
    statistics (they are put back): the step itself does not return them.
    """
    import tensorflow as tf

    from patchvae_tf.model import normalization

    saved = [v.numpy() for v in model.non_trainable_variables]
    f = model.encoder(normalization.normalize(x, model.input_space), training=True)
    out = {"features": f}
    if hasattr(model, "heads"):
        mean, logvar, logits = model.heads(f)
        out |= {"app_mu": mean, "app_logvar": logvar, "vis_mean_logit": logits}
    else:
        r = model.reduce(f, training=True)
        out |= {
            "reduce": r,
            "app_mu": model.posterior_mean(r),
            "app_logvar": model.posterior_logvar(r),
        }
    for v, value in zip(model.non_trainable_variables, saved, strict=True):
        v.assign(value)
    return {k: _nchw(tf.convert_to_tensor(t).numpy()) for k, t in out.items()}


def _ours_train(cfg, model, inputs: Inputs, steps: int, names: dict) -> tuple[dict, dict]:
    """Our training step (training.py's: the batch mean of the loss terms, FusedAdam from
    make_optimizer) ``steps`` times; the first step's tensors and the states after the first
    and the last step, in the authors' layout and names.
    """
    import tensorflow as tf

    from patchvae_tf import training

    optimizer = training.make_optimizer(cfg)
    variables = model.trainable_variables
    x = tf.constant(inputs.images)
    by_var = {id(v): k for k, v in names.items()}
    out, terms = {}, {}

    @tf.function
    def step(x, tau, noise):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True, temperature=tau, noise=noise)
            parts = model.loss_terms(x, outputs)
            loss = tf.reduce_mean(parts["loss"])
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return outputs, {k: tf.reduce_mean(v) for k, v in parts.items()}, grads

    def state(tag):
        return {f"{tag}/{k}": to_torch(v.numpy()) for k, v in names.items()}

    for t in range(steps):
        if t == 0:
            out |= {f"fwd/{k}": a for k, a in _ours_forward_extras(model, x).items()}
        noise = {k: tf.constant(a) for k, a in inputs.ours[t].items()}
        outputs, parts, grads = step(x, tf.constant(inputs.taus[t]), noise)
        if t == 0:
            out["fwd/x_hat"] = _nchw(outputs["decoded"].numpy())
            b = inputs.images.shape[0]
            out["fwd/mu_app"] = outputs["appearance_mean"].numpy().reshape(b, -1)
            out["fwd/var_app"] = outputs["appearance_var"].numpy().reshape(b, -1)
            if "occurrence" in outputs:
                out["fwd/q_occ"] = _nchw(outputs["occurrence"].numpy())
            terms = {k: float(v) for k, v in parts.items()}
            for v, g in zip(variables, grads, strict=True):
                out[f"grad/{by_var[id(v)]}"] = to_torch(g.numpy())
            out |= state("step1")
        if t == steps - 1:
            b = inputs.images.shape[0]
            out[f"fwd{steps}/x_hat"] = _nchw(outputs["decoded"].numpy())
            out[f"fwd{steps}/mu_app"] = outputs["appearance_mean"].numpy().reshape(b, -1)
            out[f"fwd{steps}/var_app"] = outputs["appearance_var"].numpy().reshape(b, -1)
            if "occurrence" in outputs:
                out[f"fwd{steps}/q_occ"] = _nchw(outputs["occurrence"].numpy())
            for v, g in zip(variables, grads, strict=True):
                out[f"grad{steps}/{by_var[id(v)]}"] = to_torch(g.numpy())
    out |= state(f"step{steps}")
    return out, terms


_TERMS = {
    "patchvae": {
        "loss": "loss",
        "distortion": "recon",
        "rate_app": "kld_app",
        "rate_occ": "kld_vis",
    }
}
_TERMS["vae"] = {"loss": "loss", "distortion": "recon", "rate_app": "kld"}


def compare_model(name: str, cfg, ref, pcfg: ParityConfig, tmp: str) -> dict:
    """One variant: rows for every compared tensor, and the Adam epsilon's own effect."""
    import keras

    from patchvae_tf.model import models

    keras.utils.set_random_seed(pcfg.seed)
    model = models.build_model(cfg.model)
    m = cfg.model
    variant = {
        "arch": "patchy" if m.arch == "patchvae" else "vae",
        "image_size": m.image_size,
        "num_parts": m.num_parts,
        "appearance_dim": m.appearance_dim,
        "scale": m.scale,
        "base_channels": m.base_channels,
        "categorical": m.categorical,
        "hard": m.hard,
    }
    modules = ref.request({"cmd": "layout", "variant": variant})["modules"]
    names = mapping(_leaves(model), modules)
    steps = pcfg.steps
    inputs = Inputs(cfg, pcfg.batch_size, steps, pcfg.seed)
    weights = {f"w/{k}": to_torch(v.numpy()) for k, v in names.items()}
    in_path, out_path = os.path.join(tmp, f"{name}_in.npz"), os.path.join(tmp, f"{name}_out.npz")
    np.savez(in_path, **inputs.theirs, **weights)
    # Keras adds epsilon to sqrt(v) before the bias correction: the same update as PyTorch's
    # with epsilon / sqrt(1 - beta_2^t), which their side is given step by step.
    eps = cfg.train.adam_epsilon
    keras_eps = [eps / np.sqrt(1.0 - 0.999**t) for t in range(1, steps + 1)]
    answer = ref.request(
        {
            "cmd": "run",
            "variant": variant,
            "inputs": in_path,
            "out": out_path,
            "steps": steps,
            "lr": cfg.train.learning_rate,
            "adam_eps": keras_eps,
            "plain_eps": eps,
            "float64": True,
        }
    )
    theirs = dict(np.load(out_path))
    b = pcfg.batch_size
    for k in [k for k in theirs if "fwd" in k and k.endswith(("/mu_app", "/var_app"))]:
        theirs[k] = theirs[k].reshape(b, -1)  # their VAE's code is [B, N*L, 1, 1]
    if m.arch == "vae":  # their VAE returns zeros where PatchVAE returns q_occ
        theirs = {k: v for k, v in theirs.items() if not k.endswith("/q_occ")}
    ours, terms = _ours_train(cfg, model, inputs, steps, names)
    ours |= {f"term/{k}": terms[k] for k in _TERMS[m.arch]}
    for side, key in ((theirs, "terms"), (theirs, "terms64")):
        prefix = "" if key == "terms" else "float64/"
        side |= {f"{prefix}term/{k}": answer[key][t] for k, t in _TERMS[m.arch].items()}
    grads = {k for k in theirs if k.startswith("grad/")}
    if grads ^ {k for k in ours if k.startswith("grad/")}:
        raise ValueError(f"gradients on one side only: {sorted(grads ^ set(ours))}")
    keys = [("forward", k) for k in sorted(theirs) if k.startswith("fwd/")]
    keys += [("loss", f"term/{k}") for k in _TERMS[m.arch]]
    keys += [("gradient", k) for k in sorted(grads)]
    keys += [("last_forward", k) for k in sorted(theirs) if k.startswith(f"fwd{steps}/")]
    keys += [("last_gradient", f"grad{steps}/{k[5:]}") for k in sorted(grads)]
    for tag, group in (("step1", "step1"), (f"step{steps}", "last")):
        for k in sorted(names):
            kind = "statistic" if k.endswith(("running_mean", "running_var")) else "parameter"
            keys.append((f"{group}_{kind}", f"{tag}/{k}"))
    rows = [compared(name, group, key, ours, theirs, names) for group, key in keys]
    # Their Adam with its own epsilon against their Adam with ours: the epsilon's effect.
    effect = [
        row(
            name,
            "adam_epsilon",
            k,
            theirs[f"plain_eps/step{steps}/{k}"],
            theirs[f"step{steps}/{k}"],
            TOLERANCES["last"],
        )
        for k in sorted(names)
        if not k.endswith(("running_mean", "running_var"))
    ]
    return {"rows": rows, "adam_epsilon_effect": effect, "arrays": (ours, theirs)}


def compared(variant: str, group: str, key: str, ours: dict, theirs: dict, names: dict) -> dict:
    """The row of ours[key] against theirs[key]; where their float64 run has the tensor, also
    both float32 runs against it: how far float32 rounding alone moves their own result.
    """
    tolerance = TOLERANCES[group.split("_")[0]]
    name = key.split("/", 1)[1]
    extra = {"our_name": names[name].path} if name in names else {}
    exact = theirs.get(f"float64/{key}")
    if exact is not None:
        extra["ours_vs_float64"] = difference(ours[key], exact)[2]
        extra["theirs_vs_float64"] = difference(theirs[key], exact)[2]
    return row(variant, group, name, ours[key], theirs[key], tolerance, **extra)


# --- the finetuning classifier -----------------------------------------------------------


def compare_classifier(ref, pcfg: ParityConfig, tmp: str) -> dict:
    """One SGD step of our --mode=finetune classifier and of classifier.py's, on the CIFAR
    recipe's encoder with nothing frozen (their --freeze=0), dropout masks shared.
    """
    import keras
    import tensorflow as tf

    from patchvae_tf.config import EvalConfig
    from patchvae_tf.evaluation import finetune
    from patchvae_tf.evaluation.probes import WEIGHT_DECAY
    from patchvae_tf.model import models

    cfg = variant_config("cifar", pcfg.image_size)
    m = cfg.model
    keras.utils.set_random_seed(pcfg.seed)
    model = models.build_model(m)
    ecfg = EvalConfig(finetune_learning_rate=SGD["lr"], seed=pcfg.seed)
    clf = finetune.Classifier(model, ecfg, pcfg.num_classes, frozen=0)
    spec = {
        "image_size": m.image_size,
        "num_parts": m.num_parts,
        "appearance_dim": m.appearance_dim,
        "scale": m.scale,
        "base_channels": m.base_channels,
        "num_classes": pcfg.num_classes,
        "freeze": 0,
    }
    modules = ref.request({"cmd": "classifier_layout", "classifier": spec})["modules"]
    dense = [layer for layer in clf.head.layers if isinstance(layer, keras.layers.Dense)]
    names = mapping(_flat([model.encoder]) + dense, modules)
    rng = np.random.default_rng(pcfg.seed)
    b, size = pcfg.batch_size, m.image_size
    images = rng.uniform(-1.0, 1.0, (b, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, pcfg.num_classes, b).astype(np.int64)
    grid = size // m.scale
    flat = grid * grid * model.encoder.channels
    keep = rng.uniform(size=(b, flat)) >= ecfg.dropout
    mask = (keep / (1.0 - ecfg.dropout)).astype(np.float32)  # our flatten order (h, w, c)
    # Their flatten runs over (c, h, w): the same mask, reordered.
    their_mask = mask.reshape(b, grid, grid, -1).transpose(0, 3, 1, 2).reshape(b, flat)
    from patchvae_tf.model import normalization

    x = normalization.normalize(images, m.normalization).numpy()
    weights = {}
    for k, v in names.items():
        value = to_torch(v.numpy())
        if k == f"{modules[-2]['name']}.weight":
            # Their first dense layer reads the features flattened as (c, h, w), ours (h, w, c).
            c = model.encoder.channels
            value = (
                value.reshape(-1, grid, grid, c).transpose(0, 3, 1, 2).reshape(value.shape[0], -1)
            )
        weights[f"w/{k}"] = value
    in_path, out_path = (
        os.path.join(tmp, "classifier_in.npz"),
        os.path.join(tmp, "classifier_out.npz"),
    )
    np.savez(in_path, x=_nchw(x), labels=labels, dropout_mask=their_mask, **weights)
    answer = ref.request(
        {"cmd": "classifier_step", "classifier": spec, "inputs": in_path, "out": out_path, **SGD}
    )
    theirs = dict(np.load(out_path))
    optimizer = keras.optimizers.SGD(SGD["lr"], momentum=SGD["momentum"])
    before = [v.numpy() for v in clf.variables]
    loss, features, logits, grads = clf.step(
        optimizer,
        tf.constant(images),
        tf.constant(labels.astype(np.int32)),
        dropout_mask=tf.constant(mask),
    )
    by_var = {id(v): k for k, v in names.items()}
    first = f"{modules[-2]['name']}.weight"
    c = model.encoder.channels

    def layout(k, value):
        value = to_torch(value)
        if k == first:
            value = (
                value.reshape(-1, grid, grid, c).transpose(0, 3, 1, 2).reshape(value.shape[0], -1)
            )
        return value

    ours = {
        "fwd/features": _nchw(features.numpy()),
        "fwd/logits": logits.numpy(),
        "term/cross_entropy": float(loss),
    }
    theirs["term/cross_entropy"] = answer["loss"]
    theirs["float64/term/cross_entropy"] = answer["loss64"]
    # Their p.grad is the loss's gradient (SGD adds weight_decay * w inside its step); ours
    # is taken of the loss plus the decay term, so the compared gradient is ours - wd * w.
    ours |= {
        f"grad/{by_var[id(v)]}": layout(by_var[id(v)], g.numpy() - WEIGHT_DECAY * w)
        for v, g, w in zip(clf.variables, grads, before, strict=True)
    }
    ours |= {f"step1/{k}": layout(k, v.numpy()) for k, v in names.items()}
    grads_theirs = {k for k in theirs if k.startswith("grad/")}
    if grads_theirs ^ {k for k in ours if k.startswith("grad/")}:
        raise ValueError(f"trained on one side only: {sorted(grads_theirs ^ set(ours))}")
    keys = [("forward", "fwd/features"), ("forward", "fwd/logits")]
    keys += [("loss", "term/cross_entropy")] + [("gradient", k) for k in sorted(grads_theirs)]
    for k in sorted(names):
        kind = "statistic" if k.endswith(("running_mean", "running_var")) else "parameter"
        keys.append((f"step1_{kind}", f"step1/{k}"))
    return {"rows": [compared("classifier", g, k, ours, theirs, names) for g, k in keys]}


# --- the run ---------------------------------------------------------------------------


def run(pcfg: ParityConfig, ref) -> dict:
    from benchmarks import hardware

    results = {
        "command": "python -m benchmarks.parity "
        + " ".join(
            f"--{k}={','.join(v) if isinstance(v, tuple) else v}"
            for k, v in pcfg.to_dict().items()
            if v not in ("", None, False)
        ),
        "config": pcfg.to_dict(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": hardware.machine(),
        "reference": ref.info,
        "difference": "max |ours - theirs| / max(max |theirs|, 1e-30), per tensor",
        "tolerances": TOLERANCES,
        "rows": [],
        "adam_epsilon_effect": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in pcfg.variants:
            print(f"parity: {name}", flush=True)
            if name == "classifier":
                part = compare_classifier(ref, pcfg, tmp)
            else:
                part = compare_model(name, variant_config(name, pcfg.image_size), ref, pcfg, tmp)
            results["rows"] += explain(part["rows"])
            results["adam_epsilon_effect"] += part.get("adam_epsilon_effect", [])
            results["summary"] = summary(results)
            write(pcfg.out, results)  # each variant as it is done
    results["summary"] = summary(results)
    results["all_within_tolerance"] = all(r["within_tolerance"] for r in results["rows"])
    results["all_explained"] = all(r["within_tolerance"] or "reason" in r for r in results["rows"])
    return results


def explain(rows: list) -> list:
    """Gives each row outside its tolerance the reason found, if the float64 run finds one.

    float32 rounding: ours is no further from their float64 result than their own float32
    result is, for this tensor (up to 3x) or for some tensor of the same group. Adam's step
    g / (sqrt(v) + eps) turns the rounding of gradients near zero into whole steps of lr,
    so after the first step single entries differ by 2 lr in both float32 runs.
    """
    floors: dict = {}
    for r in rows:
        if "theirs_vs_float64" in r:
            key = r["group"]
            floors[key] = max(floors.get(key, 0.0), r["theirs_vs_float64"])
    for r in rows:
        if r["within_tolerance"] or "ours_vs_float64" not in r:
            continue
        floor = max(r["tolerance"], 3 * r["theirs_vs_float64"], floors[r["group"]])
        if r["ours_vs_float64"] <= floor:
            r["reason"] = (
                f"float32 rounding: ours is {r['ours_vs_float64']:.1e} from their float64 run, "
                f"their float32 run {r['theirs_vs_float64']:.1e} (at most "
                f"{floors[r['group']]:.1e} in this group)"
            )
    return rows


def summary(results: dict) -> list:
    """Per variant and group: the worst row, how many rows are outside their tolerance and
    how many of those have no reason found; the worst distances from their float64 run.
    """
    groups: dict = {}
    for r in results["rows"]:
        groups.setdefault((r["variant"], r["group"]), []).append(r)
    for r in results["adam_epsilon_effect"]:
        groups.setdefault((r["variant"], "adam_epsilon_alone"), []).append(r)
    out = []
    for (variant, group), rows in groups.items():
        worst = max(rows, key=lambda x: x["difference"])
        outside = [x for x in rows if not x["within_tolerance"]]
        entry = {
            "variant": variant,
            "group": group,
            "tensors": len(rows),
            "outside": len(outside),
            "unexplained": sum(1 for x in outside if "reason" not in x),
            "worst": worst["name"],
            "difference": worst["difference"],
            "tolerance": worst["tolerance"],
        }
        for k in ("ours_vs_float64", "theirs_vs_float64"):
            if any(k in x for x in rows):
                entry[k] = max(x.get(k, 0.0) for x in rows)
        out.append(entry)
    return out


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Parity with the authors' code",
        "",
        f"`{results['command']}`",
        "",
        f"CPU: {m['cpu']} ({m['cpu_kind']}), {m['cores']} cores; "
        f"torch {results['reference']['torch']}. Difference: {results['difference']}. "
        "adam_epsilon_alone: their Adam with its epsilon against their Adam with Keras's "
        "(what the comparison removes).",
        "",
        "| variant | group | tensors | outside | no reason | worst | difference | tolerance "
        "| ours vs float64 | theirs vs float64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        lines.append(
            _cells(
                s["variant"],
                s["group"],
                s["tensors"],
                s["outside"],
                s["unexplained"],
                s["worst"],
                _e(s["difference"]),
                _e(s["tolerance"], 0),
                _e(s.get("ours_vs_float64")),
                _e(s.get("theirs_vs_float64")),
            )
        )
    lines += [
        "",
        "## Every tensor",
        "",
        "| variant | group | tensor | shape | difference | tolerance | within | ours vs float64 "
        "| theirs vs float64 | reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            _cells(
                r["variant"],
                r["group"],
                r["name"],
                "x".join(map(str, r["shape"])) or "scalar",
                _e(r["difference"]),
                _e(r["tolerance"], 0),
                "yes" if r["within_tolerance"] else "**no**",
                _e(r.get("ours_vs_float64")),
                _e(r.get("theirs_vs_float64")),
                r.get("reason", ""),
            )
        )
    return "\n".join(lines) + "\n"


def _e(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}e}"


def _cells(*values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def write(path: str, results: dict) -> None:
    from patchvae_tf.workdir import write_text_atomic

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_text_atomic(os.path.splitext(path)[0] + ".md", markdown(results))


def main(pcfg: ParityConfig) -> dict:
    from benchmarks import reference
    from patchvae_tf.errors import UserError

    if not pcfg.reference:
        raise UserError("--reference=PATH is required: a checkout of kampta/PatchVAE")
    ref = reference.start(
        pcfg.reference, pcfg.reference_python, pcfg.reference_setup, pcfg.reference_venv, WORKER
    )
    try:
        results = run(pcfg, ref)
    finally:
        ref.close()
    write(pcfg.out, results)
    print(markdown(results).split("\n## Every tensor")[0])
    outside = [r for r in results["rows"] if not r["within_tolerance"] and "reason" not in r]
    for r in outside:
        print(
            f"outside tolerance, no reason found: {r['variant']} {r['group']} {r['name']}: "
            f"{r['difference']:.2e} > {r['tolerance']:.0e}"
        )
    print(f"wrote {pcfg.out} and its .md")
    return results


def _cli() -> None:
    from patchvae_tf.config import cli
    from patchvae_tf.config.fields import check_options

    pcfg = cli.read(ParityConfig)
    check_options(pcfg)
    main(pcfg)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from patchvae_tf.config import cli

    cli.define(ParityConfig)
    cli.run(_cli)
    sys.exit(0)
