"""patchvae_tf.train(): training from Python, on data passed from Python or a dataset name."""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from patchvae_tf.config import Config
from patchvae_tf.data import python_source
from patchvae_tf.errors import UserError
from patchvae_tf.pretrained import Pretrained, load
from patchvae_tf.workdir import CHECKPOINT_DIR


def train(config: Config, data=None) -> Pretrained:
    """Trains config's model in config.train.workdir (resuming from its latest checkpoint,
    as train.py does) and returns ``patchvae_tf.load(workdir)``.

    data: None (config.data.dataset is read), a dataset name as ``--dataset`` takes it, or
    data passed from Python (python_source.EXPECTED): images of any size, uint8 or float
    pixels in [0, 255], resized, centre-cropped and normalised as the config says.
    config.json records the data as ``python:KIND``; the workdir does not hold it.
    """
    if not isinstance(config, Config):
        raise UserError(f"config must be a patchvae_tf.config.Config, got {type(config).__name__}")
    source = None
    if isinstance(data, str):
        config = config.replace(data=dataclasses.replace(config.data, dataset=data))
    elif data is not None:
        source = python_source.python_source(data, config.model.image_size)
        config = config.replace(data=dataclasses.replace(config.data, dataset=source.name))
        _say_how_it_resumes(config, source)
    from patchvae_tf import training  # the loop imports Keras models and TFP

    training.train(config, source=source)
    return load(config.train.workdir)


def _say_how_it_resumes(config: Config, source) -> None:
    if source.name not in (python_source.PREFIX + k for k in ("dataset", "function")):
        return
    if tf.train.latest_checkpoint(os.path.join(config.train.workdir, CHECKPOINT_DIR)):
        print(
            "note: resuming on a tf.data.Dataset skips the examples already seen; this "
            "continues exactly only if the dataset yields the same examples in the same "
            "order each time it is iterated (a seeded shuffle does, an unseeded one does not)"
        )
