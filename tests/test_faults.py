"""Faults a careless or hostile user causes: each one line, and nothing saved before is lost."""

import dataclasses
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_config

from patchvae_tf.config import Config, EvalConfig, ModelConfig, TrainConfig
from patchvae_tf.errors import UserError


def _copy_workdir(trained, tmp_path, name="w"):
    cfg, _ = trained
    workdir = tmp_path / name
    shutil.copytree(cfg.train.workdir, workdir)
    return cfg.replace(train=dataclasses.replace(cfg.train, workdir=str(workdir))), workdir


def _truncate_newest(workdir):
    data = workdir / "checkpoints" / "ckpt-300.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])


def test_readers_fall_back_to_an_older_readable_checkpoint(trained, tmp_path, capsys):
    import patchvae_tf
    from export import checkpoint
    from patchvae_tf.evaluation import restore_model
    from patchvae_tf.model import models

    cfg, workdir = _copy_workdir(trained, tmp_path)
    _truncate_newest(workdir)
    model, step = restore_model(cfg)  # evaluate.py's restore
    assert step == 200
    loaded = patchvae_tf.load(str(workdir))
    assert loaded.step == 200
    out = capsys.readouterr().out
    assert "checkpoint" in out and "ckpt-300 is unreadable" in out and "ckpt-200" in out
    # The export restores the same one, and its version then names step 200.
    view = checkpoint.EncoderView(models.build_model(cfg.model))
    path = checkpoint.restore(str(workdir), model=view)
    assert path.endswith("ckpt-200") and checkpoint.step(path) == 200
    # Named explicitly, the unreadable checkpoint is refused in one line.
    named = str(workdir / "checkpoints" / "ckpt-300")
    with pytest.raises(UserError, match=r"checkpoint '.*ckpt-300' is unreadable") as info:
        checkpoint.restore(str(workdir), named, model=view)
    assert "\n" not in str(info.value)
    # Every checkpoint unreadable: one line naming them.
    for data in (workdir / "checkpoints").glob("*.data-*"):
        data.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable checkpoint in .*tried .*ckpt-300.*ckpt-100"):
        patchvae_tf.load(str(workdir))


def test_an_edited_config_json_is_noticed(trained, tmp_path):
    import patchvae_tf
    from patchvae_tf.config import load_config

    cfg, workdir = _copy_workdir(trained, tmp_path)
    edited = cfg.replace(model=dataclasses.replace(cfg.model, image_size=64))
    (workdir / "config.json").write_text(edited.to_json())
    with pytest.raises(UserError, match=r"was edited: it says image_size=64, .* image_size=32"):
        load_config(str(workdir / "config.json"))
    with pytest.raises(ValueError, match="was edited"):
        patchvae_tf.load(str(workdir))
    # Restored, it loads again.
    (workdir / "config.json").write_text(cfg.to_json())
    assert load_config(str(workdir / "config.json")).model.image_size == 32


def test_a_second_training_run_on_one_workdir_is_refused(tmp_path):
    from patchvae_tf import training
    from patchvae_tf.workdir import training_lock

    workdir = str(tmp_path / "w")
    cfg = tiny_config(workdir, train_steps=1)
    with training_lock(workdir):
        with pytest.raises(UserError, match=r"is in use by another training run \(pid \d+ on "):
            training.train(cfg)
    # A lock whose process was killed is stale: the next run takes it.
    code = (
        "import sys, time\n"
        "from patchvae_tf.workdir import training_lock\n"
        "with training_lock(sys.argv[1]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, workdir], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {holder.pid} "):
            with training_lock(workdir):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with training_lock(workdir) as path:
        assert f'"pid": {os.getpid()}' in open(path).read()


def test_self_including_flagfiles_are_refused(tmp_path):
    from patchvae_tf.config import cli

    loop = tmp_path / "loop.cfg"
    loop.write_text(f"--num_parts=4\n--flagfile={loop}\n")
    with pytest.raises(UserError, match=r"includes itself \(.*loop.cfg -> .*loop.cfg\)"):
        cli.check_flagfiles(["train.py", f"--flagfile={loop}"])
    a, b = tmp_path / "a.cfg", tmp_path / "b.cfg"
    a.write_text(f"--flagfile={b}\n")
    b.write_text(f"--flagfile={a}\n")
    with pytest.raises(UserError, match="a.cfg -> .*b.cfg -> .*a.cfg"):
        cli.check_flagfiles(["train.py", f"--flagfile={a}"])
    ok = tmp_path / "ok.cfg"
    ok.write_text(f"--flagfile={tmp_path / 'leaf.cfg'}\n")
    (tmp_path / "leaf.cfg").write_text("--num_parts=4\n")
    cli.check_flagfiles(["train.py", f"--flagfile={ok}", f"--flagfile={ok}"])  # twice is fine
    # Through the command line's parser: the same one line.
    with pytest.raises(UserError, match="includes itself"):
        cli.parse(Config, ["train.py", f"--flagfile={loop}"])


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: TrainConfig(workdir=""), "^--workdir is required, got ''$"),
        (lambda: TrainConfig(workdir="  "), "^--workdir is required, got '  '$"),
        (lambda: EvalConfig(workdir=""), "^--workdir is required, got ''$"),
        (lambda: ModelConfig(arch="vae", categorical=True), "--categorical sets PatchVAE's"),
        (lambda: ModelConfig(arch="vae", hard=True), "--hard sets PatchVAE's"),
        (lambda: Config.from_dict({"train": {"workdir": ""}}), "--workdir is required"),
    ],
)
def test_more_config_mistakes_are_one_line(build, needle):
    with pytest.raises(UserError, match=needle):
        build()


def test_tpu_strategy_without_a_tpu_is_one_line():
    from patchvae_tf.config import DistributeConfig
    from patchvae_tf.training import distribute

    with pytest.raises(UserError, match="--strategy=tpu: no TPU found"):
        distribute.create_strategy(DistributeConfig(strategy="tpu"))


def test_disk_faults_end_in_one_line(capsys):
    import tensorflow as tf

    from patchvae_tf.config import cli

    full = OSError(errno.ENOSPC, "No space left on device", "/data/w/config.json")
    assert cli.disk_fault(full).startswith("cannot write '/data/w/config.json': No space left")
    read_only = tf.errors.UnknownError(
        None, None, "Failed to create a NewWriteableFile: /e/x : Read-only file system\n\tmore"
    )
    assert "Read-only file system" in cli.disk_fault(read_only)
    assert cli.disk_fault(ValueError("a bug")) == ""

    def main(cfg):
        raise full

    with pytest.raises(SystemExit) as info:
        cli.run(main, EvalConfig, argv=["evaluate.py", "--workdir=w"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot write '/data/w/config.json': No space left on device; "
                   "nothing saved before was changed"]  # fmt: skip
    # Any other exception is a bug, and keeps its traceback.
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda cfg: 1 / 0, EvalConfig, argv=["evaluate.py", "--workdir=w"])


def test_atomic_writes_are_readable_by_everyone_as_other_files(tmp_path):
    from patchvae_tf.workdir import write_text_atomic

    path = tmp_path / "config.json"
    write_text_atomic(str(path), "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~umask
    other = tmp_path / "plain"
    other.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(other.stat().st_mode)
