"""What a resolved dataset is, and the image decoding and preprocessing every source shares."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from patchvae_tf import pixels
from patchvae_tf.data import image_limits


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved dataset: how to read each split, and what it holds."""

    name: str
    num_classes: int | None
    has_masks: bool
    # split -> callable(input_context) -> unbatched dataset of dicts with "image" (and "label").
    readers: dict
    sizes: dict
    skipped: int = 0
    # Why the test split cannot score recognition (its labels are missing), or "".
    unlabelled: str = ""
    # The name of each label (folder names, TFDS's label names), or () when unknown.
    class_names: tuple[str, ...] = ()
    # split -> every label of the split in reader order, where known without decoding
    # (folders); a recognizer drawing K images per class reads the others' once.
    labels: dict = dataclasses.field(default_factory=dict)


def preprocess_image(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Any-size RGB image [h, w, 3] (uint8 or float 0..255) -> [S, S, 3] float in [-1, 1].

    Resizes the shorter side to S, then takes the centre S x S crop, as at serving.
    """
    image = tf.cast(image, tf.float32)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ratio = float(image_size) / tf.minimum(h, w)
    new_h = tf.maximum(image_size, tf.cast(tf.round(h * ratio), tf.int32))
    new_w = tf.maximum(image_size, tf.cast(tf.round(w * ratio), tf.int32))
    image = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
    top = (new_h - image_size) // 2
    left = (new_w - image_size) // 2
    image = image[top : top + image_size, left : left + image_size, :]
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return pixels.to_model(tf.clip_by_value(image, 0.0, 255.0))


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[h, w, 1|3|4] -> [h, w, 3]: grey is repeated, alpha dropped."""
    # With the channels known when traced (TFDS features say them), only one branch is
    # built: tf.case traces all, and grey's refuses a static 3-channel image.
    static = image.shape[-1]
    if static == 3:
        return image
    if static == 1:
        return tf.image.grayscale_to_rgb(image)
    if static == 4:
        return image[..., :3]
    channels = tf.shape(image)[-1]
    return tf.case(
        [
            (tf.equal(channels, 1), lambda: tf.image.grayscale_to_rgb(image)),
            (tf.equal(channels, 4), lambda: image[..., :3]),
            (tf.equal(channels, 2), lambda: tf.image.grayscale_to_rgb(image[..., :1])),
        ],
        default=lambda: image,
    )


def decode_image(
    data: tf.Tensor,
    limits: image_limits.ImageLimits = image_limits.DEFAULT,
    what: str = "the input",
) -> tf.Tensor:
    """Encoded JPEG/PNG bytes -> uint8 [h, w, 3]; palette, grey and RGBA become RGB.

    Decoded only once the header's size fits limits (InvalidArgument naming size and limit).
    """
    return image_limits.tf_decode(data, limits, what)
