"""The fused BatchNorm and Adam compute what Keras's own layers compute, on the same variables."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from patchvae_tf.model.fused import FusedAdam, FusedBatchNorm


def _pair(**kwargs):
    """A Keras BatchNormalization and a FusedBatchNorm with the same (non-trivial) weights."""
    ref, fused = keras.layers.BatchNormalization(**kwargs), FusedBatchNorm(**kwargs)
    rng = np.random.default_rng(0)
    for layer in (ref, fused):
        layer.build((None, 5, 5, 4))
    for weights in zip(ref.weights, fused.weights, strict=True):
        value = rng.uniform(0.5, 1.5, size=weights[0].shape).astype("float32")
        for w in weights:
            w.assign(value)
    return ref, fused


def test_batchnorm_training_matches_keras_output_and_gradients():
    ref, fused = _pair(momentum=0.9)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(3.0, 2.0, size=(8, 5, 5, 4)), "float32")
    weights = tf.constant(rng.normal(size=(8, 5, 5, 4)), "float32")
    outputs, grads = [], []
    for layer in (ref, fused):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * weights)
        outputs.append(y.numpy())
        grads.append([g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])])
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    # A hand check: per channel, the output has mean beta and standard deviation ~gamma.
    np.testing.assert_allclose(outputs[1].mean(axis=(0, 1, 2)), fused.beta.numpy(), atol=1e-5)
    for g_ref, g_fused in zip(grads[0], grads[1], strict=True):
        assert np.abs(g_ref).max() > 0.1
        np.testing.assert_allclose(g_fused, g_ref, rtol=1e-4, atol=1e-4)


def test_batchnorm_moving_statistics_use_the_unbiased_variance():
    ref, fused = _pair(momentum=0.9)
    x = np.random.default_rng(2).normal(1.0, 3.0, size=(8, 5, 5, 4)).astype("float32")
    start_mean, start_var = fused.moving_mean.numpy(), fused.moving_variance.numpy()
    fused(tf.constant(x), training=True)
    n = x.size // 4
    batch_mean, batch_var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)) * n / (n - 1)
    np.testing.assert_allclose(
        fused.moving_mean.numpy(), 0.9 * start_mean + 0.1 * batch_mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        fused.moving_variance.numpy(), 0.9 * start_var + 0.1 * batch_var, rtol=1e-5
    )


@pytest.mark.parametrize("trainable", [True, False])
def test_batchnorm_inference_and_frozen_layers_use_moving_statistics(trainable):
    ref, fused = _pair()
    ref.trainable = fused.trainable = trainable
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 5, 5, 4)), "float32")
    before = fused.moving_mean.numpy()
    np.testing.assert_allclose(fused(x, training=False), ref(x, training=False), atol=1e-5)
    if not trainable:  # a frozen layer normalises with its moving statistics even in training
        np.testing.assert_allclose(fused(x, training=True), ref(x, training=True), atol=1e-5)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), before)


def test_batchnorm_keeps_keras_variables_and_config():
    fused = FusedBatchNorm(momentum=0.95, epsilon=1e-4)
    fused.build((None, 2, 2, 3))
    assert [w.path.split("/")[-1] for w in fused.weights] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]
    clone = FusedBatchNorm.from_config(fused.get_config())
    assert (clone.momentum, clone.epsilon) == (0.95, 1e-4)


def test_adam_matches_keras_adam_step_by_step():
    rng = np.random.default_rng(4)
    start = [rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32")]
    grads = [[tf.constant(rng.normal(size=w.shape), "float32") for w in start] for _ in range(4)]
    results = []
    for cls in (keras.optimizers.Adam, FusedAdam):
        variables = [tf.Variable(w) for w in start]
        optimizer = cls(learning_rate=0.01, beta_1=0.5, beta_2=0.999)
        for g in grads:
            optimizer.apply_gradients(zip(g, variables, strict=True))
        results.append([v.numpy() for v in variables] + [int(optimizer.iterations)])
    for a, b in zip(results[0], results[1], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)  # float rounding order
    # And it moved: four steps of size ~lr each.
    assert np.abs(results[1][0] - start[0]).max() > 0.02


def _op_types(fn):
    graph = tf.function(fn).get_concrete_function().graph
    return {op.type for op in graph.get_operations()}


def test_kernels_are_chosen_by_dtype_and_float64_computes_the_same():
    """float32 runs TF's FusedBatchNormV3; float64 (no such kernel) the same step as separate
    ops, with the unbiased variance in the moving statistics; Adam is fused in both.
    """
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 3.0, size=(4, 3, 3, 2))
    results = {}
    for dtype in ("float32", "float64"):
        layer = FusedBatchNorm(momentum=0.9, dtype=dtype)
        layer.build((None, 3, 3, 2))
        layer.gamma.assign([1.5, 0.5])
        xt = tf.constant(x, dtype)
        fused_op = "FusedBatchNormV3" in _op_types(lambda bn=layer, xt=xt: bn(xt, training=True))
        assert fused_op is (dtype == "float32"), dtype
        y = layer(xt, training=True)
        assert y.dtype == dtype
        results[dtype] = (y.numpy(), layer.moving_mean.numpy(), layer.moving_variance.numpy())
        variables = [tf.Variable(np.array([1.0, 2.0], dtype))]
        optimizer = FusedAdam()
        optimizer.build(variables)
        ops = _op_types(
            lambda o=optimizer, v=variables, d=dtype: o.apply_gradients([(tf.ones([2], d), v[0])])
        )
        assert "ResourceApplyAdam" in ops, dtype
    n = x.size // 2
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    y64, mean64, var64 = results["float64"]
    np.testing.assert_allclose(y64, (x - mean) / np.sqrt(var + 1e-3) * [1.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(mean64, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(var64, 0.9 + 0.1 * var * n / (n - 1), rtol=1e-12)
    for a, b in zip(results["float32"], results["float64"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # The config round-trips with no switch of its own: the dtype chooses the kernel.
    config = FusedBatchNorm().get_config()
    assert "fused" not in config
    assert FusedBatchNorm.from_config(config).get_config() == config


def test_adam_checkpoints_are_interchangeable_with_keras_adam(tmp_path):
    """A checkpoint written with keras.optimizers.Adam (what train.py used before FusedAdam,
    so older workdirs hold one) restores into FusedAdam: the same slot variables under the
    same names."""
    variables = [tf.Variable([1.0, -2.0, 3.0])]
    keras_adam = keras.optimizers.Adam(learning_rate=0.1)
    for g in ([0.5, -1.0, 2.0], [1.0, 1.0, -1.0]):
        keras_adam.apply_gradients([(tf.constant(g), variables[0])])
    path = tf.train.Checkpoint(optimizer=keras_adam, v=variables[0]).save(str(tmp_path / "ck"))

    restored = [tf.Variable([0.0, 0.0, 0.0])]
    adam = FusedAdam(learning_rate=0.1)
    adam.build(restored)
    tf.train.Checkpoint(optimizer=adam, v=restored[0]).restore(path).assert_consumed()
    assert int(adam.iterations) == 2
    for a, b in zip(keras_adam.variables, adam.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
