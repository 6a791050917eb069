"""The training step: the optimizer, each step's temperature and sampling seed, the forward
and backward pass, and one optimizer step on every replica.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf.config import Config
from patchvae_tf.model import latents
from patchvae_tf.model.fused import FusedAdam


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    # The reference recipe's Adam, on TF's fused kernel (FusedAdam).
    t = cfg.train
    return FusedAdam(t.learning_rate, beta_1=0.5, beta_2=0.999, epsilon=t.adam_epsilon)


def step_temperature(cfg: Config, step) -> tf.Tensor:
    """The temperature (float64) of the step after ``step`` completed ones."""
    m = cfg.model
    return latents.temperature(step, m.tau_init, m.tau_min, m.anneal_rate, m.anneal_schedule)


def step_seed(cfg: Config, replica, step) -> tf.Tensor:
    """The stateless sampling seed [2] of a step on a replica: TFP takes int32 seeds, so
    (seed, replica) in one word and the step in the other.
    """
    base = (cfg.train.seed * 4096) % 2**31 + tf.cast(replica, tf.int32)
    return tf.stack([base, tf.cast(tf.convert_to_tensor(step), tf.int32)])


def loss_and_gradients(model, optimizer, global_batch: int):
    """The training step's forward and backward pass on one replica: (images [b, H, W, 3],
    tau, seed) -> (gradients, the loss terms summed / global batch, the model's outputs).
    parity/harness.py runs this same function against the authors' step.
    """

    def forward_backward(images, tau, seed):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True, temperature=tau, seed=seed)
            terms = model.loss_terms(images, outputs)
            # Each replica divides its sum by the global batch, so the gradients that the
            # optimizer sums across replicas are those of the mean over the global batch.
            loss = tf.reduce_sum(terms["loss"]) / global_batch
            scaled = optimizer.scale_loss(loss)  # loss scaling under mixed_float16
        grads = tape.gradient(scaled, model.trainable_variables)
        return grads, {k: tf.reduce_sum(v) / global_batch for k, v in terms.items()}, outputs

    return forward_backward


def make_train_step(
    cfg: Config,
    strategy: tf.distribute.Strategy,
    model,
    optimizer: keras.optimizers.Optimizer,
    step: tf.Variable,
    jit_compile: bool = False,
    position: tf.Variable | None = None,
    diverged: tf.Variable | None = None,
):
    """A tf.function taking a distributed iterator: one optimizer step on each replica's
    share of the next global batch; returns the global-batch means of the loss terms.

    With jit_compile the forward and backward pass of each replica is compiled
    by XLA; the gradient all-reduce and the update stay outside it, where every strategy
    supports them. Sampling is stateless, seeded by (seed, replica, step), so a resumed run
    draws what the uninterrupted one would; ``position`` (training examples consumed)
    advances by the global batch each step. ``diverged`` (-1 until then) records the first
    step whose loss terms were not all finite, without a host round trip per step.
    """
    global_batch = cfg.train.batch_size
    forward_backward = loss_and_gradients(model, optimizer, global_batch)

    def temperature():
        return step_temperature(cfg, step)

    def gradients(images, tau, seed):
        grads, terms, _ = forward_backward(images, tau, seed)
        return grads, terms

    if jit_compile:
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(batch):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = step_seed(cfg, replica, step)
        grads, terms = gradients(batch["image"], temperature(), seed)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return terms

    def one_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        metrics = {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }
        if diverged is not None:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in metrics.values()])
            first = tf.logical_and(tf.logical_not(finite), diverged < 0)
            diverged.assign(tf.where(first, tf.cast(step, tf.int64) + 1, diverged))
        metrics["temperature"] = temperature()
        step.assign_add(1)
        if position is not None:
            position.assign_add(global_batch)
        # Written in-graph, so logging the temperature every step costs no host round trip.
        tf.summary.scalar("temperature", metrics["temperature"], step=step)
        return metrics

    return tf.function(one_step)
