"""The parity harness's two runs: the PatchVAE / VAE training step and the finetuning
classifier's SGD step, ours and the authors', from the same weights, batch and noise.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.parity_tensors import (
    SGD,
    TOLERANCES,
    _flat,
    _leaves,
    difference,
    mapping,
    row,
    to_torch,
    variant_config,
)

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


def compare_model(name: str, cfg, ref, pcfg, tmp: str) -> dict:
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


def compare_classifier(ref, pcfg, tmp: str) -> dict:
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
    clf = finetune.classifier(model, ecfg, pcfg.num_classes, frozen=0)
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
