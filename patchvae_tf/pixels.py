"""The three pixel ranges: images in [0, 255], the model's [-1, 1] and [0, 1] for display.

`to_model` and `to_pixels` are plain arithmetic, for NumPy arrays and tensors alike, so the
data pipeline, the Keras encoder, serving and the Python API convert the same way.
"""

from __future__ import annotations

import tensorflow as tf


def to_model(pixels):
    """Pixels in [0, 255] -> the model's range [-1, 1]. Any shape; no clipping."""
    return pixels / 127.5 - 1.0


def to_pixels(unit):
    """The model's range [-1, 1] -> pixels in [0, 255]. Any shape; no clipping."""
    return (unit + 1.0) * 127.5


def to_display(images: tf.Tensor) -> tf.Tensor:
    """The model's range [-1, 1] -> [0, 1], float32, clipped: what image summaries and PNGs take."""
    return tf.clip_by_value((tf.cast(images, tf.float32) + 1.0) / 2.0, 0.0, 1.0)


def upsample_nearest(maps: tf.Tensor, size: int) -> tf.Tensor:
    """[B, h, w, N] -> [B, size, size, N] by nearest neighbour (each cell is a patch)."""
    return tf.image.resize(maps, [size, size], method="nearest")
