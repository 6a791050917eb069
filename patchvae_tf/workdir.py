"""A workdir's layout (what lives where) and its files, written whole or not at all."""

from __future__ import annotations

import os
import tempfile

CONFIG_FILE = "config.json"  # the training Config, as JSON
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"  # TensorBoard summaries of training
EVAL_DIR = "eval"  # the evaluation report, its figures and its TensorBoard logs
# A Keras model passed from Python as the encoder: its Keras serialization (model/backbone.py).
BACKBONE_FILE = "backbone.json"

# --encoder "keras.Model:<digest>" -> the backbone's Keras config (read from a workdir) or a
# function building it (registered by patchvae_tf.train): what builds such a model by name.
_BACKBONES: dict = {}


def remember_backbone(encoder: str, entry) -> None:
    _BACKBONES[encoder] = entry


def saved_backbone(encoder: str):
    """What remember_backbone or read_backbone stored for encoder, or None."""
    return _BACKBONES.get(encoder)


def read_backbone(workdir: str, encoder: str) -> None:
    """Reads workdir's backbone.json for encoder (a Keras model passed from Python)."""
    import json

    from patchvae_tf.errors import UserError

    path = os.path.join(workdir, BACKBONE_FILE)
    try:
        with open(path) as f:
            remember_backbone(encoder, json.load(f))
    except (OSError, ValueError) as e:
        raise UserError(
            f"workdir {workdir!r} was trained with a Keras model passed from Python as its "
            f"encoder ({encoder}), and its {BACKBONE_FILE} cannot be read: {e}"
        ) from None


def restore(cfg, model, step=None):
    """Restores the latest checkpoint of cfg's workdir into model (and step), for reading;
    returns the tf.train.CheckpointManager (its latest_checkpoint is None when there is none).

    Every variable of model must be in the checkpoint (restore.CheckpointMismatch otherwise).
    Training restores its own checkpoint (with the optimizer) in training.train().
    """
    # Imported here: comparison.py reads this module's names without paying for TensorFlow.
    import tensorflow as tf

    from patchvae_tf import restore as strict

    parts = {"model": model} if step is None else {"model": model, "step": step}
    checkpoint = tf.train.Checkpoint(**parts)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(cfg.train.workdir, CHECKPOINT_DIR), max_to_keep=3
    )
    if manager.latest_checkpoint:
        strict.restore(manager.latest_checkpoint, cfg.train.workdir, **parts)
    return manager


def write_bytes_atomic(path: str, content: bytes) -> None:
    """Writes content to path through a temporary file and a rename: a reader (or a crash)
    sees the old file or the new one, never half of one.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """write_bytes_atomic of text, UTF-8 encoded."""
    write_bytes_atomic(path, text.encode("utf-8"))


def publish(staging: str, out_dir: str) -> None:
    """Moves every file of the staging directory into out_dir, each one atomically.

    A section of several files (the evaluation's report and figures) is written into a
    staging directory beside out_dir first, so a failure half-way leaves out_dir untouched.
    """
    for dirpath, _, files in os.walk(staging):
        target = os.path.join(out_dir, os.path.relpath(dirpath, staging))
        os.makedirs(target, exist_ok=True)
        for f in files:
            os.replace(os.path.join(dirpath, f), os.path.join(target, f))
