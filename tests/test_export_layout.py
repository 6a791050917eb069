"""Export commits under fault injection: what a reader of the export dir sees at every stage.

No TensorFlow: the staged artifacts are small files with the layout of a real export.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from export import layout
from patchvae_tf.errors import UserError

PB = "saved_model.pb"


def _read_json(path):
    """The JSON at path, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Crash(BaseException):
    """The process dies here: nothing after it runs, not even cleanup."""


class _Faults:
    """Counts the file-system changes layout makes; the n-th one and all later do nothing."""

    def __init__(self, crash_at):
        self.crash_at, self.count, self.dead = crash_at, 0, False

    def wrap(self, fn):
        def op(*args, **kwargs):
            if self.dead:
                return None
            if self.count == self.crash_at:
                self.dead = True
                raise Crash(fn.__name__)
            self.count += 1
            return fn(*args, **kwargs)

        return op


def _install(monkeypatch, faults):
    class Os:
        def __getattr__(self, name):
            return getattr(os, name)

    class Shutil:
        def __getattr__(self, name):
            return getattr(shutil, name)

    fake_os, fake_shutil = Os(), Shutil()
    for name in ("rename", "replace", "symlink", "remove", "makedirs", "rmdir"):
        setattr(fake_os, name, faults.wrap(getattr(os, name)))
    fake_os.path = os.path
    fake_shutil.rmtree = faults.wrap(shutil.rmtree)
    monkeypatch.setattr(layout, "os", fake_os)
    monkeypatch.setattr(layout, "shutil", fake_shutil)


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _export(export_dir, version, formats=("saved_model", "onnx")):
    """A fake export through layout.Staging; returns its id."""
    with layout.Staging(str(export_dir), version) as stage:
        rep = {"version": version, "export_id": stage.id, "sha256": {}}
        with open(stage.group(layout.MODELS_CONFIG), "w") as f:
            f.write(f"config for {stage.id}\n")
        if "saved_model" in formats:
            os.makedirs(os.path.join(stage.saved_model_dir(), "assets.extra"))
            with open(os.path.join(stage.saved_model_dir(), PB), "w") as f:
                f.write(f"graph of {stage.id}" * 50)
            rel = os.path.join(layout.SAVED_MODEL, str(version), PB)
            rep["sha256"][rel] = _sha(stage.join(rel))
        if "onnx" in formats:
            os.makedirs(stage.group(layout.ONNX_DIR))
            for name in (layout.ONNX_FILE, layout.ONNX_INT8_FILE):
                with open(stage.group(layout.ONNX_DIR, name), "w") as f:
                    f.write(f"{name} of {stage.id}" * 100)
                rel = os.path.join(layout.ONNX_DIR, name)
                rep["sha256"][rel] = _sha(stage.group(rel))
        with open(stage.group(layout.REPORT), "w") as f:
            json.dump(rep, f)
        stage.commit()
        return stage.id


def _served(export_dir):
    """The versions TF Serving sees: numbered names under saved_model/ that are directories."""
    root = os.path.join(export_dir, layout.SAVED_MODEL)
    names = [n for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
    return sorted((n for n in names if os.path.isdir(os.path.join(root, n))), key=int)


def _own_report(export_dir, version):
    """The report a served version carries inside itself."""
    path = os.path.join(export_dir, layout.SAVED_MODEL, str(version), layout.GROUP_IN_MODEL)
    return _read_json(os.path.join(path, layout.REPORT))


def _reader(export_dir):
    """What a reader sees: the id of the one export the top-level files describe (None when
    there is no export), after checking that every file the report names is that export's
    (its SavedModel included) and that every SavedModel version is whole.
    """
    if not os.path.isdir(export_dir):
        return None
    for name in _served(export_dir):
        own = _own_report(export_dir, name)
        assert own is not None, f"version {name} has no report: not whole"
        pb = os.path.join(export_dir, layout.SAVED_MODEL, name, PB)
        assert own["sha256"][f"saved_model/{name}/{PB}"] == _sha(pb)
    rep = _read_json(os.path.join(export_dir, layout.REPORT))
    assert rep is not None, "an export dir without a report"
    for rel, digest in rep["sha256"].items():
        assert _sha(os.path.join(export_dir, rel)) == digest, rel
    with open(os.path.join(export_dir, layout.MODELS_CONFIG)) as f:
        assert rep["export_id"] in f.read()
    return rep["export_id"]


SCENARIOS = ["first_export", "new_version", "onnx_only"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_commit_killed_at_any_step_shows_one_whole_export(tmp_path, monkeypatch, scenario):
    """Kill the commit after each of its file-system changes in turn: the reader sees the old
    export or the new one, every version is whole, nothing published before changes, and the
    next export first points the report at the newest version.
    """
    crash_at, completed, switched = 0, False, set()
    while not completed:
        export_dir = tmp_path / str(crash_at) / "e"
        old = None
        if scenario != "first_export":
            old = _export(export_dir, 5)
            _export(export_dir, 6, formats=("onnx",))  # a version without a SavedModel
            old = _export(export_dir, 7)
            assert _reader(export_dir) == old
        before = {n: _own_report(export_dir, n) for n in _served(export_dir)}
        formats = ("onnx",) if scenario == "onnx_only" else ("saved_model", "onnx")
        with monkeypatch.context() as m:
            _install(m, _Faults(crash_at))
            try:
                new = _export(export_dir, 8, formats=formats)
                completed = True
            except Crash:
                new = None
        seen = _reader(export_dir)
        assert seen in (old, new) or new is None, seen
        assert {n: _own_report(export_dir, n) for n in before} == before  # never changed
        published = layout.versions(str(export_dir)) if seen else []
        # Killed between the version's rename and E/current's: the version is whole and
        # published, the report one behind; the next export's first step repoints it.
        if seen == old and 8 in published:
            assert layout.recover(str(export_dir)) == "repointed"
            assert _read_json(str(export_dir / layout.REPORT))["version"] == 8
            switched.add(crash_at)
        if seen is not None:
            nine = _export(export_dir, 9)
            assert _reader(export_dir) == nine
            assert layout.versions(str(export_dir))[-1] == 9
        crash_at += 1
        assert crash_at < 40
    assert crash_at > 3  # the commit was cut at several points
    if scenario != "first_export":
        assert switched  # the window between the two renames was hit, and repaired


def test_published_versions_are_never_replaced(tmp_path):
    export_dir = str(tmp_path / "e")
    assert layout.next_version(export_dir, 300) == 300  # nothing there yet
    _export(export_dir, 300)
    with pytest.raises(UserError, match=r"version 300 already exists .* \(newest 300\)"):
        layout.check_target(export_dir, 300)
    with pytest.raises(UserError, match="version 299 is below the newest version"):
        layout.check_target(export_dir, 299)
    # Without --version: the checkpoint's step, or the next number when that is taken.
    assert layout.next_version(export_dir, 300) == 301
    assert layout.next_version(export_dir, 500) == 500
    _export(export_dir, layout.next_version(export_dir, 300), formats=("onnx",))
    assert layout.versions(export_dir) == [300, 301]
    assert layout.next_version(export_dir, 300) == 302  # history/ counts too
    assert _served(export_dir) == ["300"]  # an ONNX-only version is not TF Serving's


def test_a_directory_holding_the_export_s_names_but_no_export_is_refused(tmp_path):
    export_dir = tmp_path / "e"
    (export_dir / "onnx").mkdir(parents=True)
    (export_dir / layout.REPORT).write_text("{}")
    with pytest.raises(UserError, match="holds onnx, export_report.json but is no export"):
        layout.check_target(str(export_dir), 1)


def test_staging_of_a_killed_export_is_removed(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(proc.stdout)
    stale = tmp_path / f".e.export-{dead}-abc"
    live = tmp_path / f".e.export-{os.getpid()}-abc"
    stale.mkdir()
    live.mkdir()
    layout.check_target(str(tmp_path / "e"), 1)
    assert not stale.exists() and live.exists()
