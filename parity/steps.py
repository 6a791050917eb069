"""The parity harness's two runs: the PatchVAE / VAE training step and the finetuning
classifier's SGD step, ours and the authors', from the same weights, batch and noise.
"""

from __future__ import annotations

import os

import numpy as np

from parity.tensors import (
    GROWTH_MARGIN,
    TOLERANCES,
    TOLERANCES64,
    _leaves,
    difference,
    mapping,
    row,
    to_torch,
)

# --- the PatchVAE / VAE training step --------------------------------------------------------


def nchw(x):
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def np_dtype(pcfg):
    return np.float64 if pcfg.dtype == "float64" else np.float32


def _spec(cfg) -> dict:
    """The variant as the worker builds it: their model, loss and BatchNorm constants."""
    m = cfg.model
    return {
        "arch": "patchy" if m.arch == "patchvae" else "vae",
        "encoder": m.encoder,
        "image_size": m.image_size,
        "num_parts": m.num_parts,
        "appearance_dim": m.appearance_dim,
        "scale": m.scale,
        "base_channels": m.base_channels,
        "categorical": m.categorical,
        "hard": m.hard,
        "beta_a": m.beta_app,
        "beta_v": m.beta_occ,
        # PyTorch's momentum weighs the batch: 1 - Keras's.
        "bn_momentum": 1.0 - m.batch_norm_momentum,
        "bn_eps": m.batch_norm_epsilon,
    }


def their_noise(cfg, seed, batch: int, dtype) -> dict:
    """The draws our sampler makes from a step's seed (latents.sample_occurrence and
    sample_appearance: TFP's stateless uniform and normal draws, the seed split in two by
    PatchVAE.call), in the shapes their torch.rand and torch.randn_like ask for.
    """
    import tensorflow as tf

    m = cfg.model
    tf_dtype = tf.as_dtype(dtype)
    code = m.num_parts * m.appearance_dim
    if m.arch == "vae":
        e = tf.random.stateless_normal([1, batch, code], seed, dtype=tf_dtype)[0].numpy()
        return {"normal": e.reshape(batch, code, 1, 1)}
    grid = m.image_size // m.scale
    occ_seed, app_seed = tf.random.experimental.stateless_split(seed, 2)
    shape = [1, batch, grid, grid, m.num_parts]
    tiny = np.finfo(dtype).tiny
    u = tf.random.stateless_uniform(shape, occ_seed, tiny, 1.0, tf_dtype)[0].numpy()
    e = tf.random.stateless_normal(
        [1, batch, m.num_parts, m.appearance_dim], app_seed, dtype=tf_dtype
    )
    # Theirs: [B, N, h, w] per part, or [B, h*w, N] flattened for categorical.
    uniform = u.reshape(batch, grid * grid, m.num_parts) if m.categorical else nchw(u)
    return {"uniform": uniform, "normal": e[0].numpy().reshape(batch, code)}


def _ours_extras(model, x, training: bool) -> dict:
    """The encoder's output and the heads (BatchNorm's statistics put back afterwards in
    training mode: the step itself does not return them).
    """
    import tensorflow as tf

    from patchvae_tf.model import normalization

    saved = [v.numpy() for v in model.non_trainable_variables]
    x = tf.cast(x, model.compute_dtype)
    f = model.encoder(normalization.normalize(x, model.input_space), training=training)
    out = {"features": f}
    if hasattr(model, "heads"):
        mean, logvar, logits = model.heads(f)
        out |= {"app_mu": mean, "app_logvar": logvar, "vis_mean_logit": logits}
    else:
        r = model.reduce(f, training=training)
        out |= {
            "reduce": r,
            "app_mu": model.posterior_mean(r),
            "app_logvar": model.posterior_logvar(r),
        }
    for v, value in zip(model.non_trainable_variables, saved, strict=True):
        v.assign(value)
    return {f"fwd/{k}": nchw(tf.convert_to_tensor(t).numpy()) for k, t in out.items()}


def _ours_outputs(outputs, batch: int) -> dict:
    out = {
        "fwd/x_hat": nchw(outputs["decoded"].numpy()),
        "fwd/mu_app": outputs["appearance_mean"].numpy().reshape(batch, -1),
        "fwd/var_app": outputs["appearance_var"].numpy().reshape(batch, -1),
    }
    if "occurrence" in outputs:
        out["fwd/q_occ"] = nchw(outputs["occurrence"].numpy())
    return out


_TERMS = {
    "patchvae": {
        "loss": "loss",
        "distortion": "recon",
        "rate_app": "kld_app",
        "rate_occ": "kld_vis",
    }
}
_TERMS["vae"] = {"loss": "loss", "distortion": "recon", "rate_app": "kld"}


_ORDER = ("fwd", "term", "grad", "state", "adam_m", "adam_v")


def tolerance_for(pcfg, group: str, step: int) -> float:
    table = TOLERANCES64 if pcfg.dtype == "float64" else TOLERANCES
    first = step == 1 and (group in ("forward", "loss") or pcfg.dtype == "float32")
    return table["first" if first else "later"]


def tensor_group(key: str, names: dict) -> str:
    kind, name = key.split("/", 1)
    if kind == "fwd":
        return "forward"
    if kind == "term":
        return "loss"
    if kind == "grad":
        return "gradient"
    if kind in ("adam_m", "adam_v"):
        return kind
    return "statistic" if name.endswith(("running_mean", "running_var")) else "parameter"


def compare_model(name: str, cfg, ref, pcfg, tmp: str, label: str | None = None) -> dict:
    """One variant, ours and theirs in lockstep: after every step, a row for every compared
    tensor (the forward pass, the loss terms, every gradient, and after the step every
    parameter, Adam moment and BatchNorm statistic), then the inference-mode forward pass.
    """
    import keras
    import tensorflow as tf

    from patchvae_tf.model import normalization
    from patchvae_tf.training import precision, step

    label = label or name
    dtype = np_dtype(pcfg)
    float64 = pcfg.dtype == "float64"
    keras.utils.set_random_seed(pcfg.seed)
    model = precision.build_model_in_policy(cfg.model, "float64" if float64 else "none")
    m, spec = cfg.model, _spec(cfg)
    modules = ref.request({"cmd": "layout", "variant": spec})["modules"]
    names = mapping(_leaves(model), modules)
    steps, batch = pcfg.steps, pcfg.batch_size
    rng = np.random.default_rng(pcfg.seed)
    images = rng.uniform(-1.0, 1.0, (batch, m.image_size, m.image_size, 3)).astype(dtype)
    x = tf.constant(images)
    normalized = normalization.normalize(x, m.normalization).numpy()
    weights = {f"w/{k}": to_torch(v.numpy()) for k, v in names.items()}
    in_path = os.path.join(tmp, f"{label.replace('/', '_')}_in.npz")
    np.savez(in_path, x=nchw(normalized), **weights)
    # Keras adds epsilon to sqrt(v) before the bias correction: the same update as PyTorch's
    # with epsilon / sqrt(1 - beta_2^t), which their side is given step by step.
    eps = cfg.train.adam_epsilon
    keras_eps = [eps / np.sqrt(1.0 - 0.999**t) for t in range(1, steps + 1)]
    start = {
        "cmd": "start",
        "variant": spec,
        "inputs": in_path,
        "lr": cfg.train.learning_rate,
        "betas": [0.5, 0.999],  # run.py's
        "adam_eps": keras_eps,
        "tau": {"init": m.tau_init, "min": m.tau_min, "anneal": m.anneal_rate},
    }
    # Sessions: theirs in the run's dtype; in float32 also their float64 run (the rounding
    # reference) and, with --growth, two more float32 runs of theirs, on PyTorch's own CPU
    # kernels instead of oneDNN's (another order of the same sums) and from weights one ulp
    # away: how far rounding alone carries a float32 run, per tensor. In float64 with
    # --growth their run from weights one ulp away (float64's own growth).
    sessions = {"theirs": {"double": float64}}
    if not float64:
        sessions["exact"] = {"double": True}
        if pcfg.growth:
            sessions["spread_native"] = {"double": False, "mkldnn": False}
            sessions["spread_ulp"] = {"double": False, "perturb": True}
    elif pcfg.growth:
        sessions["ulp"] = {"double": True, "perturb": True}
    for key, extra in sessions.items():
        ref.request({**start, "key": f"{label}:{key}", **extra})
    with precision.policy_scope("float64" if float64 else "none"):
        optimizer = step.make_optimizer(cfg)  # its learning rate in float64 too
    variables = model.trainable_variables
    forward_backward = step.loss_and_gradients(model, optimizer, batch)

    @tf.function
    def train_step(x, tau, seed):
        # What make_train_step's replica step runs on one replica.
        grads, terms, outputs = forward_backward(x, tau, seed)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return grads, terms, outputs

    by_var = {id(v): k for k, v in names.items()}
    terms_map = _TERMS[m.arch]
    rows: list = []

    def theirs_step(cmd, t, noise_path) -> dict:
        got = {}
        for key in sessions:
            out_path = os.path.join(tmp, f"{label.replace('/', '_')}_{key}.npz")
            answer = ref.request(
                {"cmd": cmd, "key": f"{label}:{key}", "noise": noise_path, "out": out_path}
            )
            arrays = dict(np.load(out_path))
            os.remove(out_path)
            if "terms" in answer:
                arrays |= {f"term/{k}": answer["terms"][v] for k, v in terms_map.items()}
            got[key] = arrays
        return got

    def compare(t, ours, got, group_of=None):
        theirs = got["theirs"]
        missing = sorted(set(theirs) ^ set(ours))
        if missing:
            raise ValueError(f"{label} step {t}: tensors on one side only: {missing[:8]}")
        # In the order the step computes them, so the first row outside is the cause.
        for key in sorted(ours, key=lambda k: (_ORDER.index(k.split("/", 1)[0]), k)):
            group = group_of or tensor_group(key, names)
            tensor = key.split("/", 1)[1]
            prefix = key.split("/", 1)[0]
            shown = tensor if prefix in ("fwd", "term", "grad", "state") else f"{prefix}:{tensor}"
            extra = {"our_name": names[tensor].path} if tensor in names else {}
            tol = tolerance_for(pcfg, group, t)
            if "exact" in got:
                exact = got["exact"][key]
                extra["ours_vs_float64"] = difference(ours[key], exact)[2]
                extra["theirs_vs_float64"] = difference(theirs[key], exact)[2]
                spread = [difference(got[k][key], exact)[2] for k in got if k.startswith("spread")]
                if spread:
                    extra["float32_spread"] = max([extra["theirs_vs_float64"], *spread])
            if "ulp" in got:
                growth = difference(got["ulp"][key], theirs[key])[2]
                extra["growth"] = growth
                tol = max(tol, GROWTH_MARGIN * growth)
            rows.append(row(label, group, shown, ours[key], theirs[key], tol, step=t, **extra))

    def our_noise(t):
        seed = step.step_seed(cfg, 0, t)
        path = os.path.join(tmp, f"{label.replace('/', '_')}_noise.npz")
        np.savez(path, **their_noise(cfg, seed, batch, dtype))
        return seed, path

    for t in range(steps):
        seed, noise_path = our_noise(t)
        got = theirs_step("step", t + 1, noise_path)
        ours = _ours_extras(model, x, True) if t in (0, steps - 1) else {}
        if not ours:  # their hooks record the heads every step; compared where ours are
            for key in got:
                got[key] = {k: a for k, a in got[key].items() if not _is_extra(k)}
        grads, terms, outputs = train_step(x, step.step_temperature(cfg, t), seed)
        ours |= _ours_outputs(outputs, batch)
        ours |= {f"term/{k}": float(terms[k]) for k in terms_map}
        ours |= {
            f"grad/{by_var[id(v)]}": to_torch(g.numpy())
            for v, g in zip(variables, grads, strict=True)
        }
        ours |= {f"state/{k}": to_torch(v.numpy()) for k, v in names.items()}
        for v in variables:
            index = optimizer._get_variable_index(v)
            ours[f"adam_m/{by_var[id(v)]}"] = to_torch(optimizer._momentums[index].numpy())
            ours[f"adam_v/{by_var[id(v)]}"] = to_torch(optimizer._velocities[index].numpy())
        compare(t + 1, ours, got)
    # The inference-mode forward pass (BatchNorm's moving statistics), the next step's noise.
    seed, noise_path = our_noise(steps)
    got = theirs_step("infer", steps + 1, noise_path)
    tau = step.step_temperature(cfg, steps)
    outputs = model(x, training=False, temperature=tau, seed=seed)
    ours = _ours_extras(model, x, False) | _ours_outputs(outputs, batch)
    compare(steps + 1, ours, got, group_of="inference")
    for key in sessions:
        ref.request({"cmd": "drop", "key": f"{label}:{key}"})
    return {"rows": rows}


def _is_extra(key: str) -> bool:
    return key in (
        "fwd/features",
        "fwd/app_mu",
        "fwd/app_logvar",
        "fwd/vis_mean_logit",
        "fwd/reduce",
    )
