"""Where the artifacts go, and how a finished export becomes visible in one rename.

Layout of an export dir E:

    E/saved_model/<version> -> .<version>-<id>   the versions TF Serving watches and loads
    E/saved_model/.<version>-<id>/               a SavedModel; its assets.extra/ holds its
                                                 report and export/ (onnx/, litert/,
                                                 export_report.json, models.config)
    E/history/<version>-<id>/                    an export without a SavedModel (ONNX only)
    E/current -> saved_model/<version>/assets.extra/export  (or history/<version>-<id>)
    E/onnx, E/litert, E/export_report.json, E/models.config,
    E/batching_parameters.txt -> current/...    fixed symlinks

Every change a reader can see is the rename of one symlink (as Kubernetes swaps a mounted
ConfigMap). E/current resolves through E/saved_model/<version>, so re-exporting the version
the report describes swaps that SavedModel, its ONNX files and the report in one rename; a
new version appears whole, with its own report, just before E/current names it. The real
directories stay inside E/saved_model/ because a TF Serving container mounts only that folder
(a link out of it would dangle there); TF Serving skips names that are not numbers. A journal
names the commit under way: the next export finishes it once its directory is in place, and
undoes it before.
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
LITERT_DIR = "litert"
LITERT_FILE = "encoder.tflite"
LITERT_INT8_FILE = "encoder.int8.tflite"
REPORT = "export_report.json"
MODELS_CONFIG = "models.config"
BATCHING = "batching_parameters.txt"  # export/batching.py writes it
HISTORY = "history"
CURRENT = "current"
JOURNAL = ".commit.json"
POINTERS = (ONNX_DIR, LITERT_DIR, REPORT, MODELS_CONFIG, BATCHING)  # E/<name> -> current/<name>
REPORT_COPY = os.path.join("assets.extra", REPORT)  # inside each SavedModel version
GROUP_IN_MODEL = os.path.join("assets.extra", "export")  # its export's onnx/, report, config


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
    """Where _point_version parks a real version directory it replaces, when it cannot swap
    atomically.
    """
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.replaced")


def _point_version(export_dir: str, version: int, store: str) -> None:
    """Makes E/saved_model/<version> the symlink store (a directory beside it) in one rename."""
    path = version_dir(export_dir, version)
    if os.path.islink(path) and os.readlink(path) == store:
        return
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    os.symlink(store, tmp)
    if os.path.islink(path) or not os.path.isdir(path):
        os.replace(tmp, path)
    elif not _exchange(tmp, path):
        # A real directory (written before versions were links) cannot be renamed over:
        # without an atomic swap the version is absent for a moment, never half written.
        os.rename(path, _replaced(path))
        os.replace(tmp, path)
    # After a swap tmp holds the old directory; _collect deletes it.


def _delete(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.remove(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _collect(export_dir: str, journal: dict) -> None:
    """Deletes what the commit replaced: the version's other directories and links under
    E/saved_model/, and its other history entries. Only names nobody reads any more.
    """
    version, mine = str(journal["version"]), journal["id"]
    models = os.path.join(export_dir, SAVED_MODEL)
    link = os.path.join(models, version)
    live = os.readlink(link) if os.path.islink(link) else None
    for name in os.listdir(models) if os.path.isdir(models) else []:
        old_store = name.startswith(f".{version}-") and name != live
        leftover = name == f".{version}.replaced" or (
            name.startswith(f"{version}.") and name.endswith(".tmp")
        )
        if old_store or leftover:
            _delete(os.path.join(models, name))
    for name in _history(export_dir):
        if name.split("-")[0] == version and name != f"{version}-{mine}":
            shutil.rmtree(os.path.join(export_dir, HISTORY, name), ignore_errors=True)


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


def _move_current_into_model(export_dir: str) -> None:
    """An export dir whose E/current names a history/ entry (as earlier releases wrote them)
    while the SavedModel of that export is in place: the entry is linked into the model's
    assets.extra/export and E/current names it there, showing the same files. From then on
    re-exporting that version swaps the model and the report together.
    """
    current = os.path.join(export_dir, CURRENT)
    if not os.path.islink(current) or not os.readlink(current).startswith(HISTORY + os.sep):
        return
    rep = read_json(os.path.join(current, REPORT)) or {}
    version = rep.get("version")
    if not isinstance(version, int) or not any(
        rel.startswith(f"{SAVED_MODEL}/{version}/") for rel in rep.get("sha256", {})
    ):
        return  # an export without a SavedModel, or one too old to say
    model = version_dir(export_dir, version)
    own = read_json(os.path.join(model, REPORT_COPY)) or {}
    if own.get("export_id") is None or own.get("export_id") != rep.get("export_id"):
        return
    inside = os.path.join(model, GROUP_IN_MODEL)
    if not os.path.isdir(inside):
        tmp = f"{inside}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a killed adoption's partial copy
        shutil.copytree(os.path.realpath(current), tmp, copy_function=_link)
        os.rename(tmp, inside)
    _symlink_atomic(os.path.join(SAVED_MODEL, str(version), GROUP_IN_MODEL), current)


def _roll_forward(export_dir: str, journal: dict) -> None:
    """The visible part of a commit: the version's link, then E/current; idempotent."""
    for name in POINTERS:
        _point(name, export_dir)
    if journal.get("store"):
        _point_version(export_dir, journal["version"], journal["store"])
    _symlink_atomic(journal["group"], os.path.join(export_dir, CURRENT))
    _collect(export_dir, journal)
    os.remove(os.path.join(export_dir, JOURNAL))


def recover(export_dir: str) -> str | None:
    """Finishes a commit whose new directory is in place, undoes an earlier one.

    Returns "finished", "undone" or None (nothing was under way).
    """
    journal = read_json(os.path.join(export_dir, JOURNAL))
    if journal is None:
        if os.path.exists(os.path.join(export_dir, JOURNAL)):  # cut off while written
            os.remove(os.path.join(export_dir, JOURNAL))
        return None
    group = os.path.join(export_dir, journal["group"])
    if "store" in journal:
        store = journal["store"]
        placed = os.path.isdir(os.path.join(export_dir, SAVED_MODEL, store) if store else group)
    else:  # a journal of an earlier release, which renamed real version directories
        model = version_dir(export_dir, journal["version"])
        if not os.path.exists(model) and os.path.isdir(_replaced(model)):
            os.rename(_replaced(model), model)
        saved = read_json(os.path.join(model, REPORT_COPY)) or {}
        in_place = not journal["saved_model"] or saved.get("export_id") == journal["id"]
        placed = os.path.isdir(group) and in_place
        if not placed:
            shutil.rmtree(group, ignore_errors=True)
    if placed:
        _roll_forward(export_dir, journal)
        return "finished"
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
        model = self.saved_model_dir()
        store, group_rel, staged = None, self.group_rel, self.group()
        if os.path.isdir(model):
            # Each version describes itself, and carries its export's other files, so that
            # E/current can resolve through the version's link.
            shutil.copyfile(self.group(REPORT), os.path.join(model, REPORT_COPY))
            os.rename(self.group(), os.path.join(model, GROUP_IN_MODEL))
            store = f".{self.version}-{self.id}"
            staged = self.join(SAVED_MODEL, store)
            os.rename(model, staged)
            group_rel = os.path.join(SAVED_MODEL, str(self.version), GROUP_IN_MODEL)
        journal = {"id": self.id, "version": self.version, "group": group_rel, "store": store}
        if not os.path.exists(self.export_dir):
            for name in POINTERS:
                os.symlink(os.path.join(CURRENT, name), self.join(name))
            if store:
                os.symlink(store, self.saved_model_dir())
                os.rmdir(self.join(HISTORY))  # emptied above
            os.symlink(group_rel, self.join(CURRENT))
            os.rename(self.path, self.export_dir)
            os.makedirs(self.path)  # __exit__ removes this empty stand-in
            return
        _adopt_legacy(self.export_dir)
        _move_current_into_model(self.export_dir)
        _write_atomic(os.path.join(self.export_dir, JOURNAL), json.dumps(journal))
        # Not yet seen: a hidden name under saved_model/, or a history entry nobody names.
        if store:
            os.makedirs(os.path.join(self.export_dir, SAVED_MODEL), exist_ok=True)
            os.rename(staged, os.path.join(self.export_dir, SAVED_MODEL, store))
        else:
            os.makedirs(os.path.join(self.export_dir, HISTORY), exist_ok=True)
            os.rename(staged, os.path.join(self.export_dir, group_rel))
        _roll_forward(self.export_dir, journal)
