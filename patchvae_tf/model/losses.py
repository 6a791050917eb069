"""Pure loss functions: distortion (optionally edge-weighted), the two rates, and the total."""

from __future__ import annotations

import math

import tensorflow as tf

_LAPLACIAN = [[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]
_EPS = 1e-6


def edge_weights(x: tf.Tensor, scale: int) -> tf.Tensor:
    """Per-pixel distortion weights [B, H, W, C] from images x [B, H, W, C].

    |Laplacian| per channel (replicate padding), summed over each scale x scale cell,
    repeated back to pixels and normalised so each image channel's weights average 1.
    A flat image gets weight 1 everywhere. No gradient flows through the weights.
    """
    x = tf.convert_to_tensor(x)
    x = tf.stop_gradient(x if x.dtype == tf.float64 else tf.cast(x, tf.float32))
    channels = x.shape[-1]
    kernel = tf.tile(tf.constant(_LAPLACIAN, x.dtype)[:, :, None, None], [1, 1, channels, 1])
    # SYMMETRIC padding by one pixel repeats the border pixel: replicate padding.
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    edges = tf.abs(tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID"))
    cells = tf.nn.avg_pool2d(edges, scale, scale, "VALID") * float(scale * scale)
    w = tf.repeat(tf.repeat(cells, scale, axis=1), scale, axis=2) + _EPS
    return tf.stop_gradient(w / tf.reduce_mean(w, axis=[1, 2], keepdims=True))


def distortion(x: tf.Tensor, x_hat: tf.Tensor, weights: tf.Tensor | None = None) -> tf.Tensor:
    """sum_pixels w * (x_hat - x)^2 per image: x, x_hat, weights [B, H, W, C] -> [B], in
    x_hat's dtype if it is float64, else float32.
    """
    dtype = tf.float64 if x_hat.dtype == tf.float64 else tf.float32
    err = tf.square(tf.cast(x_hat, dtype) - tf.cast(x, dtype))
    if weights is not None:
        err = err * tf.cast(weights, dtype)
    return tf.reduce_sum(err, axis=[1, 2, 3])


def rate_app(mu: tf.Tensor, var: tf.Tensor) -> tf.Tensor:
    """KL(N(mu, var) || N(0, I)) summed per image: mu, var [B, ...] -> [B]."""
    kl = 0.5 * (var + tf.square(mu) - 1.0 - tf.math.log(var))
    return tf.reduce_sum(tf.reshape(kl, [tf.shape(kl)[0], -1]), axis=1)


def rate_occ(logits: tf.Tensor, prior: float, epsilon: float = 0.0) -> tf.Tensor:
    """sum_{h,w,i} KL(Bernoulli(sigmoid(l)) || Bernoulli(p)): logits [B, h, w, N] -> [B].

    epsilon 0: computed from logits (log-sigmoid) so that saturated probabilities stay
    finite. epsilon > 0: the authors' q log((q + eps) / p) + (1 - q) log((1 - q + eps) /
    (1 - p)) (their loss.py, eps 1e-7), which is off the KL by up to about eps / q.
    """
    q = tf.sigmoid(logits)
    if epsilon:
        t1 = q * tf.math.log((q + epsilon) / prior)
        return tf.reduce_sum(
            t1 + (1.0 - q) * tf.math.log((1.0 - q + epsilon) / (1.0 - prior)), [1, 2, 3]
        )
    log_q, log_1mq = tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)
    kl = q * (log_q - math.log(prior)) + (1.0 - q) * (log_1mq - math.log1p(-prior))
    return tf.reduce_sum(kl, axis=[1, 2, 3])


def rate_occ_categorical(logits: tf.Tensor, prior: float, epsilon: float = 0.0) -> tf.Tensor:
    """sum_{h,w,i} q_i log(q_i / p), q = softmax(l) over parts: logits [B, h, w, N] -> [B].

    The authors' categorical occurrence rate. With p = 1 / N it is KL(q || uniform); for
    other p it weighs every part against the same prior probability p. epsilon > 0: their
    q log((q + eps) / p) instead of the exact log-softmax.
    """
    log_q = tf.nn.log_softmax(logits, axis=-1)
    if epsilon:
        q = tf.exp(log_q)
        return tf.reduce_sum(q * tf.math.log((q + epsilon) / prior), axis=[1, 2, 3])
    kl = tf.reduce_sum(tf.exp(log_q) * (log_q - math.log(prior)), axis=-1)
    return tf.reduce_sum(kl, axis=[1, 2])


def elbo_loss(
    distortion_: tf.Tensor,
    rate_app_: tf.Tensor,
    rate_occ_: tf.Tensor,
    beta_app: float = 1.0,
    beta_occ: float = 10.0,
) -> tf.Tensor:
    """Negative (beta-weighted) ELBO per image: [B] terms -> [B]."""
    return distortion_ + beta_app * rate_app_ + beta_occ * rate_occ_
