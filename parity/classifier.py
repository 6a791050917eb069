"""The parity harness's classifier run: one SGD step of our finetuning classifier and of the
authors' classifier.py, from the same weights, batch and dropout mask.
"""

from __future__ import annotations

import os

import numpy as np

from parity.steps import nchw, np_dtype, tensor_group, tolerance_for
from parity.tensors import SGD, _flat, difference, mapping, row, to_torch, variant_config


def compare_classifier(ref, pcfg, tmp: str, head: str = "flatten") -> dict:
    """One SGD step of our --mode=finetune classifier and of classifier.py's, on the CIFAR
    recipe's encoder with nothing frozen (their --freeze=0), dropout masks shared; head
    flatten (their SimpleClassifier on the flattened map) or pool (on its grid average, as
    their --arch=resnet18 classifier), then the inference-mode logits.
    """
    import dataclasses

    import keras
    import tensorflow as tf

    from patchvae_tf.config import EvalConfig
    from patchvae_tf.evaluation import finetune
    from patchvae_tf.evaluation.probes import WEIGHT_DECAY
    from patchvae_tf.model import normalization
    from patchvae_tf.training import precision

    label = "classifier" if head == "flatten" else "classifier_pool"
    dtype = np_dtype(pcfg)
    float64 = pcfg.dtype == "float64"
    cfg = variant_config("cifar", pcfg.image_size)
    m = cfg.model
    keras.utils.set_random_seed(pcfg.seed)
    ecfg = dataclasses.replace(
        EvalConfig(finetune_learning_rate=SGD["lr"], seed=pcfg.seed), classifier_head=head
    )
    with precision.policy_scope("float64" if float64 else "none"):
        model = precision.build_model_in_policy(m, "float64" if float64 else "none")
        clf = finetune.classifier(model, ecfg, pcfg.num_classes, frozen=0)
    spec = {
        "image_size": m.image_size,
        "num_parts": m.num_parts,
        "appearance_dim": m.appearance_dim,
        "scale": m.scale,
        "base_channels": m.base_channels,
        "num_classes": pcfg.num_classes,
        "freeze": 0,
        "head": head,
    }
    modules = ref.request({"cmd": "classifier_layout", "classifier": spec})["modules"]
    dense = [layer for layer in clf.head.layers if isinstance(layer, keras.layers.Dense)]
    names = mapping(_flat([model.encoder]) + dense, modules)
    rng = np.random.default_rng(pcfg.seed)
    b, size = pcfg.batch_size, m.image_size
    images = rng.uniform(-1.0, 1.0, (b, size, size, 3)).astype(dtype)
    labels = rng.integers(0, pcfg.num_classes, b).astype(np.int64)
    grid = size // m.scale
    c = model.encoder.channels
    flat = grid * grid * c if head == "flatten" else c
    # Our dropout layer's own draw for the step (our flatten order, h, w, c): its seed
    # generator's state put back, so the step draws the same mask; their side is given it.
    dropout = clf.head.layers[1]
    state = dropout.seed_generator.state.numpy()
    mask = dropout(tf.ones([b, flat], model.compute_dtype), training=True).numpy()
    dropout.seed_generator.state.assign(state)
    first = f"{modules[-2]['name']}.weight"

    def layout(k, value):
        """Their flatten runs over (c, h, w), ours over (h, w, c): the first dense layer's
        inputs (and the dropout mask) reordered.
        """
        value = to_torch(value)
        if k == first and head == "flatten":
            value = (
                value.reshape(-1, grid, grid, c).transpose(0, 3, 1, 2).reshape(value.shape[0], -1)
            )
        return value

    their_mask = mask
    if head == "flatten":
        their_mask = mask.reshape(b, grid, grid, -1).transpose(0, 3, 1, 2).reshape(b, flat)
    x = normalization.normalize(tf.constant(images), m.normalization).numpy()
    weights = {f"w/{k}": layout(k, v.numpy()) for k, v in names.items()}
    in_path = os.path.join(tmp, f"{label}_in.npz")
    np.savez(in_path, x=nchw(x), labels=labels, dropout_mask=their_mask, **weights)
    got = {}
    for key, double in (("theirs", float64), ("exact", True))[: 1 if float64 else 2]:
        out_path = os.path.join(tmp, f"{label}_{key}.npz")
        request = {"cmd": "classifier_step", "classifier": spec, "inputs": in_path}
        answer = ref.request({**request, "out": out_path, "double": double, **SGD})
        got[key] = dict(np.load(out_path)) | {"term/cross_entropy": answer["loss"]}
    with precision.policy_scope("float64" if float64 else "none"):
        optimizer = keras.optimizers.SGD(SGD["lr"], momentum=SGD["momentum"])
    before = [v.numpy() for v in clf.variables]
    loss, features, logits, grads = clf.step(
        optimizer, tf.constant(images), tf.constant(labels.astype(np.int32))
    )
    by_var = {id(v): k for k, v in names.items()}
    ours = {
        "fwd/features": nchw(features.numpy()),
        "fwd/logits": logits.numpy(),
        "term/cross_entropy": float(loss),
    }
    # Their p.grad is the loss's gradient (SGD adds weight_decay * w inside its step); ours
    # is taken of the loss plus the decay term, so the compared gradient is ours - wd * w.
    ours |= {
        f"grad/{by_var[id(v)]}": layout(by_var[id(v)], g.numpy() - WEIGHT_DECAY * w)
        for v, g, w in zip(clf.variables, grads, before, strict=True)
    }
    ours |= {f"state/{k}": layout(k, v.numpy()) for k, v in names.items()}
    ours["infer/logits"] = clf.logits(tf.constant(images), False).numpy()
    theirs = got["theirs"]
    if set(theirs) ^ set(ours):
        raise ValueError(f"{label}: tensors on one side only: {sorted(set(theirs) ^ set(ours))}")
    rows = []
    for key in sorted(ours):
        kind, name = key.split("/", 1)
        group = "inference" if kind == "infer" else tensor_group(key, names)
        extra = {"our_name": names[name].path} if name in names else {}
        if "exact" in got:
            extra["ours_vs_float64"] = difference(ours[key], got["exact"][key])[2]
            extra["theirs_vs_float64"] = difference(theirs[key], got["exact"][key])[2]
        # The inference-mode logits come after the step: step 2, as compare_model's.
        step = 2 if group == "inference" else 1
        tol = tolerance_for(pcfg, group, step)
        rows.append(row(label, group, name, ours[key], theirs[key], tol, step=step, **extra))
    return {"rows": rows}
