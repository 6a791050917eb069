"""Mixed precision and XLA train as float32 graph mode does."""

import numpy as np
import pytest
from conftest import small_config

# In this process: no devices or global state change.


def _one_batch(cfg):
    import tensorflow as tf

    from patchvae_tf import data

    source = data.get_source(cfg.data, cfg.model.image_size, cfg.train.seed)
    batch = next(iter(data.input_dataset(source, "train", cfg.train.batch_size, training=True)))
    return lambda: iter(tf.data.Dataset.from_tensors({"image": batch["image"]}).repeat())


def _trainer(cfg, policy="none", jit_compile=False, weights=None):
    """(model, optimizer, train_step) under the default strategy, as training.train makes them."""
    import keras
    import tensorflow as tf

    from patchvae_tf import training
    from patchvae_tf.training import precision

    keras.utils.set_random_seed(cfg.train.seed)
    model = precision.build_model_in_policy(cfg.model, policy)
    if weights is not None:
        model.set_weights(weights)
    optimizer = precision.wrap_optimizer(training.make_optimizer(cfg), policy)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    strategy = tf.distribute.get_strategy()
    return (
        model,
        optimizer,
        training.make_train_step(cfg, strategy, model, optimizer, step, jit_compile),
    )


def test_xla_agrees_with_graph_mode(tmp_path):
    """The same weights and batch give the same rates (no sampling in them) and, up to
    sampling noise, the same loss with and without XLA; TFP's relaxed samples compile.
    """
    cfg = small_config(tmp_path)
    batches = _one_batch(cfg)
    plain, _, plain_step = _trainer(cfg)
    xla, _, xla_step = _trainer(cfg, jit_compile=True, weights=plain.get_weights())
    start = [np.asarray(v) for v in xla.trainable_weights]
    a = {k: float(v) for k, v in plain_step(batches()).items()}
    b = {k: float(v) for k, v in xla_step(batches()).items()}
    assert all(np.isfinite(v) for v in b.values()), b
    np.testing.assert_allclose(b["rate_app"], a["rate_app"], rtol=1e-4)
    np.testing.assert_allclose(b["rate_occ"], a["rate_occ"], rtol=1e-4)
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-2)
    assert b["temperature"] == a["temperature"] == 1.0
    # The compiled step updated the weights, each by at most Adam's first step, lr = 1e-3.
    moved = [
        np.abs(np.asarray(v) - w).max() for v, w in zip(xla.trainable_weights, start, strict=True)
    ]
    assert 1e-4 < max(moved) <= 1.001e-3, max(moved)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(tmp_path, policy):
    """Networks compute in 16 bits, variables and latent math stay float32, losses stay
    finite and fall; the global dtype policy is left as it was.
    """
    import keras

    cfg = small_config(tmp_path)
    batches = _one_batch(cfg)
    before = keras.config.dtype_policy().name
    model, optimizer, train_step = _trainer(cfg, policy)
    assert keras.config.dtype_policy().name == before == "float32"
    half = policy.removeprefix("mixed_")
    assert model.encoder.compute_dtype == model.decoder.compute_dtype == half
    assert {v.dtype for v in model.weights} == {"float32"}
    out = model(batches().get_next()["image"], training=False)
    assert out["occurrence_logits"].dtype == out["reconstruction"].dtype == "float32"
    assert out["appearance_var"].dtype == "float32"
    it = batches()
    steps = 16 if policy == "mixed_float16" else 6
    losses = [float(train_step(it)["loss"]) for _ in range(steps)]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0] - 100, losses
    if policy == "mixed_float16":
        # The loss scale starts at 2^15 and halves, skipping the step, while the gradients of
        # this summed-over-pixels loss overflow float16 (about 9 steps here); the inner
        # optimizer counts the steps applied.
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(optimizer.dynamic_scale) < 2**15
        assert 0 < int(optimizer.iterations) < steps
