"""Deterministic training order: a seeded order per epoch, resumable at any example."""

from __future__ import annotations

import tensorflow as tf


def pipeline(input_context: tf.distribute.InputContext | None) -> tuple[int, int]:
    """The input pipeline's id and the number of pipelines: (0, 1) without a strategy."""
    if input_context is None:
        return 0, 1
    return input_context.input_pipeline_id, input_context.num_input_pipelines


def epoch_indices(
    size: int,
    seed: int,
    start: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Int64 indices in [0, size) of this input pipeline's shard, epoch after epoch, forever,
    beginning ``start`` indices into that stream.

    Epoch e's order depends on (seed, e) only, so a resumed run that knows how many examples
    its pipeline consumed (the checkpoint does) continues exactly where it stopped. Skipping
    acts on indices, which costs nothing, never on decoded images.
    """
    pid, num = pipeline(input_context)
    count = len(range(pid, size, num))
    if count == 0:
        return tf.data.Dataset.from_tensor_slices(tf.zeros([0], tf.int64))
    shard = tf.range(pid, size, num, dtype=tf.int64)
    return epochs(
        count,
        seed,
        start,
        lambda key: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(shard, seed=key)
        ),
    )


def epochs(count: int, seed: int, start: int, epoch) -> tf.data.Dataset:
    """Epoch after epoch of ``count`` elements each, forever, beginning ``start`` elements in.

    ``epoch(key)`` builds one epoch from its key [seed, e], a stateless-random seed: an order
    that depends on (seed, e) only. Whole epochs before ``start`` are never built; the rest
    is skipped element by element, so a source skips cheap elements (indices, undecoded
    records) and decodes after this.
    """
    first, offset = divmod(start, count)

    def one(e):
        return epoch(tf.stack([tf.constant(seed, tf.int64), e]))

    return tf.data.Dataset.range(first, 2**62).flat_map(one).skip(offset)


def example_seed(seed: int, position: tf.Tensor, input_context=None) -> tf.Tensor:
    """A stateless-random seed [2] for the example at ``position`` of this pipeline's stream:
    per-example randomness (flips) that a resumed run draws again identically.
    """
    pid, num = pipeline(input_context)
    return tf.stack([tf.constant(seed, tf.int64), position * num + pid])
