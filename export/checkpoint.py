"""Restores a training checkpoint into the encoder, refusing one that does not cover it."""

from __future__ import annotations

import os
import re

import tensorflow as tf

from export import serving
from patchvae_tf import restore as strict
from patchvae_tf.errors import UserError
from patchvae_tf.workdir import CHECKPOINT_DIR

_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def named_checkpoint(checkpoint: str) -> str:
    """The checkpoint prefix --checkpoint names (a prefix, or a directory's latest)."""
    path = tf.train.latest_checkpoint(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    if not path:
        raise UserError(f"no checkpoint in {checkpoint!r}: train first, or pass --checkpoint")
    if not tf.io.gfile.exists(path + ".index"):
        raise UserError(f"checkpoint {path!r} does not exist (no {path}.index)")
    return path


def checkpoint_step(path: str) -> int:
    """The training step saved with the checkpoint (else the -N of its name)."""
    reader = tf.train.load_checkpoint(path)
    if reader.has_tensor(_STEP_KEY):
        return int(reader.get_tensor(_STEP_KEY))
    match = re.search(r"-(\d+)$", path)
    if not match:
        raise UserError(f"checkpoint {path!r} records no step; pass --version")
    return int(match.group(1))


class _EncoderView(tf.Module):
    """The model's encoder parts under their attribute names, i.e. a sub-tree of the
    checkpoint's ``model`` node: restoring through it touches nothing else.
    """

    def __init__(self, parts: dict):
        super().__init__(name="encoder_view")
        for name, layer in parts.items():
            setattr(self, name, layer)


def restore_encoder(model, workdir: str, checkpoint: str = "") -> tuple[str, int]:
    """Restores every encoder variable of model; returns (checkpoint path, variables).

    --checkpoint (checkpoint) is restored as named, or refused in one line when it cannot be
    read. Without it, the newest readable checkpoint of the workdir, as training resumes:
    an unreadable newer one is passed over with a warning, and the export's step and
    version are the one restored. Raises restore.CheckpointMismatch naming the workdir and
    the first variable the checkpoint misses (a different model, or a checkpoint written
    before encoder stages were saved): exporting random weights would pass every later
    check.
    """
    view = _EncoderView(serving.encoder_parts(model))
    # The decoder and optimizer are not exported: only the view's variables must match.
    if checkpoint:
        path = named_checkpoint(checkpoint)
        strict.named(path, workdir or os.path.dirname(os.path.dirname(path)), model=view)
    else:
        where = os.path.join(workdir, CHECKPOINT_DIR)
        path = strict.newest_readable(where, workdir, model=view)
        if not path:
            raise UserError(f"no checkpoint in {where!r}: train first, or pass --checkpoint")
    return path, sum(len(layer.variables) for layer in serving.encoder_parts(model).values())
