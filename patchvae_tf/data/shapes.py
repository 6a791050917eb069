"""Synthetic shapes: circles, triangles and squares with ground-truth masks, made from a seed."""

from __future__ import annotations

import tensorflow as tf

from patchvae_tf.config import TEXTURE_CONTRAST, DataConfig
from patchvae_tf.data import positions
from patchvae_tf.data.source import Source

CLASSES = ("circle", "triangle", "square")
# The names of --shapes_label=kinds's labels 0 to 2.
KIND_NAMES = ("one_kind", "two_kinds", "three_kinds")
# A kind counts as shown when its visible pixels cover at least this share of the image:
# slivers left by occlusion are too small for any encoder to see.
KIND_MIN_SHARE = 0.01
MAX_SHAPES = 3
# Offsets added to the seed so that the train and test splits never share an image.
_SPLIT_OFFSET = {"train": 0, "test": 1_000_003}
# Per slot: present, class, centre y, centre x, radius, rgb.
_DRAWS_PER_SLOT = 8
_DRAWS = 3 + MAX_SHAPES * _DRAWS_PER_SLOT
# Examples drawn together: one set of ops per chunk instead of per image keeps the input
# pipeline from taking CPU time from training.
_CHUNK = 64


def _shape_masks(kind: tf.Tensor, cy, cx, r, yy, xx) -> tf.Tensor:
    """Boolean masks [K, H, W] of K shapes: kind, cy, cx, r are [K, 1, 1] (kind indexes
    CLASSES), yy is [1, H, 1] and xx [1, 1, W], so most of the arithmetic is per row or
    per column and only the final comparisons run on every pixel.
    """
    dy, dx = yy - cy, xx - cx
    circle = dy * dy + dx * dx <= r * r
    square = tf.logical_and(tf.abs(dy) <= 0.8 * r, tf.abs(dx) <= 0.8 * r)
    # Upward triangle: below the apex, above the base, inside both slanted sides.
    inside_base = dy <= 0.7 * r
    slope = 2.0 * tf.abs(dx) - (dy + r)
    triangle = tf.logical_and(inside_base, slope <= 0.0)
    # Logical ops rather than tf.where: TF's broadcasting select is several times slower.
    return tf.logical_or(
        tf.logical_or(tf.logical_and(kind == 0, circle), tf.logical_and(kind == 1, triangle)),
        tf.logical_and(kind == 2, square),
    )


def _draw(index: tf.Tensor, seed: int) -> tf.Tensor:
    """The uniform draws [_DRAWS] that decide example `index`: deterministic for (seed, index)."""
    return tf.random.stateless_uniform([_DRAWS], seed=tf.stack([tf.cast(seed, tf.int64), index]))


def _stripes(yy: tf.Tensor, xx: tf.Tensor) -> tf.Tensor:
    """[3, H, W] in {0, 1}: per class (CLASSES order) its dark pattern, 2-pixel bands every
    4 pixels: horizontal stripes for circles, a checkerboard for triangles, vertical stripes
    for squares. The period matches the 4-pixel cells of the default grid, so every cell of
    a shape shows the same pattern.
    """
    rows = tf.math.floormod(tf.floor(yy / 2.0), 2.0) + 0.0 * xx  # [1, H, W]
    cols = tf.math.floormod(tf.floor(xx / 2.0), 2.0) + 0.0 * yy
    return tf.concat([rows, tf.math.floormod(rows + cols, 2.0), cols], axis=0)


def _label(masks: tf.Tensor, label: str) -> tf.Tensor:
    """Labels [K] from masks [K, H, W, 3]: "largest", the class of the largest visible
    shape, or "kinds", how many kinds of shape are shown (1 to 3, labelled 0 to 2).
    """
    area = tf.reduce_sum(masks, axis=[1, 2])  # [K, classes]
    if label == "largest":
        return tf.argmax(area, axis=-1, output_type=tf.int32)
    pixels = tf.cast(tf.shape(masks)[1] * tf.shape(masks)[2], tf.float32)
    shown = tf.reduce_sum(tf.cast(area >= KIND_MIN_SHARE * pixels, tf.int32), axis=-1)
    return tf.maximum(shown - 1, 0)


def _render(
    u: tf.Tensor,
    image_size: int,
    texture: bool = False,
    contrast: float = TEXTURE_CONTRAST,
    label: str = "largest",
) -> dict[str, tf.Tensor]:
    """Examples from their draws u [K, _DRAWS].

    Returns image [K, H, W, 3] in [-1, 1], label [K] (see _label), masks [K, H, W, 3]
    (visible pixels of each shape class, after occlusion). With texture, each shape carries
    its class's stripes (_stripes), darkened by ``contrast``.
    """
    size = float(image_size)
    column = lambda t: t[:, None, None]  # noqa: E731  [K] -> [K, 1, 1]
    background = 0.4 * u[:, :3]
    count = 1 + tf.cast(tf.floor(u[:, 3] * MAX_SHAPES), tf.int32)  # 1 to 3 shapes
    coords = tf.range(image_size, dtype=tf.float32) + 0.5
    yy, xx = coords[None, :, None], coords[None, None, :]
    k = tf.shape(u)[0]
    colours, kinds, drawn = [background], [], []
    for slot in range(MAX_SHAPES):
        v = u[:, 3 + slot * _DRAWS_PER_SLOT : 3 + (slot + 1) * _DRAWS_PER_SLOT]
        kind = tf.minimum(tf.cast(tf.floor(v[:, 0] * len(CLASSES)), tf.int32), len(CLASSES) - 1)
        r = size * (0.12 + 0.14 * v[:, 1])
        cy = r + (size - 2.0 * r) * v[:, 2]
        cx = r + (size - 2.0 * r) * v[:, 3]
        colours.append(0.5 + 0.5 * v[:, 4:7])
        kinds.append(kind)
        mask = _shape_masks(column(kind), column(cy), column(cx), column(r), yy, xx)
        drawn.append(tf.logical_and(mask, column(slot < count)))
    # Which layer each pixel shows: a later shape hides the pixels of earlier ones beneath
    # it. One-hot over [background, shape 0, 1, 2], so painting is one batched matmul
    # (each pixel sums a single 1 * colour and zeros: exactly the colour).
    hidden = tf.zeros([k, image_size, image_size], tf.bool)
    visible = []
    for d in reversed(drawn):
        visible.append(tf.logical_and(d, tf.logical_not(hidden)))
        hidden = tf.logical_or(hidden, d)
    visible = [tf.logical_not(hidden), *reversed(visible)]
    layers = tf.reshape(tf.cast(tf.stack(visible, -1), tf.float32), [k, -1, 1 + MAX_SHAPES])
    pixels = [k, image_size, image_size, 3]
    image = tf.reshape(tf.matmul(layers, tf.stack(colours, 1)), pixels)
    classes = tf.one_hot(tf.stack(kinds, 1), len(CLASSES))  # [K, shapes, classes]
    masks = tf.reshape(tf.matmul(layers[..., 1:], classes), pixels)
    if texture:
        stripes = tf.transpose(_stripes(yy, xx), [1, 2, 0])  # [H, W, classes]
        dark = tf.reduce_sum(masks * stripes, axis=-1, keepdims=True)  # [K, H, W, 1]
        image = image * (1.0 - contrast * dark)
    return {"image": image * 2.0 - 1.0, "label": _label(masks, label), "masks": masks}


def make_example(
    index: tf.Tensor,
    seed: int,
    image_size: int,
    texture: bool = False,
    contrast: float = TEXTURE_CONTRAST,
    label: str = "largest",
) -> dict[str, tf.Tensor]:
    """One example from its index: deterministic for (seed, index).

    Returns image [H, W, 3] in [-1, 1], label [] and masks [H, W, 3] (see _render).
    """
    examples = _render(_draw(index, seed)[None], image_size, texture, contrast, label)
    return {k: v[0] for k, v in examples.items()}


def shapes_dataset(
    split: str,
    size: int,
    image_size: int,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_seed: int | None = None,
    start: int = 0,
    texture: bool = False,
    contrast: float = TEXTURE_CONTRAST,
    label: str = "largest",
) -> tf.data.Dataset:
    """Unbatched dataset of ``size`` examples; generated on the fly, never held in memory.

    Sharding, shuffling and skipping to ``start`` (a resumed run) act on the indices, so they
    cost nothing per image; the images
    are rendered in chunks of consecutive indices and then unbatched.
    """
    offset = _SPLIT_OFFSET[split]
    if shuffle_seed is not None:
        # Training: endless seeded epochs that start `start` examples in (see positions).
        ds = positions.epoch_indices(size, shuffle_seed, start, input_context)
        ds = ds.map(lambda i: i + offset)
    else:
        ds = tf.data.Dataset.range(offset, offset + size)
        if input_context is not None:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.map(lambda i: _draw(i, seed)).batch(_CHUNK)
    ds = ds.map(
        lambda u: _render(u, image_size, texture, contrast, label),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.unbatch()


def shapes_source(cfg: DataConfig, image_size: int, seed: int) -> Source:
    sizes = {"train": cfg.shapes_train_size, "test": cfg.shapes_test_size}

    def reader(split):
        def read(input_context=None, shuffle_seed=None, start=0):
            return shapes_dataset(
                split,
                sizes[split],
                image_size,
                seed,
                input_context,
                shuffle_seed,
                start,
                texture=cfg.shapes_texture,
                contrast=cfg.shapes_texture_contrast,
                label=cfg.shapes_label,
            )

        return read

    names = CLASSES if cfg.shapes_label == "largest" else KIND_NAMES
    return Source(
        "shapes",
        len(CLASSES),
        True,
        {s: reader(s) for s in sizes},
        sizes,
        class_names=tuple(names),
    )
