"""A workdir's layout (what lives where), its training lock, and its files written whole or not
at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time

from patchvae_tf.errors import UserError

CONFIG_FILE = "config.json"  # the training Config, as JSON
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"  # TensorBoard summaries of training
EVAL_DIR = "eval"  # the evaluation report, its figures and its TensorBoard logs
LOCK_FILE = ".training.lock"  # held by the training run writing here (its chief)
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


def restore(cfg, model, step=None) -> str | None:
    """Restores the newest readable checkpoint of cfg's workdir into model (and step), for
    reading, passing over unreadable ones with a warning as training does; returns its path
    (None when there is none).

    Every variable of model must be in the checkpoint (restore.CheckpointMismatch otherwise).
    Training restores its own checkpoint (with the optimizer) in training.train().
    """
    # Imported here: comparison.py reads this module's names without paying for TensorFlow.
    from patchvae_tf import restore as strict

    parts = {"model": model} if step is None else {"model": model, "step": step}
    checkpoint_dir = os.path.join(cfg.train.workdir, CHECKPOINT_DIR)
    return strict.newest_readable(checkpoint_dir, cfg.train.workdir, **parts)


def write_bytes_atomic(path: str, content: bytes) -> None:
    """Writes content to path through a temporary file and a rename: a reader (or a crash)
    sees the old file or the new one, never half of one.
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        # mkstemp makes the file 0600; everything else in a workdir is 0644 (less the umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)
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


@contextlib.contextmanager
def training_lock(workdir: str):
    """Holds workdir's training lock while the block runs; UserError (one line) naming the
    holder when another run holds it.

    An flock on LOCK_FILE: the kernel releases it when its process ends, however it ends,
    so a lock left by a killed run is stale by construction and the next run takes it (the
    file stays, naming the last holder). Only a multi-worker run's chief takes it: its
    workers share the workdir without it.
    """
    import fcntl  # POSIX only, as the preemption handling is

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        os.close(fd)
        try:
            who = json.loads(holder)
            said = f"pid {who['pid']} on {who['host']}, since {who['since']}"
        except (ValueError, KeyError, TypeError):
            said = "its process is still running"
        raise UserError(
            f"--workdir {workdir!r} is in use by another training run ({said}); wait for it "
            "to end or use another --workdir"
        ) from None
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
