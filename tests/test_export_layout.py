"""Export commits under fault injection: what a reader of the export dir sees at every stage.

No TensorFlow: the staged artifacts are small files with the layout of a real export.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from export import layout

PB = "saved_model.pb"


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
    for name in ("rename", "replace", "symlink", "remove", "makedirs", "link"):
        setattr(fake_os, name, faults.wrap(getattr(os, name)))
    fake_os.path = os.path
    for name in ("rmtree", "copyfile", "copytree"):
        setattr(fake_shutil, name, faults.wrap(getattr(shutil, name)))
    monkeypatch.setattr(layout, "os", fake_os)
    monkeypatch.setattr(layout, "shutil", fake_shutil)
    monkeypatch.setattr(layout, "_exchange", faults.wrap(layout._exchange))


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _export(export_dir, version, overwrite=False, formats=("saved_model", "onnx")):
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
        stage.commit(overwrite)
        return stage.id


def _reader(export_dir):
    """What a reader sees: the id of the one export the top-level files describe (None when
    there is no export), after checking that every file the report names is that export's
    (its SavedModel included) and that every SavedModel version is whole.
    """
    for name in _served(export_dir):
        version = os.path.join(export_dir, layout.SAVED_MODEL, name)
        own = layout.read_json(os.path.join(version, layout.REPORT_COPY))
        assert own is not None, f"version {name} has no report: not whole"
        assert own["sha256"][f"saved_model/{name}/{PB}"] == _sha(os.path.join(version, PB))
    rep = layout.read_json(os.path.join(export_dir, layout.REPORT))
    if rep is None:
        return None
    for rel, digest in rep["sha256"].items():
        assert _sha(os.path.join(export_dir, rel)) == digest, rel
    with open(os.path.join(export_dir, layout.MODELS_CONFIG)) as f:
        assert rep["export_id"] in f.read()
    return rep["export_id"]


def _served(export_dir):
    """The versions TF Serving sees: numbered names under saved_model/ that are directories."""
    root = os.path.join(export_dir, layout.SAVED_MODEL)
    names = [n for n in os.listdir(root) if n.isdigit()]
    return sorted(n for n in names if os.path.isdir(os.path.join(root, n)))


def _model_id(export_dir, version):
    """The export a served version comes from, by its own report."""
    path = os.path.join(export_dir, layout.SAVED_MODEL, str(version), layout.REPORT_COPY)
    return (layout.read_json(path) or {}).get("export_id")


def _to_history_layout(export_dir):
    """The layout of the previous release: real version directories, each export's onnx/,
    report and models.config in history/<version>-<id>, E/current naming that entry.
    """
    models = os.path.join(export_dir, layout.SAVED_MODEL)
    os.makedirs(os.path.join(export_dir, layout.HISTORY), exist_ok=True)
    current = None
    for name in _served(export_dir):
        store = os.readlink(os.path.join(models, name))
        if os.readlink(os.path.join(export_dir, layout.CURRENT)).startswith(f"saved_model/{name}/"):
            current = name
        os.remove(os.path.join(models, name))
        os.rename(os.path.join(models, store), os.path.join(models, name))
        entry = os.path.join(layout.HISTORY, f"{name}-{_model_id(export_dir, name)}")
        os.rename(
            os.path.join(models, name, layout.GROUP_IN_MODEL), os.path.join(export_dir, entry)
        )
        if name == current:
            os.remove(os.path.join(export_dir, layout.CURRENT))
            os.symlink(entry, os.path.join(export_dir, layout.CURRENT))


def _to_legacy_layout(export_dir):
    """The layout of earlier releases still: real onnx/, report and models.config files."""
    _to_history_layout(export_dir)
    for name in layout.POINTERS:
        path = os.path.join(export_dir, name)
        real = os.path.realpath(path)
        os.remove(path)
        if os.path.exists(real):  # litert/ only where it was exported: earlier releases had none
            shutil.move(real, path)
    shutil.rmtree(os.path.join(export_dir, layout.HISTORY))
    os.remove(os.path.join(export_dir, layout.CURRENT))


def _settled(export_dir):
    """After a commit finished: no journal, and under saved_model/ only numbered versions and
    the directories they name (nothing a killed commit left behind).
    """
    assert not os.path.exists(os.path.join(export_dir, layout.JOURNAL))
    models = os.path.join(export_dir, layout.SAVED_MODEL)
    names = set(os.listdir(models))
    versions = {n for n in names if n.isdigit()}
    stores = {
        os.readlink(os.path.join(models, n))
        for n in versions
        if os.path.islink(os.path.join(models, n))
    }
    assert names == versions | stores, sorted(names - versions - stores)
    return sorted(versions)


SCENARIOS = [
    "new_version",
    "overwrite",
    "overwrite_without_exchange",
    "onnx_only",
    "legacy_dir",
    "history_layout_overwrite",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_commit_killed_at_any_step_shows_one_whole_export(tmp_path, monkeypatch, scenario):
    """Kill the commit after each of its file-system changes in turn; the reader sees the old
    export or the new one, and the next export finishes or undoes what was under way.
    """
    if scenario == "overwrite_without_exchange":
        monkeypatch.setattr(layout, "_exchange", lambda a, b: False)
    crash_at, completed = 0, False
    while not completed:
        root = tmp_path / str(crash_at)
        export_dir = root / "e"
        old = _export(export_dir, 5)
        if scenario == "legacy_dir":
            _to_legacy_layout(export_dir)
        if scenario == "history_layout_overwrite":
            _to_history_layout(export_dir)
        assert _reader(export_dir) == old
        version = 5 if "overwrite" in scenario else 6
        formats = ("onnx",) if scenario == "onnx_only" else ("saved_model", "onnx")
        with monkeypatch.context() as m:
            faults = _Faults(crash_at)
            _install(m, faults)
            try:
                new = _export(export_dir, version, overwrite=version == 5, formats=formats)
                completed = True
            except Crash:
                new = None
        seen = _reader(export_dir)
        assert seen == old or (new is None and seen not in (None, old)) or seen == new
        # The next export (a third version) first finishes or undoes the killed commit.
        third = _export(export_dir, 7)
        assert _reader(export_dir) == third
        kept = _settled(export_dir)
        assert kept in (["5", "7"], ["5", "6", "7"]), kept  # nothing saved before is lost
        history = [n.split("-")[0] for n in layout._history(str(export_dir))]
        assert len(history) == len(set(history)) and set(history) <= {"5", "6"}, history
        crash_at += 1
        assert crash_at < 80
    assert crash_at > 5  # the commit was cut at several points


@pytest.mark.parametrize("start", ["links", "history_layout", "history_layout_without_exchange"])
def test_overwriting_the_reported_version_swaps_model_and_report_together(
    tmp_path, monkeypatch, start
):
    """--overwrite of the version E/export_report.json describes, killed after each change in
    turn: at every kill point the report, the ONNX files and the SavedModel TF Serving loads
    for that version come from one export, the old one up to one rename and the new one from
    it on. Starting from the previous release's layout (real version directories) the first
    commit moves the report under the version's directory first, showing the same files.
    """
    if start == "history_layout_without_exchange":
        monkeypatch.setattr(layout, "_exchange", lambda a, b: False)
    seen, crash_at, completed = [], 0, False
    while not completed:
        export_dir = tmp_path / str(crash_at) / "e"
        old = _export(export_dir, 5)
        if start != "links":
            _to_history_layout(export_dir)
        with monkeypatch.context() as m:
            _install(m, _Faults(crash_at))
            try:
                new = _export(export_dir, 5, overwrite=True)
                completed = True
            except Crash:
                new = None
        report = _reader(export_dir)
        if report is None:
            # Only without an atomic swap, replacing a real version directory: the version
            # is absent for a moment, and the report, which lives inside it, with it.
            assert start == "history_layout_without_exchange" and _served(export_dir) == []
            seen.append("none")
        else:
            assert _served(export_dir) == ["5"]
            assert _model_id(export_dir, 5) == report  # TF Serving's model is the report's
            seen.append("old" if report == old else "new")
            assert report == old or new in (None, report)
        if new is None:  # killed: the next export finishes or undoes the commit first
            outcome = layout.recover(str(export_dir))
            after = _reader(export_dir)
            if outcome is None:  # killed before the journal or after the commit's end
                assert after == report
            elif outcome == "undone":
                assert report == after == old
            else:
                assert outcome == "finished" and after not in (None, old)
                assert report in (old, None, after)
            assert _model_id(export_dir, 5) == after
        _settled(export_dir)
        crash_at += 1
        assert crash_at < 80
    # One switch, old -> new, at one kill point; never back.
    text = "".join({"old": "o", "none": "x", "new": "n"}[label] for label in seen)
    gap = "x?" if start == "history_layout_without_exchange" else ""
    print(start, text)
    assert re.fullmatch(f"o{{3,}}{gap}n+", text), seen


def test_killed_commit_is_finished_once_the_model_is_in_place(tmp_path, monkeypatch):
    export_dir = tmp_path / "e"
    old = _export(export_dir, 5)
    outcomes = []
    for crash_at in range(30):
        target = tmp_path / f"k{crash_at}"
        shutil.copytree(export_dir, target, symlinks=True)
        with monkeypatch.context() as m:
            _install(m, _Faults(crash_at))
            try:
                new = _export(target, 6)
            except Crash:
                new = None
        if new is not None:
            break
        before = _reader(target)
        outcome = layout.recover(str(target))
        outcomes.append(outcome)
        after = _reader(target)
        if outcome == "finished":
            assert after != old and os.path.isdir(target / "saved_model" / "6")
        else:
            assert after == before == old or outcome is None
    # Early kills are undone, late ones finished: both paths ran.
    assert "undone" in outcomes and "finished" in outcomes, outcomes


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
    layout.check_target(str(tmp_path / "e"), 1, False)
    assert not stale.exists() and live.exists()
