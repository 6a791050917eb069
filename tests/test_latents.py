import math

import numpy as np
import pytest
import tensorflow as tf

from patchvae_tf.model import latents


def test_pooling_matches_numpy():
    rng = np.random.default_rng(0)
    b, h, w, n, d = 2, 3, 3, 4, 2
    mean = rng.normal(size=(b, h, w, n * d)).astype(np.float32)
    logvar = rng.normal(size=(b, h, w, n * d)).astype(np.float32)
    q = rng.uniform(size=(b, h, w, n)).astype(np.float32)
    mu_app, var_app = latents.pool_appearance(mean, logvar, q, n, d)
    m = mean.reshape(b, h, w, n, d)
    v = np.exp(logvar).reshape(b, h, w, n, d)
    qq = q[..., None]
    total = qq.sum(axis=(1, 2))
    np.testing.assert_allclose(mu_app, (qq * m).sum(axis=(1, 2)) / (total + 1e-7), rtol=1e-5)
    np.testing.assert_allclose(
        var_app, ((qq * v).sum(axis=(1, 2)) + 1e-7) / (total + 1e-7), rtol=1e-5
    )


def test_pooling_single_location_and_no_gradient_to_weights():
    mean = tf.constant(np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2))  # N=2, L=1
    logvar = tf.zeros([1, 2, 2, 2])
    q = tf.Variable(np.array([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]], np.float32))
    with tf.GradientTape() as tape:
        mu_app, var_app = latents.pool_appearance(mean, logvar, q, 2, 1)
    # Part 0 only at (0, 0) where its mean is 0; part 1 only at (1, 1) where its mean is 7.
    np.testing.assert_allclose(mu_app.numpy()[0, :, 0], [0.0, 7.0], atol=1e-5)
    np.testing.assert_allclose(var_app.numpy()[0, :, 0], [1.0, 1.0], atol=1e-5)
    assert tape.gradient(mu_app, q) is None


def test_compose_places_codes_where_parts_occur():
    z_app = tf.constant([[[1.0, 2.0], [3.0, 4.0]]])  # [1, N=2, L=2]
    z_occ = tf.constant([[[[1.0, 0.0], [0.0, 0.5]]]])  # [1, 1, 2, N]
    z_hat = latents.compose(z_app, z_occ).numpy()
    np.testing.assert_allclose(z_hat[0, 0, 0], [1.0, 2.0, 0.0, 0.0])
    np.testing.assert_allclose(z_hat[0, 0, 1], [0.0, 0.0, 1.5, 2.0])


def test_hard_occurrences_are_binary_with_gradients():
    logits = tf.Variable(tf.random.normal([2, 3, 3, 4], seed=1))
    with tf.GradientTape() as tape:
        z = latents.sample_occurrence(logits, 0.5, hard=True)
        loss = tf.reduce_sum(z * tf.range(4, dtype=tf.float32))
    values = np.unique(z.numpy())
    assert set(values.tolist()) <= {0.0, 1.0}
    np.testing.assert_array_equal(z.numpy(), (logits.numpy() > 0).astype(np.float32))
    grad = tape.gradient(loss, logits)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0


def test_hard_categorical_occurrences_are_one_hot_argmax_with_gradients():
    logits = tf.Variable(tf.random.normal([2, 3, 3, 4], seed=3))
    with tf.GradientTape() as tape:
        z = latents.sample_occurrence(logits, 0.5, categorical=True, hard=True)
        loss = tf.reduce_sum(z * tf.range(4, dtype=tf.float32))
    expected = np.eye(4, dtype=np.float32)[np.argmax(logits.numpy(), axis=-1)]
    np.testing.assert_array_equal(z.numpy(), expected)
    grad = tape.gradient(loss, logits)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0


def test_categorical_occurrences_sum_to_one():
    logits = tf.random.normal([2, 3, 3, 5], seed=2)
    z = latents.sample_occurrence(logits, 0.7, categorical=True)
    np.testing.assert_allclose(tf.reduce_sum(z, -1).numpy(), 1.0, rtol=1e-5)
    q = latents.occurrence_probs(logits, categorical=True)
    np.testing.assert_allclose(tf.reduce_sum(q, -1).numpy(), 1.0, rtol=1e-5)


def test_relaxed_bernoulli_is_nearly_binary_with_sigmoid_odds_at_low_temperature():
    # At a low temperature relaxed samples are nearly binary with P(z > 0.5) = sigmoid(l).
    logits = tf.fill([20000], 1.0)
    z = latents.sample_occurrence(logits, 0.05).numpy()
    assert abs((z > 0.5).mean() - 1 / (1 + math.exp(-1.0))) < 0.02


@pytest.mark.parametrize(
    "schedule,step,expected",
    [
        # The authors' compounding schedule, at the steps the reproduction notes quote.
        ("reference", 0, 1.0),
        ("reference", 1, math.exp(-3e-5)),
        ("reference", 5000, 0.741),
        ("reference", 10000, 0.259),
        ("reference", 11700, 0.138),
        ("reference", 12001, 0.1),
        # tau_0 exp(-rate t), t held for 1000 steps.
        ("exponential", 0, 1.0),
        ("exponential", 999, 1.0),
        ("exponential", 5000, 0.861),
        ("exponential", 10000, 0.741),
        ("exponential", 11700, 0.719),
        ("exponential", 77000, 0.1),
        ("exponential", 10**6, 0.1),
    ],
)
def test_temperature_schedules(schedule, step, expected):
    tau = latents.temperature(tf.constant(step, tf.int64), 1.0, 0.1, 3e-5, schedule)
    assert abs(float(tau) - expected) < 5e-4


def test_reference_schedule_equals_the_authors_loop():
    """The closed form against their loop: after step t, if t % 1000 == 1, tau decays by t."""
    tau, rate, taus = 1.0, 3e-4, {}
    for t in range(1, 20002):
        if t % 1000 == 1:
            tau = max(tau * math.exp(-rate * t), 0.05)
        taus[t] = tau
    for k in (1, 2, 999, 1000, 1001, 1002, 5001, 7777, 12000, 20001):
        ours = latents.temperature(tf.constant(k, tf.int64), 1.0, 0.05, rate, "reference")
        assert abs(float(ours) - taus[k]) < 1e-6, k


def test_prior_samples_have_prior_rate():
    z = latents.sample_prior(64, 4, 8, 1, prior=0.25)
    occupied = (tf.abs(z) > 0).numpy().mean()
    assert 0.2 < occupied < 0.3
    z = latents.sample_prior(64, 4, 8, 1, prior=0.05)
    assert 0.03 < (tf.abs(z) > 0).numpy().mean() < 0.07


def test_relaxed_bernoulli_sample_matches_tfp_law_and_has_finite_gradients():
    logits = tf.Variable(tf.fill([40000], 0.7))
    ours = latents.sample_occurrence(logits, 0.5).numpy()
    theirs = latents.occurrence_posterior(logits, 0.5).sample(seed=1).numpy()
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(ours, qs), np.quantile(theirs, qs), atol=0.02)
    # Confident logits at a low temperature push (l + noise) / tau past exp's float32 range;
    # the gradient must stay finite there (TFP's own sampler gives NaN).
    big = tf.Variable(tf.fill([20000], 20.0))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(latents.sample_occurrence(big, 0.1))
    assert np.isfinite(tape.gradient(total, big).numpy()).all()


def test_seeded_samples_reparameterise_the_seeds_stateless_draws():
    """With a stateless seed the samplers use TFP's draws, which the parity harness replays
    into the authors' samplers: u = stateless_uniform([1, *shape], seed, tiny, 1) (logistic
    noise logit(u); Gumbel noise -log(-log u)) and e = stateless_normal([1, *shape], seed).
    """
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(2, 3, 3, 4)))  # float64: agreement to rounding
    seed = tf.constant([3, 7], tf.int32)
    tiny = np.finfo(np.float64).tiny
    u = tf.random.stateless_uniform([1, 2, 3, 3, 4], seed, tiny, 1.0, tf.float64)[0].numpy()
    z = latents.sample_occurrence(logits, 0.5, seed=seed).numpy()
    expected = 1.0 / (1.0 + np.exp(-(logits.numpy() + np.log(u / (1 - u))) / 0.5))
    np.testing.assert_allclose(z, expected, rtol=1e-13)
    z = latents.sample_occurrence(logits, 0.5, categorical=True, seed=seed).numpy()
    scores = (logits.numpy() - np.log(-np.log(u))) / 0.5
    expected = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    np.testing.assert_allclose(z, expected, rtol=1e-13)
    hard = latents.sample_occurrence(logits, 0.5, hard=True, seed=seed).numpy()
    np.testing.assert_array_equal(hard, (logits.numpy() > 0).astype(np.float64))
    # --categorical --hard: one part per cell, or (the authors') each part's sign.
    one_hot = latents.sample_occurrence(logits, 0.5, categorical=True, hard=True, seed=seed)
    np.testing.assert_array_equal(one_hot.numpy().sum(-1), 1.0)
    sign = latents.sample_occurrence(
        logits, 0.5, categorical=True, hard=True, hard_categorical="sign", seed=seed
    )
    np.testing.assert_array_equal(sign.numpy(), (logits.numpy() > 0).astype(np.float64))
    with pytest.raises(ValueError, match="Received: hard_categorical='argmax'"):
        latents.sample_occurrence(logits, 0.5, hard_categorical="argmax")
    mu, var = rng.normal(size=(2, 4, 3)), rng.uniform(0.1, 2.0, size=(2, 4, 3))
    e = tf.random.stateless_normal([1, 2, 4, 3], seed, dtype=tf.float64)[0].numpy()
    z = latents.sample_appearance(tf.constant(mu), tf.constant(var), seed).numpy()
    np.testing.assert_allclose(z, mu + np.sqrt(var) * e, rtol=1e-13)
