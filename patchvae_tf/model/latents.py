"""The PatchVAE bottleneck: occurrence and appearance posteriors (TFP), priors, pooling, z_hat."""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

from patchvae_tf.config.choices import HARD_CATEGORICAL

tfd = tfp.distributions

_EPS = 1e-7  # the authors' eps in the pooling (model.py)
ANNEAL_EVERY = 1000
_LOG_VAR_MIN, _LOG_VAR_MAX = math.log(1e-7), math.log(1e7)


def temperature(
    step, tau_init: float, tau_min: float, anneal_rate: float, schedule: str = "reference"
) -> tf.Tensor:
    """The temperature (float64) of the step that follows ``step`` completed steps.

    reference (the authors' run.py): after each step t (counted from 1) with
    t % ANNEAL_EVERY == 1, tau = max(tau * exp(-anneal_rate * t), tau_min). The decay
    compounds, so tau after k steps is max(tau_init * exp(-anneal_rate * S), tau_min) with S
    the sum of those t <= k: with n = ceil(k / ANNEAL_EVERY) updates,
    S = n + ANNEAL_EVERY * n (n - 1) / 2.
    exponential: max(tau_init * exp(-anneal_rate * t), tau_min), t floored to ANNEAL_EVERY.
    """
    k = tf.cast(step, tf.int64)
    if schedule == "reference":
        n = tf.cast((k + ANNEAL_EVERY - 1) // ANNEAL_EVERY, tf.float64)
        t = n + ANNEAL_EVERY * n * (n - 1.0) / 2.0
    elif schedule == "exponential":
        t = tf.cast(k // ANNEAL_EVERY * ANNEAL_EVERY, tf.float64)
    else:
        raise ValueError(
            f"`schedule` must be 'reference' or 'exponential'. Received: schedule={schedule!r}"
        )
    tau = tau_init * tf.exp(-anneal_rate * t)
    # float64, as the authors' Python float; the model casts it to its own dtype.
    return tf.maximum(tau, tau_min)


def occurrence_probs(logits: tf.Tensor, categorical: bool) -> tf.Tensor:
    """q_occ [B, h, w, N]: sigmoid per part, or softmax over parts when categorical."""
    return tf.nn.softmax(logits, axis=-1) if categorical else tf.sigmoid(logits)


def occurrence_posterior(
    logits: tf.Tensor, tau: tf.Tensor, categorical: bool = False
) -> tfd.Distribution:
    """q(z_occ | x) from logits [B, h, w, N]: ``tfd.RelaxedBernoulli`` per part and
    location, or ``tfd.RelaxedOneHotCategorical`` over the N parts (event shape [N]).
    """
    if categorical:
        return tfd.RelaxedOneHotCategorical(tau, logits=logits)
    return tfd.RelaxedBernoulli(tau, logits=logits)


def sample_occurrence(
    logits: tf.Tensor,
    tau: tf.Tensor,
    *,
    categorical: bool = False,
    hard: bool = False,
    hard_categorical: str = "one_hot",
    seed: tf.Tensor | None = None,
) -> tf.Tensor:
    """Relaxed occurrence sample z_occ [B, h, w, N] from logits [B, h, w, N].

    Draws from ``occurrence_posterior``. Hard: the forward value is the posterior's mode,
    1[l > 0] per part, while gradients flow through the relaxed sample (straight-through).
    With categorical, hard_categorical picks the forward value: one_hot, the one-hot of
    argmax l (one part per location), or sign, each part's 1[l > 0] as in the binary case
    (the authors' 0.5 (sign(l) + 1): a location may show several parts or none). ``seed``:
    a stateless seed [2] (training passes one per step, so a resumed run draws what it
    would have). The noise is TFP's: U(tiny, 1) draws u = tf.random.stateless_uniform(
    [1, B, h, w, N], seed) turned into the logistic noise logit(u), or with categorical the
    Gumbel noise -log(-log(u)) (parity/harness.py replays those draws into the authors'
    samplers).
    """
    if hard_categorical not in HARD_CATEGORICAL:
        raise ValueError(
            f"`hard_categorical` must be one of {HARD_CATEGORICAL}. "
            f"Received: hard_categorical={hard_categorical!r}"
        )
    tau = tf.cast(tau, logits.dtype)
    if categorical:
        z = occurrence_posterior(logits, tau, categorical).sample(seed=seed)
    else:
        # RelaxedBernoulli is sigmoid(Logistic(l / tau, 1 / tau)), drawn with tf.sigmoid: TFP's
        # bijector's unused exp(x) branch overflows past x = 88, a NaN gradient as tau anneals.
        z = tf.sigmoid(tfd.Logistic(logits / tau, 1.0 / tau).sample(seed=seed))
    if hard:
        if categorical and hard_categorical == "one_hot":
            binary = tf.one_hot(tf.argmax(logits, axis=-1), tf.shape(logits)[-1], dtype=z.dtype)
        else:
            binary = tf.cast(logits > 0.0, z.dtype)
        z = z + tf.stop_gradient(binary - z)
    return z


def variance(logvar: tf.Tensor) -> tf.Tensor:
    """clip(exp(logvar), 1e-7, 1e7), any shape.

    Clipping the log-variance before exp gives the same values, but where exp would overflow
    the clipped-away gradient stays 0 instead of 0 * inf = NaN.
    """
    return tf.exp(tf.clip_by_value(logvar, _LOG_VAR_MIN, _LOG_VAR_MAX))


def pool_appearance(
    mean: tf.Tensor, logvar: tf.Tensor, q_occ: tf.Tensor, num_parts: int, appearance_dim: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Occurrence-weighted pooling of the per-location appearance posterior.

    mean, logvar: [B, h, w, N*L]; q_occ: [B, h, w, N].
    Returns mu_app, var_app: [B, N, L]. The weights carry no gradient, so the
    occurrence heads learn only from reconstruction and their own rate.
    """
    # A -1 batch and static h, w where known: the exported encoder then reshapes with a
    # constant shape instead of a Shape/Gather/Concat chain run on every request.
    h = mean.shape[1] if mean.shape[1] is not None else tf.shape(mean)[1]
    w = mean.shape[2] if mean.shape[2] is not None else tf.shape(mean)[2]
    mu = tf.reshape(mean, [-1, h, w, num_parts, appearance_dim])
    var = variance(tf.reshape(logvar, [-1, h, w, num_parts, appearance_dim]))
    q = tf.expand_dims(tf.stop_gradient(q_occ), -1)  # [B, h, w, N, 1]
    total = tf.reduce_sum(q, axis=[1, 2])  # [B, N, 1]
    mu_app = tf.reduce_sum(q * mu, axis=[1, 2]) / (total + _EPS)
    var_app = (tf.reduce_sum(q * var, axis=[1, 2]) + _EPS) / (total + _EPS)
    return mu_app, var_app


def appearance_posterior(mu_app: tf.Tensor, var_app: tf.Tensor) -> tfd.Distribution:
    """q(z_app) = Normal(mu_app, sqrt(var_app)), batch shape [B, N, L]."""
    return tfd.Normal(mu_app, tf.sqrt(var_app))


def sample_appearance(mu_app: tf.Tensor, var_app: tf.Tensor, seed=None) -> tf.Tensor:
    """A reparameterized sample of ``appearance_posterior``, [B, ...] like mu_app: TFP's
    mu + sqrt(var) e, e = tf.random.stateless_normal([1, *mu_app.shape], seed).
    """
    return appearance_posterior(mu_app, var_app).sample(seed=seed)


def compose(z_app: tf.Tensor, z_occ: tf.Tensor) -> tf.Tensor:
    """z_hat [B, h, w, N*L]: part codes z_app [B, N, L] placed where z_occ [B, h, w, N] fires."""
    shape = tf.shape(z_occ)
    z = z_app[:, None, None, :, :] * z_occ[..., None]  # [B, h, w, N, L]
    return tf.reshape(z, [shape[0], shape[1], shape[2], -1])


def sample_prior(
    batch: int, grid: int, num_parts: int, appearance_dim: int, prior: float
) -> tf.Tensor:
    """z_hat [batch, grid, grid, N*L] with z_app ~ N(0, I) and z_occ ~ Bernoulli(p).

    The categorical variant samples the same way, as the authors' code does: each part
    occurs at each location with probability p, independently.
    """
    z_app = tfd.Normal(0.0, 1.0).sample([batch, num_parts, appearance_dim])
    z_occ = tfd.Bernoulli(probs=prior, dtype=tf.float32).sample([batch, grid, grid, num_parts])
    return compose(z_app, z_occ)
