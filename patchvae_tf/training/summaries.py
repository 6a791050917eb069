"""What training writes to TensorBoard: image grids and occurrence-map overlays."""

from __future__ import annotations

import tensorflow as tf

from patchvae_tf.pixels import to_display, upsample_nearest


def image_grid(images: tf.Tensor, cols: int, pad: int = 1) -> tf.Tensor:
    """[n, H, W, C] in [0, 1] -> one image [rows*(H+pad)+pad, cols*(W+pad)+pad, C].

    Missing cells of the last row stay white, as does the padding.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    n, h, w, c = (int(d) for d in images.shape)
    rows = -(-n // cols)
    blank = tf.ones([rows * cols - n, h, w, c])
    cells = tf.concat([images, blank], axis=0)
    cells = tf.pad(cells, [[0, 0], [pad, 0], [pad, 0], [0, 0]], constant_values=1.0)
    grid = tf.reshape(cells, [rows, cols, h + pad, w + pad, c])
    grid = tf.reshape(tf.transpose(grid, [0, 2, 1, 3, 4]), [rows * (h + pad), cols * (w + pad), c])
    return tf.pad(grid, [[0, pad], [0, pad], [0, 0]], constant_values=1.0)


def occurrence_overlays(images: tf.Tensor, q_occ: tf.Tensor) -> tf.Tensor:
    """Each part's occurrence map over its image.

    images [B, H, W, 3] in [-1, 1], q_occ [B, h, w, N] -> [B, N + 1, H, W, 3] in [0, 1]:
    the image first, then per part the image dimmed where the part is absent and tinted
    red where it occurs.
    """
    size = int(images.shape[1])
    base = to_display(images)
    q = upsample_nearest(tf.cast(q_occ, tf.float32), size)  # [B, H, W, N]
    q = tf.transpose(q, [0, 3, 1, 2])[..., None]  # [B, N, H, W, 1]
    grey = tf.reduce_mean(base, axis=-1, keepdims=True)[:, None]
    red = tf.constant([1.0, 0.1, 0.1])
    overlay = 0.35 * grey + q * (0.65 * red)
    return tf.concat([base[:, None], overlay], axis=1)


def occurrence_grid(images: tf.Tensor, q_occ: tf.Tensor) -> tf.Tensor:
    """One row per image: the image, then its N part maps. -> [rows*H', cols*W', 3]."""
    overlays = occurrence_overlays(images, q_occ)
    b, k = int(overlays.shape[0]), int(overlays.shape[1])
    flat = tf.reshape(overlays, [b * k, *overlays.shape[2:]])
    return image_grid(flat, cols=k)
