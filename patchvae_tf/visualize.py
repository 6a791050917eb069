"""Image grids, occurrence-map overlays and PNG writing, shared by training and evaluation."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf


def to_unit(images: tf.Tensor) -> tf.Tensor:
    """[-1, 1] -> [0, 1], float32."""
    return tf.clip_by_value((tf.cast(images, tf.float32) + 1.0) / 2.0, 0.0, 1.0)


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


def upsample_nearest(maps: tf.Tensor, size: int) -> tf.Tensor:
    """[B, h, w, N] -> [B, size, size, N] by nearest neighbour (each cell is a patch)."""
    return tf.image.resize(maps, [size, size], method="nearest")


def occurrence_overlays(images: tf.Tensor, q_occ: tf.Tensor) -> tf.Tensor:
    """Each part's occurrence map over its image.

    images [B, H, W, 3] in [-1, 1], q_occ [B, h, w, N] -> [B, N + 1, H, W, 3] in [0, 1]:
    the image first, then per part the image dimmed where the part is absent and tinted
    red where it occurs.
    """
    size = int(images.shape[1])
    base = to_unit(images)
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


def save_png(image: tf.Tensor | np.ndarray, path: str) -> None:
    """Writes [H, W, C] in [0, 1] as PNG (atomically: a reader never sees half a file)."""
    pixels = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
    tmp = path + ".tmp"
    tf.io.write_file(tmp, tf.io.encode_png(pixels))
    os.replace(tmp, path)


# --- part galleries ----------------------------------------------------------


def _conv_chain(layer) -> list[tuple[int, int]]:
    """(kernel, stride) of the convolutions and poolings on layer's longest path, in order."""
    import keras  # Only the receptive-field walk needs Keras itself.

    from patchvae_tf import networks

    if isinstance(layer, keras.Sequential):
        return [ks for sub in layer.layers for ks in _conv_chain(sub)]
    if hasattr(layer, "stages"):  # the encoders
        return [ks for stage in layer.stages for ks in _conv_chain(stage)]
    if isinstance(layer, networks.ResidualBlock):
        # The residual path (two 3x3 convs) sees further than the 1x1 shortcut.
        return _conv_chain(layer.conv1) + _conv_chain(layer.conv2)
    if isinstance(layer, keras.layers.Conv2D):
        return [(int(layer.kernel_size[0]), int(layer.strides[0]))]
    if isinstance(layer, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)):
        return [(int(layer.pool_size[0]), int(layer.strides[0]))]
    return []


def receptive_field(encoder, head_kernel: int = 3) -> int:
    """Side in pixels of the input region one occurrence logit sees.

    Walks the encoder's convolutions and poolings (each adds (k - 1) * jump), then the
    head_kernel x head_kernel head conv on the feature map.
    """
    size, jump = 1, 1
    for kernel, stride in _conv_chain(encoder) + [(head_kernel, 1)]:
        size += (kernel - 1) * jump
        jump *= stride
    return size


def crop_patches(
    images: np.ndarray, rows: np.ndarray, cols: np.ndarray, scale: int, size: int
) -> np.ndarray:
    """Patches centred on feature-map cells.

    images [B, H, W, C] in [-1, 1]; rows, cols [B] cell indices on the h x w grid ->
    [B, size, size, C] in [0, 1]. Cell (r, c) is centred at pixel ((r + 0.5) s, (c + 0.5) s);
    the region outside the image is mid-grey.
    """
    images = np.asarray(images, np.float32)
    pad = size
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)], constant_values=0.0)
    out = np.empty([len(images), size, size, images.shape[-1]], np.float32)
    for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
        top = int(round((r + 0.5) * scale - size / 2)) + pad
        left = int(round((c + 0.5) * scale - size / 2)) + pad
        out[i] = padded[i, top : top + size, left : left + size]
    return np.clip((out + 1.0) / 2.0, 0.0, 1.0)


class PartGallery:
    """Keeps, per part, the k images where it occurs most strongly, as patches at that spot.

    Feed batches with ``add``; ``grid`` draws one row per part, patches sorted by q_occ.
    Each image contributes at most one patch per part (its strongest location), so a row
    shows k different images rather than k neighbouring cells of one.
    """

    def __init__(self, num_parts: int, k: int, scale: int, patch_size: int):
        self.num_parts, self.k, self.scale, self.patch_size = num_parts, k, scale, patch_size
        self.scores = [np.zeros([0], np.float32) for _ in range(num_parts)]
        self.patches = [np.zeros([0, patch_size, patch_size, 3], np.float32)] * num_parts

    def add(self, images, q_occ) -> None:
        """Adds a batch: images [B, H, W, 3] in [-1, 1], q_occ [B, h, w, N]."""
        images, q = np.asarray(images), np.asarray(q_occ, np.float32)
        b, _, w, n = q.shape
        flat = q.reshape(b, -1, n)
        best = flat.max(axis=1)  # [B, N]
        where = flat.argmax(axis=1)  # [B, N]
        for part in range(n):
            top = np.argsort(-best[:, part], kind="stable")[: self.k]
            cells = where[top, part]
            patches = crop_patches(images[top], cells // w, cells % w, self.scale, self.patch_size)
            scores = np.concatenate([self.scores[part], best[top, part]])
            patches = np.concatenate([self.patches[part], patches])
            keep = np.argsort(-scores, kind="stable")[: self.k]
            self.scores[part], self.patches[part] = scores[keep], patches[keep]

    def grid(self) -> tf.Tensor:
        """[N*(P+1)+1, k*(P+1)+1, 3]: row i holds part i's patches, strongest first."""
        cells = []
        for patches in self.patches:
            blank = np.ones([self.k - len(patches), *patches.shape[1:]], np.float32)
            cells.append(np.concatenate([patches, blank]))
        return image_grid(np.concatenate(cells), cols=self.k)


# --- training curves -------------------------------------------------------------


def curves_image(series: dict[str, tuple[np.ndarray, np.ndarray]], cols: int = 3) -> np.ndarray:
    """One labelled panel per scalar, {name: (steps, values)} -> [H, W, 3] in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    from matplotlib import pyplot as plt

    names = list(series)
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if name in ("loss", "distortion") and values.size and values.min() > 0:
            # The first steps' loss is orders of magnitude above the rest.
            ax.set_yscale("log")
    fig.tight_layout()
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    plt.close(fig)
    return pixels
