"""patchvae_tf.train(): training from Python, on data passed from Python (or a dataset name),
with any Keras model as the encoder.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from patchvae_tf.config import KERAS_MODEL_PREFIX, Config, load_config
from patchvae_tf.data import folder_source, python_source
from patchvae_tf.errors import UserError
from patchvae_tf.model import backbone
from patchvae_tf.pretrained import Pretrained, load
from patchvae_tf.workdir import (
    BACKBONE_FILE,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    remember_backbone,
    saved_backbone,
)


def train(
    config: Config, data=None, *, encoder=None, preprocessing=None, callbacks=()
) -> Pretrained:
    """Trains config's model in config.train.workdir (resuming from its latest checkpoint,
    as train.py does) and returns ``patchvae_tf.load(workdir)``.

    data: None (config.data.dataset is read), a dataset name as ``--dataset`` takes it, or
    data passed from Python (python_source.EXPECTED): images of any size, uint8 or float
    pixels in [0, 255], resized, centre-cropped and normalised as the config says.
    config.json records the data as ``python:KIND``; the workdir does not hold it.

    encoder: None (config.model.encoder), or any Keras model mapping images to a feature map
    (a keras.Model, a function building one, which a multi-device strategy needs, or
    ``module:function``), with ``preprocessing`` (a module-level function or
    ``module:function`` taking pixels in [0, 255]) applied inside the model. The heads and a
    decoder matched to its feature map are built around it; --scale follows the map.

    callbacks: keras.callbacks.Callback objects, called at the start, at every logged step
    with the logged metrics, and at the end; one that sets ``model.stop_training`` ends
    training there (with a checkpoint; training again continues from it).
    """
    if not isinstance(config, Config):
        raise UserError(f"config must be a patchvae_tf.config.Config, got {type(config).__name__}")
    from patchvae_tf import training  # the loop imports Keras models and TFP
    from patchvae_tf.training import loop

    # First: a multi-worker strategy configures TensorFlow's collectives, which must come
    # before any other op (reading the data's first image, building the backbone).
    strategy = training.create_strategy(config)
    source = None
    if isinstance(data, str):
        config = config.replace(data=dataclasses.replace(config.data, dataset=data))
    elif data is not None:
        limits = folder_source.limits_of(config.data)
        source = python_source.python_source(data, config.model.image_size, limits)
        config = config.replace(data=dataclasses.replace(config.data, dataset=source.name))
        _say_how_it_resumes(config, source)
    config, built = _with_encoder(config, encoder, preprocessing)
    loop._check_workdir(config)  # before anything is written into the workdir
    if built is not None:
        path = os.path.join(config.train.workdir, BACKBONE_FILE)
        if not os.path.exists(path):  # a resumed run keeps what its checkpoints were of
            backbone.save(path, built)
    training.train(config, source=source, callbacks=callbacks, strategy=strategy)
    return load(config.train.workdir)


def _with_encoder(config: Config, encoder, preprocessing):
    """The config with the encoder passed from Python (--scale matched to it), and the built
    Backbone when it is a Keras model the workdir must keep (backbone.json), else None.
    """
    if encoder is None:
        if preprocessing is not None:
            raise UserError("preprocessing= goes with encoder=, the backbone it prepares for")
        return config.replace(model=backbone.matched(config.model)), None
    name, pre, built = backbone.register(encoder, preprocessing)
    keep = name.startswith(KERAS_MODEL_PREFIX)
    saved = os.path.join(config.train.workdir, CONFIG_FILE)
    if keep and os.path.isfile(saved):
        before = load_config(saved).model.encoder
        if before.startswith(KERAS_MODEL_PREFIX):
            # The same run again, with the model object made anew (Keras may have numbered
            # its layers differently): the checkpoint's restore checks that it fits.
            remember_backbone(before, saved_backbone(name))
            name = before
    model = dataclasses.replace(config.model, encoder=name, encoder_preprocessing=pre)
    return config.replace(model=backbone.matched(model, built)), built if keep else None


def _say_how_it_resumes(config: Config, source) -> None:
    kind = source.name[len(python_source.PREFIX) :]
    if kind not in ("dataset", "function"):
        return
    if not tf.train.latest_checkpoint(os.path.join(config.train.workdir, CHECKPOINT_DIR)):
        return
    if kind == "dataset":
        print(
            "note: resuming on a tf.data.Dataset object skips the examples already seen, "
            "exactly only if it yields the same order each time it is iterated (no shuffle, "
            "or shuffle(..., reshuffle_each_iteration=False)); a function that builds it "
            "(with a seeded shuffle) resumes exactly"
        )
    else:
        print(
            "note: resuming skips the examples already seen in the stream the data function "
            "builds: exact if each call builds the same stream (a seeded shuffle does)"
        )
