"""FLOPs per image, counted from the traced TensorFlow graph (convolutions and matmuls)."""

from __future__ import annotations

import math

import tensorflow as tf

from patchvae_tf.model.autoencoder import Autoencoder

# Multiply-adds are 2 FLOPs. Elementwise ops (BatchNorm, activations, the latent math and
# the loss) are left out: they are a few percent of the convolutions here, and no count of
# them is comparable across frameworks.
_BATCH = 2


def _dims(t) -> list[int]:
    dims = t.shape.as_list()
    if None in dims:
        raise ValueError(f"op input {t.name} has unknown shape {dims}; trace with fixed shapes")
    return dims


def op_flops(op) -> int:
    """FLOPs of one graph op; 0 for ops that are not convolutions or matmuls.

    tf.profiler registers only the forward Conv2D; the transposed convolutions of the
    decoder (Conv2DBackpropInput) and every gradient convolution need their own counts.
    """
    kind = op.type
    if kind == "Conv2D":
        k = _dims(op.inputs[1])  # [kh, kw, in, out]
        return 2 * math.prod(_dims(op.outputs[0])) * k[0] * k[1] * k[2]
    if kind in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):
        # Both visit every (output-gradient element, kernel tap, input channel) once.
        grad = _dims(op.inputs[2])  # [B, Ho, Wo, out]
        k = _dims(op.inputs[1]) if kind == "Conv2DBackpropInput" else _dims(op.outputs[0])
        return 2 * math.prod(grad) * k[0] * k[1] * k[2]
    if kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = _dims(op.inputs[0])
        transposed = op.get_attr("transpose_a" if kind == "MatMul" else "adj_x")
        inner = a[-2] if transposed else a[-1]
        return 2 * math.prod(_dims(op.outputs[0])) * inner
    return 0


def graph_flops(graph) -> dict[str, int]:
    """Op type -> FLOPs summed over the graph (ops inside nested functions included)."""
    totals: dict[str, int] = {}
    for op in graph.get_operations():
        n = op_flops(op)
        if n:
            totals[op.type] = totals.get(op.type, 0) + n
    for fn in getattr(graph, "_functions", {}).values():
        inner = getattr(fn, "graph", None)
        if inner is not None and inner is not graph:
            for k, v in graph_flops(inner).items():
                totals[k] = totals.get(k, 0) + v
    return totals


def _per_image(fn, image_size: int) -> dict:
    spec = tf.TensorSpec([_BATCH, image_size, image_size, 3], tf.float32)
    by_op = graph_flops(tf.function(fn).get_concrete_function(spec).graph)
    return {
        "total": sum(by_op.values()) // _BATCH,
        "by_op": {k: v // _BATCH for k, v in sorted(by_op.items())},
    }


def count(model: Autoencoder) -> dict:
    """Per image: encoder inference (what is exported), training forward, and a whole
    training step (forward and backward), counted from their traced graphs.
    """
    size = model.image_size

    def encode(x):
        return model.encode(x, training=False)

    def forward(x):
        return model.loss_terms(x, model(x, training=True))["loss"]

    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model.loss_terms(x, model(x, training=True))["loss"])
        return tape.gradient(loss, model.trainable_variables)

    return {
        "method": "counted from the traced graphs: Conv2D, Conv2DBackpropInput/Filter and "
        "MatMul ops, 2 FLOPs per multiply-add; elementwise ops left out",
        "encoder_inference": _per_image(encode, size),
        "train_forward": _per_image(forward, size),
        "train_step": _per_image(train, size),
    }
