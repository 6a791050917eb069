"""The checkpoint an export reads, restored through patchvae_tf.restore (every variable matched)."""

from __future__ import annotations

import os
import re

import tensorflow as tf

from patchvae_tf import restore as strict
from patchvae_tf.errors import UserError
from patchvae_tf.workdir import CHECKPOINT_DIR

_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


class EncoderView(tf.Module):
    """The model's encoder parts under their attribute names: the checkpoint's ``model`` node
    without the decoder, which is not exported and so need not match.
    """

    def __init__(self, model):
        super().__init__(name="encoder_view")
        for name, layer in model.encoder_parts().items():
            setattr(self, name, layer)


def restore(workdir: str, checkpoint: str = "", **objects) -> str:
    """Restores objects (as tf.train.Checkpoint takes them) and returns the checkpoint's path.

    checkpoint (--checkpoint, a prefix or a directory's latest) is restored as named, or
    refused in one line; without it, the workdir's newest readable checkpoint, as training
    resumes. restore.CheckpointMismatch names the first variable the checkpoint misses:
    random weights would pass every later check.
    """
    if checkpoint:
        return strict.named(checkpoint, workdir, **objects)
    where = os.path.join(workdir, CHECKPOINT_DIR)
    path = strict.newest_readable(where, workdir, **objects)
    if not path:
        raise UserError(f"no checkpoint in {where!r}: train first, or pass --checkpoint")
    return path


def step(path: str) -> int:
    """The training step saved with the checkpoint (else the -N of its name, else 0)."""
    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(_STEP_KEY):
        return int(reader.get_tensor(_STEP_KEY))
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else 0
