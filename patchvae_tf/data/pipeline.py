"""tf.data input pipelines: synthetic shapes, TFDS datasets and image folders, scaled to [-1, 1]."""

from __future__ import annotations

import tensorflow as tf

from patchvae_tf.config import DataConfig
from patchvae_tf.data import folder_source, positions, python_source, shapes
from patchvae_tf.data.source import Source
from patchvae_tf.data.tfds_source import tfds_source


def get_source(cfg: DataConfig, image_size: int, seed: int = 0) -> Source:
    """Resolves --dataset, its images image_size square (the model's input size); raises
    UserError for unknown names and missing folders.
    """
    if python_source.is_python_data(cfg.dataset):
        raise python_source.not_stored(cfg.dataset)
    if cfg.dataset == "shapes":
        return shapes.shapes_source(cfg, image_size, seed)
    if cfg.dataset.startswith(folder_source.FOLDER_PREFIX):
        return folder_source.folder_source(cfg, image_size)
    return tfds_source(cfg, image_size)


def input_dataset(
    source: Source,
    split: str,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool | None = None,
    flip: bool = False,
    start: int = 0,
) -> tf.data.Dataset:
    """Batched dataset of dicts {"image": [B, S, S, 3] in [-1, 1], "label": [B], ...}.

    ``batch_size`` is per input pipeline (per replica under a strategy). Training data is
    shuffled (by each reader, at its cheapest level: indices, file names, TFDS files),
    flipped if ``flip``, repeated and batched with drop_remainder so every step is whole.
    ``start``: training examples this pipeline already consumed (a resumed run); shapes and
    folders continue exactly there, flips included.
    """
    if training:
        ds = source.readers[split](input_context, seed, start)
    else:
        ds = source.readers[split](input_context, None)
    if training and flip and not source.has_masks:
        # Folder and TFDS images only: shapes carry masks that would need flipping too.

        def flip_image(position, ex):
            ex = dict(ex)
            key = positions.example_seed(seed, position, input_context)
            ex["image"] = tf.image.stateless_random_flip_left_right(ex["image"], seed=key)
            return ex

        ds = ds.enumerate(start).map(flip_image, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat if repeat is not None else training:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)
