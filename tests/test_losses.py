import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from patchvae_tf.model import losses

tfd = tfp.distributions


def test_rate_app_matches_closed_form_and_tfp():
    rng = np.random.default_rng(0)
    mu = rng.normal(size=(3, 4, 5)).astype(np.float32)
    var = rng.uniform(0.1, 3.0, size=(3, 4, 5)).astype(np.float32)
    got = losses.rate_app(mu, var).numpy()
    closed = 0.5 * np.sum(var + mu**2 - 1.0 - np.log(var), axis=(1, 2))
    tfp_kl = tfd.kl_divergence(tfd.Normal(mu, np.sqrt(var)), tfd.Normal(0.0, 1.0))
    np.testing.assert_allclose(got, closed, rtol=1e-5)
    np.testing.assert_allclose(got, tf.reduce_sum(tfp_kl, axis=[1, 2]).numpy(), rtol=1e-5)
    assert abs(losses.rate_app(np.zeros((1, 2)), np.ones((1, 2))).numpy()[0]) < 1e-7


def test_rate_occ_matches_tfp_bernoulli_kl():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(2, 3, 3, 5)).astype(np.float32)
    prior = 0.2
    expected = tfd.kl_divergence(
        tfd.Bernoulli(logits=logits), tfd.Bernoulli(probs=np.float32(prior))
    )
    np.testing.assert_allclose(
        losses.rate_occ(logits, prior).numpy(),
        tf.reduce_sum(expected, axis=[1, 2, 3]).numpy(),
        rtol=1e-4,
    )
    # Saturated logits stay finite.
    assert np.isfinite(losses.rate_occ(np.full((1, 1, 1, 2), 80.0, np.float32), 0.1)).all()


def test_rate_occ_categorical_matches_hand_computation():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(2, 2, 3, 4)).astype(np.float32)
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = np.sum(q * np.log(q / 0.25), axis=(1, 2, 3))
    np.testing.assert_allclose(
        losses.rate_occ_categorical(logits, 0.25).numpy(), expected, rtol=1e-5
    )
    # Another prior p: the authors' sum of q log(q / p), no longer a KL to a distribution.
    expected_p = np.sum(q * np.log(q / 0.1), axis=(1, 2, 3))
    np.testing.assert_allclose(
        losses.rate_occ_categorical(logits, 0.1).numpy(), expected_p, rtol=1e-5
    )
    np.testing.assert_allclose(expected_p - expected, np.log(2.5) * 6, rtol=1e-5)
    tfp_kl = tfd.kl_divergence(
        tfd.Categorical(logits=logits), tfd.Categorical(logits=np.zeros(4, np.float32))
    )
    np.testing.assert_allclose(expected, tf.reduce_sum(tfp_kl, [1, 2]).numpy(), rtol=1e-4)


def test_distortion_and_elbo():
    x = np.zeros((2, 4, 4, 3), np.float32)
    x_hat = np.full((2, 4, 4, 3), 0.5, np.float32)
    np.testing.assert_allclose(losses.distortion(x, x_hat).numpy(), [12.0, 12.0])
    w = np.full_like(x, 2.0)
    np.testing.assert_allclose(losses.distortion(x, x_hat, w).numpy(), [24.0, 24.0])
    terms = [tf.constant([v]) for v in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(losses.elbo_loss(*terms, 0.5, 10.0).numpy(), [32.0])


def test_edge_weights_average_one_and_follow_edges():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(2, 8, 8, 3)).astype(np.float32)
    x[1, :, :4] = -1.0  # image 1: left half flat, right half noisy
    w = losses.edge_weights(x, scale=4).numpy()
    np.testing.assert_allclose(w.mean(axis=(1, 2)), 1.0, rtol=1e-5)
    # Constant within each 4x4 cell, since the cell's edge energy is repeated to its pixels.
    assert np.allclose(w[:, :4, :4], w[:, :1, :1])
    assert w[1, :, :4].mean() < w[1, :, 4:].mean()
    flat = losses.edge_weights(np.zeros((1, 8, 8, 1), np.float32), scale=2).numpy()
    np.testing.assert_allclose(flat, 1.0)


def test_edge_weights_hand_computation():
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 0, 0, 0] = 1.0
    # Replicate padding, Laplacian at each pixel of [[1, 0], [0, 0]]:
    # (0,0): up 1 + left 1 + right 0 + down 0 - 4 = -2; (0,1): 0+1+0+0-0 = 1 (left neighbour);
    # (1,0): 1 (up neighbour); (1,1): 0. |.| summed per 1x1 cell = itself; mean = 1.
    w = losses.edge_weights(x, scale=1).numpy()[0, :, :, 0]
    expected = np.array([[2.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(w, (expected + 1e-6) / (expected.mean() + 1e-6), rtol=1e-5)


def test_occurrence_rate_epsilon_is_the_authors_formula():
    """epsilon > 0: their q log((q + eps) / p) + (1 - q) log((1 - q + eps) / (1 - p)), and
    q log((q + eps) / p) for the categorical rate; off the exact KL by up to about eps / q.
    """
    logits = np.random.default_rng(3).normal(0.0, 4.0, size=(2, 3, 3, 4))
    p, eps = 0.25, 1e-7
    q = 1.0 / (1.0 + np.exp(-logits))
    theirs = q * np.log((q + eps) / p) + (1 - q) * np.log((1 - q + eps) / (1 - p))
    ours = losses.rate_occ(tf.constant(logits), p, eps).numpy()
    np.testing.assert_allclose(ours, theirs.sum(axis=(1, 2, 3)), rtol=1e-12)
    exact = losses.rate_occ(tf.constant(logits), p).numpy()
    assert 1e-9 < np.abs(ours - exact).max() < 1e-4
    s = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    theirs = (s * np.log((s + eps) / p)).sum(axis=(1, 2, 3))
    ours = losses.rate_occ_categorical(tf.constant(logits), p, eps).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
