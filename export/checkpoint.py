"""Restores a training checkpoint into the encoder, refusing one that does not cover it."""

from __future__ import annotations

import os
import re

import tensorflow as tf

from export import serving
from patchvae_tf.errors import UserError
from patchvae_tf.workdir import CHECKPOINT_DIR

_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


def find_checkpoint(workdir: str, checkpoint: str = "") -> str:
    """The checkpoint prefix to export: --checkpoint (a prefix or a directory) or the latest."""
    where = checkpoint or os.path.join(workdir, CHECKPOINT_DIR)
    path = tf.train.latest_checkpoint(where) if os.path.isdir(where) else where
    if not path:
        raise UserError(f"no checkpoint in {where!r}: train first, or pass --checkpoint")
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


def restore_encoder(model, path: str) -> int:
    """Restores every encoder variable of model from the checkpoint at path.

    Returns how many variables were restored. Raises UserError when the checkpoint misses
    one (a different model, or a checkpoint written before encoder stages were saved):
    exporting random weights would pass every later check.
    """
    view = _EncoderView(serving.encoder_parts(model))
    try:
        status = tf.train.Checkpoint(model=view).restore(path)
        status.assert_existing_objects_matched()
    except AssertionError as e:
        first = " ".join(str(e).split())[:300]
        raise UserError(
            f"checkpoint {path!r} does not hold every encoder variable: {first}"
        ) from None
    except (tf.errors.OpError, ValueError) as e:
        raise UserError(f"cannot restore {path!r}: {str(e).splitlines()[0]}") from None
    status.expect_partial()  # the decoder and optimizer are not exported
    return sum(len(layer.variables) for layer in serving.encoder_parts(model).values())
