"""Recognition by linear probes on frozen features and part codes."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf.config import EvalConfig
from patchvae_tf.evaluation.setup import Setup, batches
from patchvae_tf.recognition.classifier import WEIGHT_DECAY
from patchvae_tf.recognition.fit import topk_accuracy

__all__ = ["WEIGHT_DECAY", "encode_split", "linear_probe", "run_probes", "topk_accuracy"]


def _codes(encoded: dict) -> tf.Tensor:
    """The part codes [B, C]: max-pooled q_occ [B, N] beside appearance means [B, N*L]."""
    appearance = tf.reshape(encoded["appearance"], [tf.shape(encoded["appearance"])[0], -1])
    if "occurrence" not in encoded:  # the VAE's code is its appearance alone
        return appearance
    return tf.concat([tf.reduce_max(encoded["occurrence"], axis=[1, 2]), appearance], axis=-1)


def encode_split(
    model, source, split: str, limit: int, batch_size: int, title: str = ""
) -> dict[str, np.ndarray]:
    """Features [n, D], part codes [n, C] and labels [n] of up to ``limit`` examples (under
    a progress bar when given a title).
    """
    encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
    out = {"features": [], "codes": [], "labels": []}
    for batch in batches(source, split, limit, batch_size, title):
        encoded = encode(tf.constant(batch["image"]))
        out["features"].append(encoded["features"].numpy())
        out["codes"].append(_codes(encoded).numpy())
        out["labels"].append(batch["label"])
    return {k: np.concatenate(v) for k, v in out.items()}


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    steps: int,
    learning_rate: float,
) -> dict[str, float]:
    """Softmax regression on frozen features [n, D]; top-1 / top-5 on the test rows.

    Features are standardised with the training rows' statistics; full-batch Adam with a
    small L2 penalty (the optimum is then unique, so the result does not depend on luck).
    """
    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    x = tf.constant((train_x - mean) / std, tf.float32)
    y = tf.constant(train_y, tf.int32)
    w = tf.Variable(tf.zeros([x.shape[1], num_classes]))
    b = tf.Variable(tf.zeros([num_classes]))
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, w) + b
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_mean(ce) + WEIGHT_DECAY * tf.reduce_sum(w * w)
        optimizer.apply_gradients(zip(tape.gradient(loss, [w, b]), [w, b], strict=True))
        return loss

    for _ in range(steps):
        step()
    test_logits = ((test_x - mean) / std).astype(np.float32) @ w.numpy() + b.numpy()
    train_logits = x.numpy() @ w.numpy() + b.numpy()
    return {
        "top1": topk_accuracy(test_logits, test_y, 1),
        "top5": topk_accuracy(test_logits, test_y, 5),
        "train_top1": topk_accuracy(train_logits, train_y, 1),
    }


def run_probes(model, random_model, setup: Setup, ecfg: EvalConfig) -> dict[str, dict]:
    """The four linear probes: trained and random encoder, pooled features and part codes."""
    k, n = setup.source.num_classes, ecfg.eval_examples
    results = {}
    names = {
        ("trained", "features"): "linear_probe",
        ("trained", "codes"): "part_code_probe",
        ("random", "features"): "random_probe",
        ("random", "codes"): "random_part_code_probe",
    }
    for which, m in (("trained", model), ("random", random_model)):
        train, test = (
            encode_split(m, setup.source, split, n, ecfg.batch_size, f"probe: {which} {split}")
            for split in ("train", "test")
        )
        for key in ("features", "codes"):
            results[names[which, key]] = linear_probe(
                train[key],
                train["labels"],
                test[key],
                test["labels"],
                k,
                ecfg.probe_steps,
                ecfg.probe_learning_rate,
            ) | {
                "train_examples": len(train["labels"]),
                "test_examples": len(test["labels"]),
                # What always answering the test split's most common label scores: the floor
                # that matters when the classes are unbalanced.
                "majority_top1": float(np.bincount(test["labels"]).max() / len(test["labels"])),
            }
    return results
