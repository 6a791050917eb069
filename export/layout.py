"""Where an export's files go: immutable versions, each published whole by one rename, and the
fixed links through E/current (docs/serving.md draws the layout).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

from patchvae_tf.errors import UserError

# The names patchvae_tf.load() reads as well, defined once in the library.
from patchvae_tf.export_layout import GROUP_IN_MODEL, REPORT, SAVED_MODEL

ONNX_DIR = "onnx"
ONNX_FILE = "encoder.onnx"
ONNX_INT8_FILE = "encoder.int8.onnx"
KERAS_DIR = "keras"
KERAS_FILE = "encoder.keras"
RECOGNIZER_ONNX_FILE = "recognizer.onnx"
RECOGNIZER_ONNX_INT8_FILE = "recognizer.int8.onnx"
RECOGNIZER_LITERT_FILE = "recognizer.tflite"
RECOGNIZER_LITERT_INT8_FILE = "recognizer.int8.tflite"
LABELS_FILE = "labels.txt"  # a recognizer's class names, one a line, beside its LiteRT file
MODEL_CARD = "MODEL_CARD.md"
LITERT_DIR = "litert"
LITERT_FILE = "encoder.tflite"
LITERT_INT8_FILE = "encoder.int8.tflite"
MODELS_CONFIG = "models.config"
BATCHING = "batching_parameters.txt"  # export/batching.py writes it
HISTORY = "history"
CURRENT = "current"
# E/<name> -> current/<name>
POINTERS = (ONNX_DIR, KERAS_DIR, LITERT_DIR, REPORT, MODEL_CARD, MODELS_CONFIG, BATCHING)


def version_dir(root: str, version: int) -> str:
    """ROOT/saved_model/<version>: what tensorflow_model_server --model_base_path watches."""
    return os.path.join(root, SAVED_MODEL, str(version))


def _entries(export_dir: str, sub: str) -> dict[int, str]:
    """Version -> name of each entry of E/sub named by a number."""
    root = os.path.join(export_dir, sub)
    out = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.isdigit() and os.path.isdir(os.path.join(root, name)):
            out[int(name)] = name
    return out


def versions(export_dir: str) -> list[int]:
    """Every version published in export_dir, with or without a SavedModel, in order."""
    return sorted({*_entries(export_dir, SAVED_MODEL), *_entries(export_dir, HISTORY)})


def _group_of(export_dir: str, version: int) -> str | None:
    """The path, relative to E, of version's onnx/, report and models.config."""
    model = _entries(export_dir, SAVED_MODEL).get(version)
    if model and os.path.isdir(os.path.join(export_dir, SAVED_MODEL, model, GROUP_IN_MODEL)):
        return os.path.join(SAVED_MODEL, model, GROUP_IN_MODEL)
    entry = _entries(export_dir, HISTORY).get(version)
    return os.path.join(HISTORY, entry) if entry else None


def _remove_dead_staging(export_dir: str) -> None:
    """Deletes the staging directories of exports that were killed (their process is gone)."""
    parent, name = os.path.split(os.path.abspath(export_dir))
    prefix = f".{name}.export-"
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        pid = entry[len(prefix) :].split("-")[0]
        if not entry.startswith(prefix) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _symlink_atomic(target: str, path: str) -> None:
    """Points the symlink path at target, replacing what was there in one rename."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, path)


def recover(export_dir: str) -> str | None:
    """Points E/current at the newest version when a killed export left it one behind.

    Returns "repointed", or None when E/current already names the newest version.
    """
    published = versions(export_dir)
    group = _group_of(export_dir, published[-1]) if published else None
    current = os.path.join(export_dir, CURRENT)
    if group is None or (os.path.islink(current) and os.readlink(current) == group):
        return None
    _symlink_atomic(group, current)
    return "repointed"


def next_version(export_dir: str, step: int) -> int:
    """The version an export without --version gets: the checkpoint's step, or the number
    after the newest version in export_dir when that is not below it.
    """
    published = versions(export_dir) if os.path.isdir(export_dir) else []
    return max(step, published[-1] + 1) if published else step


def new_version(export_dir: str, version: int, step: int, checkpoint: str) -> int:
    """The version an export writes: version (--version), else next_version; check_target'ed."""
    version = version or next_version(export_dir, step)
    if version <= 0:
        raise UserError(f"checkpoint {checkpoint!r} is at step {step}; pass --version=N (N >= 1)")
    check_target(export_dir, version)
    return version


def check_target(export_dir: str, version: int) -> None:
    """Refuses a file as export dir, a directory holding the export's names but no export,
    and a version that is not above every version the export dir holds. First repairs what
    a killed export left.
    """
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UserError(f"--export_dir {export_dir!r} is a file, not a directory")
    _remove_dead_staging(export_dir)
    if not os.path.isdir(export_dir):
        return
    # The fixed links (E/onnx, E/export_report.json, ...) would replace real files there.
    taken = [n for n in POINTERS if os.path.lexists(os.path.join(export_dir, n))]
    if taken and not os.path.lexists(os.path.join(export_dir, CURRENT)):
        raise UserError(
            f"--export_dir {export_dir!r} holds {', '.join(taken)} but is no export directory "
            "(it has no current); export into a new --export_dir"
        )
    recover(export_dir)
    published = versions(export_dir)
    if published and version <= published[-1]:
        taken = "already exists" if version in published else "is below the newest version"
        raise UserError(
            f"version {version} {taken} in {export_dir!r} (newest {published[-1]}); published "
            f"versions never change: leave --version unset for {published[-1] + 1} or pass a "
            "larger one"
        )


class Staging:
    """A temporary export dir next to the real one, moved into it by commit().

    Same parent, so every move is a rename on one file system. Leaving the ``with`` block
    without commit() deletes it: a failed export leaves nothing behind.
    """

    def __init__(self, export_dir: str, version: int):
        self.export_dir = os.path.abspath(export_dir)
        self.parent = os.path.dirname(self.export_dir)
        self.version = version
        self.id = uuid.uuid4().hex[:12]
        self.group_rel = os.path.join(HISTORY, str(version))
        self.path = ""

    def __enter__(self) -> Staging:
        os.makedirs(self.parent, exist_ok=True)
        name = os.path.basename(self.export_dir)
        self.path = tempfile.mkdtemp(prefix=f".{name}.export-{os.getpid()}-", dir=self.parent)
        # mkdtemp makes it private (0700); once renamed into place it is the export dir,
        # which a TF Serving container user must be able to read.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)
        os.makedirs(self.join(self.group_rel))
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def group(self, *parts: str) -> str:
        """A path in this export's group: onnx/, the report, models.config."""
        return self.join(self.group_rel, *parts)

    def saved_model_dir(self) -> str:
        return version_dir(self.path, self.version)

    def commit(self) -> None:
        """Publishes the staged version whole, then points E/current at it."""
        check_target(self.export_dir, self.version)
        published, group = self.group_rel, self.group_rel
        if os.path.isdir(self.saved_model_dir()):
            # The version carries its export's other files, so that a version is all an
            # export wrote and E/current can name a folder inside it.
            os.rename(self.group(), os.path.join(self.saved_model_dir(), GROUP_IN_MODEL))
            os.rmdir(self.join(HISTORY))
            published = os.path.join(SAVED_MODEL, str(self.version))
            group = os.path.join(published, GROUP_IN_MODEL)
        if not os.path.exists(self.export_dir):
            for name in POINTERS:
                os.symlink(os.path.join(CURRENT, name), self.join(name))
            os.symlink(group, self.join(CURRENT))
            os.rename(self.path, self.export_dir)
            os.makedirs(self.path)  # __exit__ removes this empty stand-in
            return
        os.makedirs(os.path.dirname(os.path.join(self.export_dir, published)), exist_ok=True)
        # rename(2) would replace an empty directory of that name: check_target refused
        # every existing version, so the name is free.
        os.rename(self.join(published), os.path.join(self.export_dir, published))
        for name in POINTERS:
            if not os.path.lexists(os.path.join(self.export_dir, name)):
                os.symlink(os.path.join(CURRENT, name), os.path.join(self.export_dir, name))
        _symlink_atomic(group, os.path.join(self.export_dir, CURRENT))
