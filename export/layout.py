"""Where the artifacts go, and how a finished export becomes visible in one rename.

Layout of an export dir E:

    E/saved_model/<version>/         a SavedModel, with its own report in assets.extra/
    E/history/<version>-<id>/        one export's onnx/, export_report.json, models.config
    E/current -> history/<version>-<id>   the most recent export
    E/onnx, E/export_report.json, E/models.config -> current/...   fixed symlinks

Readers open E/onnx/..., E/export_report.json and E/models.config; those always resolve
into one export because a commit changes only E/current, by renaming a new symlink over
it (as Kubernetes swaps a mounted ConfigMap). A SavedModel version appears by renaming its
whole directory into E/saved_model/, which TF Serving watches. A journal names the commit
under way, so an export killed half way through it is finished or undone by the next one.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
import uuid

from patchvae_tf.errors import UserError

SAVED_MODEL = "saved_model"
ONNX_DIR = "onnx"
ONNX_FILE = "encoder.onnx"
ONNX_INT8_FILE = "encoder.int8.onnx"
REPORT = "export_report.json"
MODELS_CONFIG = "models.config"
HISTORY = "history"
CURRENT = "current"
JOURNAL = ".commit.json"
POINTERS = (ONNX_DIR, REPORT, MODELS_CONFIG)  # E/<name> -> current/<name>
REPORT_COPY = os.path.join("assets.extra", REPORT)  # inside each SavedModel version


def version_dir(root: str, version: int) -> str:
    """ROOT/saved_model/<version>: what tensorflow_model_server --model_base_path watches."""
    return os.path.join(root, SAVED_MODEL, str(version))


def read_json(path: str) -> dict | None:
    """The JSON object at path, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _history(export_dir: str) -> list[str]:
    root = os.path.join(export_dir, HISTORY)
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


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


def check_target(export_dir: str, version: int, overwrite: bool) -> None:
    """Refuses a file as export dir, and an existing version unless overwrite.

    First finishes or undoes a commit that a killed export left half done.
    """
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UserError(f"--export_dir {export_dir!r} is a file, not a directory")
    _remove_dead_staging(export_dir)
    if not os.path.isdir(export_dir):
        return
    recover(export_dir)
    if overwrite:
        return
    existing = os.path.isdir(version_dir(export_dir, version)) or any(
        name.split("-")[0] == str(version) for name in _history(export_dir)
    )
    report = read_json(os.path.join(export_dir, REPORT))
    if existing or (report or {}).get("version") == version:
        raise UserError(
            f"version {version} already exists in {export_dir!r}; pass --overwrite to replace it "
            "or --version to pick another"
        )


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _symlink_atomic(target: str, path: str) -> None:
    """Points the symlink path at target, replacing what was there in one rename."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swaps two paths in one step (Linux renameat2); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _replaced(path: str) -> str:
    """Where _replace_dir parks the directory it replaces, when it cannot swap atomically."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.replaced")


def _replace_dir(src: str, dst: str) -> None:
    """Moves directory src to dst; an existing dst ends up at src (deleted by the caller)."""
    if not os.path.exists(dst):
        os.rename(src, dst)
    elif not _exchange(src, dst):
        # Without an atomic swap dst is absent for a moment, never half written; the old
        # one waits beside it, where recover() puts it back if the commit is undone.
        os.rename(dst, _replaced(dst))
        os.rename(src, dst)


def _point(name: str, export_dir: str) -> None:
    """Makes E/name the fixed symlink current/name, replacing a real file or directory."""
    path = os.path.join(export_dir, name)
    if os.path.islink(path):
        return
    tmp = f"{path}.link.tmp"
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(os.path.join(CURRENT, name), tmp)
    if not os.path.isdir(path):
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp)  # now the real directory, whose files current/ also holds
    else:
        os.rename(path, f"{path}.legacy.tmp")
        os.rename(tmp, path)
        shutil.rmtree(f"{path}.legacy.tmp")


def _link(src: str, dst: str) -> None:
    """A second name for a file (no copy), or a copy where the file system has no links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _adopt_legacy(export_dir: str) -> None:
    """An export dir written before history/ existed: its real onnx/, report and
    models.config are linked into history/ and current/ names them, so that the fixed
    symlinks can take their place and show the same files meanwhile.
    """
    if os.path.lexists(os.path.join(export_dir, CURRENT)):
        return
    real = [n for n in POINTERS if os.path.lexists(os.path.join(export_dir, n))]
    if not real:
        return
    old = (read_json(os.path.join(export_dir, REPORT)) or {}).get("version", 0)
    rel = os.path.join(HISTORY, f"{old}-legacy")
    group = os.path.join(export_dir, rel)
    shutil.rmtree(group, ignore_errors=True)  # a killed adoption's partial copy
    os.makedirs(group)
    for name in real:
        src, dst = os.path.join(export_dir, name), os.path.join(group, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, copy_function=_link)
        else:
            _link(src, dst)
    _symlink_atomic(rel, os.path.join(export_dir, CURRENT))


def _roll_forward(export_dir: str, journal: dict) -> None:
    """The visible part of a commit: E/current names the new export; idempotent."""
    for name in POINTERS:
        _point(name, export_dir)
    _symlink_atomic(journal["group"], os.path.join(export_dir, CURRENT))
    shutil.rmtree(_replaced(version_dir(export_dir, journal["version"])), ignore_errors=True)
    # An overwritten version's previous export goes once the new one is in place.
    mine = os.path.basename(journal["group"])
    for name in _history(export_dir):
        if name != mine and name.split("-")[0] == str(journal["version"]):
            shutil.rmtree(os.path.join(export_dir, HISTORY, name), ignore_errors=True)
    os.remove(os.path.join(export_dir, JOURNAL))


def recover(export_dir: str) -> str | None:
    """Finishes a commit that reached its SavedModel rename, undoes an earlier one.

    Returns "finished", "undone" or None (nothing was under way).
    """
    journal = read_json(os.path.join(export_dir, JOURNAL))
    if journal is None:
        if os.path.exists(os.path.join(export_dir, JOURNAL)):  # cut off while written
            os.remove(os.path.join(export_dir, JOURNAL))
        return None
    group = os.path.join(export_dir, journal["group"])
    model = version_dir(export_dir, journal["version"])
    if not os.path.exists(model) and os.path.isdir(_replaced(model)):
        os.rename(_replaced(model), model)  # killed between the two renames of _replace_dir
    saved = read_json(os.path.join(model, REPORT_COPY))
    model_in_place = not journal["saved_model"] or (saved or {}).get("export_id") == journal["id"]
    if os.path.isdir(group) and model_in_place:
        _roll_forward(export_dir, journal)
        return "finished"
    shutil.rmtree(group, ignore_errors=True)
    os.remove(os.path.join(export_dir, JOURNAL))
    return "undone"


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
        self.group_rel = os.path.join(HISTORY, f"{version}-{self.id}")
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
        """A path in this export's history entry: onnx/, the report, models.config."""
        return self.join(self.group_rel, *parts)

    def saved_model_dir(self) -> str:
        return version_dir(self.path, self.version)

    def commit(self, overwrite: bool) -> None:
        """Makes the staged export visible; what it replaces is deleted last."""
        check_target(self.export_dir, self.version, overwrite)
        saved_model = os.path.isdir(self.saved_model_dir())
        if saved_model:
            # Each version describes itself, and tells recover() which export it came from.
            shutil.copyfile(self.group(REPORT), os.path.join(self.saved_model_dir(), REPORT_COPY))
        journal = {
            "id": self.id,
            "version": self.version,
            "group": self.group_rel,
            "saved_model": saved_model,
        }
        if not os.path.exists(self.export_dir):
            for name in POINTERS:
                os.symlink(os.path.join(CURRENT, name), self.join(name))
            os.symlink(self.group_rel, self.join(CURRENT))
            os.rename(self.path, self.export_dir)
            os.makedirs(self.path)  # __exit__ removes this empty stand-in
            return
        _adopt_legacy(self.export_dir)
        _write_atomic(os.path.join(self.export_dir, JOURNAL), json.dumps(journal))
        os.makedirs(os.path.join(self.export_dir, HISTORY), exist_ok=True)
        os.rename(self.group(), os.path.join(self.export_dir, self.group_rel))  # not yet seen
        if saved_model:
            os.makedirs(os.path.join(self.export_dir, SAVED_MODEL), exist_ok=True)
            _replace_dir(self.saved_model_dir(), version_dir(self.export_dir, self.version))
        _roll_forward(self.export_dir, journal)
