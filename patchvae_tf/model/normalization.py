"""Input spaces: the pipeline's [-1, 1] pixels, mapped into the space a model trains in."""

from __future__ import annotations

import tensorflow as tf

from patchvae_tf.config import NORMALIZATIONS

# torchvision's ImageNet statistics, on pixels in [0, 1]: the authors' --inet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check(name: str) -> None:
    if name not in NORMALIZATIONS:
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATIONS}. Received: normalization={name!r}"
        )


def normalize(x: tf.Tensor, name: str) -> tf.Tensor:
    """Images [..., 3] in [-1, 1] -> the model's input space.

    unit: unchanged. imagenet: (x01 - mean) / std per channel, x01 = (x + 1) / 2, which spans
    about [-2.1, 2.6].
    """
    _check(name)
    if name == "unit":
        return x
    x = _statistics_dtype(x)
    x01 = (x + 1.0) / 2.0
    return (x01 - tf.constant(IMAGENET_MEAN, x.dtype)) / tf.constant(IMAGENET_STD, x.dtype)


def to_unit(y: tf.Tensor, name: str) -> tf.Tensor:
    """The inverse of ``normalize``: the model's space [..., 3] -> [-1, 1] pixels (unclipped)."""
    _check(name)
    if name == "unit":
        return y
    y = _statistics_dtype(y)
    x01 = y * tf.constant(IMAGENET_STD, y.dtype) + tf.constant(IMAGENET_MEAN, y.dtype)
    return x01 * 2.0 - 1.0


def _statistics_dtype(x) -> tf.Tensor:
    """X in float64 if it is float64, else in float32 (never in a half type)."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)
