"""Synthetic shapes: circles, triangles and squares with ground-truth masks, made from a seed."""

from __future__ import annotations

import tensorflow as tf

CLASSES = ("circle", "triangle", "square")
MAX_SHAPES = 3
# Offsets added to the seed so that the train and test splits never share an image.
_SPLIT_OFFSET = {"train": 0, "test": 1_000_003}
# Per slot: present, class, centre y, centre x, radius, rgb.
_DRAWS_PER_SLOT = 8


def _shape_mask(kind: tf.Tensor, cy, cx, r, yy, xx) -> tf.Tensor:
    """Boolean mask [H, W] of one shape; ``kind`` indexes CLASSES."""
    dy, dx = yy - cy, xx - cx
    circle = dy * dy + dx * dx <= r * r
    square = tf.logical_and(tf.abs(dy) <= 0.8 * r, tf.abs(dx) <= 0.8 * r)
    # Upward triangle: below the apex, above the base, inside both slanted sides.
    inside_base = dy <= 0.7 * r
    slope = 2.0 * tf.abs(dx) - (dy + r)
    triangle = tf.logical_and(inside_base, slope <= 0.0)
    return tf.switch_case(kind, [lambda: circle, lambda: triangle, lambda: square])


def make_example(index: tf.Tensor, seed: int, image_size: int) -> dict[str, tf.Tensor]:
    """One example from its index: deterministic for (seed, index).

    Returns image [H, W, 3] in [-1, 1], label [] (class of the largest visible shape),
    masks [H, W, 3] (visible pixels of each shape class, after occlusion).
    """
    size = float(image_size)
    u = tf.random.stateless_uniform(
        [3 + MAX_SHAPES * _DRAWS_PER_SLOT], seed=tf.stack([tf.cast(seed, tf.int64), index])
    )
    background = 0.4 * u[:3]
    count = 1 + tf.cast(tf.floor(u[3] * MAX_SHAPES), tf.int32)  # 1 to 3 shapes
    coords = tf.range(image_size, dtype=tf.float32) + 0.5
    yy, xx = tf.meshgrid(coords, coords, indexing="ij")
    image = tf.ones([image_size, image_size, 3]) * background
    masks = tf.zeros([image_size, image_size, len(CLASSES)], tf.bool)
    for slot in range(MAX_SHAPES):
        v = u[3 + slot * _DRAWS_PER_SLOT : 3 + (slot + 1) * _DRAWS_PER_SLOT]
        kind = tf.minimum(tf.cast(tf.floor(v[0] * len(CLASSES)), tf.int32), len(CLASSES) - 1)
        r = size * (0.12 + 0.14 * v[1])
        cy = r + (size - 2.0 * r) * v[2]
        cx = r + (size - 2.0 * r) * v[3]
        colour = 0.5 + 0.5 * v[4:7]
        drawn = tf.logical_and(_shape_mask(kind, cy, cx, r, yy, xx), slot < count)
        image = tf.where(drawn[..., None], colour, image)
        # A later shape hides the pixels of earlier ones beneath it.
        one_hot = tf.one_hot(kind, len(CLASSES), on_value=True, off_value=False, dtype=tf.bool)
        masks = tf.where(drawn[..., None], one_hot, masks)
    masks = tf.cast(masks, tf.float32)
    label = tf.argmax(tf.reduce_sum(masks, axis=[0, 1]), output_type=tf.int32)
    return {"image": image * 2.0 - 1.0, "label": label, "masks": masks}


def shapes_dataset(
    split: str,
    size: int,
    image_size: int,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_seed: int | None = None,
) -> tf.data.Dataset:
    """Unbatched dataset of ``size`` examples; generated on the fly, never held in memory.

    Sharding and shuffling act on the indices, so they cost nothing per image.
    """
    offset = _SPLIT_OFFSET[split]
    ds = tf.data.Dataset.range(offset, offset + size)
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle_seed is not None:
        ds = ds.shuffle(size, seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.map(
        lambda i: make_example(i, seed, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
