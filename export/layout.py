"""Where the artifacts go, and how a finished export moves into place all at once."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from patchvae_tf.errors import UserError

SAVED_MODEL = "saved_model"
ONNX_DIR = "onnx"
ONNX_FILE = "encoder.onnx"
ONNX_INT8_FILE = "encoder.int8.onnx"
REPORT = "export_report.json"
MODELS_CONFIG = "models.config"


def version_dir(root: str, version: int) -> str:
    """ROOT/saved_model/<version>: what tensorflow_model_server --model_base_path watches."""
    return os.path.join(root, SAVED_MODEL, str(version))


def check_target(export_dir: str, version: int, overwrite: bool) -> None:
    """Refuses a file as export dir, and an existing version unless overwrite."""
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UserError(f"--export_dir {export_dir!r} is a file, not a directory")
    if overwrite:
        return
    existing = os.path.isdir(version_dir(export_dir, version))
    report = os.path.join(export_dir, REPORT)
    if not existing and os.path.isfile(report):
        try:
            with open(report) as f:
                existing = json.load(f).get("version") == version
        except (OSError, ValueError):
            existing = False
    if existing:
        raise UserError(
            f"version {version} already exists in {export_dir!r}; pass --overwrite to replace it "
            "or --version to pick another"
        )


class Staging:
    """A temporary directory next to the export dir, moved into place by commit().

    Same parent, so every move is a rename on one file system. Leaving the ``with`` block
    without commit() deletes it: a failed export leaves nothing behind.
    """

    def __init__(self, export_dir: str):
        self.export_dir = os.path.abspath(export_dir)
        self.parent = os.path.dirname(self.export_dir)
        self.path = ""

    def __enter__(self) -> Staging:
        os.makedirs(self.parent, exist_ok=True)
        name = os.path.basename(self.export_dir)
        self.path = tempfile.mkdtemp(prefix=f".{name}.export-", dir=self.parent)
        # mkdtemp makes it private (0700); once renamed into place it is the export dir,
        # which a TF Serving container user must be able to read.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def commit(self, version: int, overwrite: bool) -> None:
        """Moves the staged artifacts into the export dir; replaced ones are deleted last."""
        check_target(self.export_dir, version, overwrite)
        if not os.path.exists(self.export_dir):
            os.rename(self.path, self.export_dir)
            os.makedirs(self.path)  # __exit__ removes this empty stand-in
            return
        trash = tempfile.mkdtemp(prefix=".replaced-", dir=self.path)
        moves = []
        if os.path.isdir(self.join(SAVED_MODEL)):
            moves.append((os.path.join(SAVED_MODEL, str(version)), True))
            moves.append((MODELS_CONFIG, False))
        if os.path.isdir(self.join(ONNX_DIR)):
            moves.append((ONNX_DIR, True))
        moves.append((REPORT, False))
        for rel, replace_dir in moves:
            src, dst = self.join(rel), os.path.join(self.export_dir, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if replace_dir and os.path.exists(dst):
                os.rename(dst, os.path.join(trash, rel.replace(os.sep, "_")))
            os.replace(src, dst)
