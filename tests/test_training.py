import glob
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, tiny_config

from patchvae_tf import config, training
from patchvae_tf.config import cli
from patchvae_tf.errors import UserError


def _tags(logdir):
    tags = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_short_training_lowers_loss_and_writes_workdir(trained):
    cfg, summary = trained
    assert summary["step"] == 300
    assert summary["last_loss"] < 0.5 * summary["first_loss"], summary
    workdir = cfg.train.workdir
    saved = config.load_config(os.path.join(workdir, "config.json"))
    assert saved == cfg
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-300")
    tags = _tags(os.path.join(workdir, "logs"))
    for tag in (
        "loss",
        "distortion",
        "rate_app",
        "rate_occ",
        "learning_rate",
        "images_per_second",
        "reconstructions",
        "occurrence_maps",
        "samples",
    ):
        assert tag in tags, tag
    # The temperature is logged at every step.
    assert sorted(tags["temperature"]) == list(range(1, 301))


def test_rerun_resumes_at_saved_step(trained, tmp_path, capsys):
    cfg, _ = trained
    workdir = str(tmp_path / "resume")
    shutil.copytree(cfg.train.workdir, workdir)
    resumed = tiny_config(workdir, train_steps=305, checkpoint_every=5)
    summary = training.train(resumed)
    assert "resuming from step 300" in capsys.readouterr().out
    assert summary["step"] == 305
    step = tf.train.load_variable(
        os.path.join(workdir, "checkpoints", "ckpt-305"), "step/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert step == 305


def test_different_model_in_same_workdir_is_refused(trained):
    cfg, _ = trained
    other = cfg.replace(model=cfg.model.__class__(**{**cfg.model.__dict__, "arch": "vae"}))
    with pytest.raises(UserError, match="arch='patchvae'"):
        training.train(other)


# config.json as training wrote it while image_size lived in the data section: tiny_config's
# values, every other field at its default.
def _run(args, cwd=ROOT):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_bad_data_exits_2_and_writes_nothing(tmp_path):
    workdir = tmp_path / "w"
    result = _run([f"--dataset=folder:{tmp_path / 'nowhere'}", f"--workdir={workdir}"])
    assert result.returncode == 2
    # One line: TensorFlow has loaded, its start-up notices kept out (startup_notices.py).
    assert result.stderr == f"error: image folder '{tmp_path / 'nowhere'}' does not exist\n"
    assert not workdir.exists()


@pytest.mark.parametrize(
    "case",
    [
        "unknown_tfds",
        "unprepared_tfds",
        "empty_folder",
        "workdir_is_file",
        "workdir_unwritable",
        "missing_split_image",
    ],
)
def test_bad_data_is_a_user_error(case, tmp_path):
    workdir = tmp_path / "w"
    data = {"dataset": "shapes"}
    if case == "unknown_tfds":
        data = {"dataset": "no_such_dataset_xyz"}
    elif case == "empty_folder":
        (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
        data = {"dataset": f"folder:{tmp_path / 'empty'}"}
    elif case == "unprepared_tfds":
        data = {"dataset": "mnist", "data_dir": str(tmp_path / "tfds")}
    elif case == "workdir_is_file":
        workdir.write_text("")
    elif case == "workdir_unwritable":
        workdir = Path("/sys/patchvae-workdir")  # not writable, even by root
    else:
        (tmp_path / "imgs" / "a").mkdir(parents=True)
        (tmp_path / "tr.txt").write_text("a/missing.jpg\n")
        data = {
            "dataset": f"folder:{tmp_path / 'imgs'}",
            "train_split_file": str(tmp_path / "tr.txt"),
            "test_split_file": str(tmp_path / "tr.txt"),
        }
    cfg = tiny_config(str(workdir))
    cfg = cfg.replace(data=cfg.data.__class__(**{**cfg.data.__dict__, **data}))
    with pytest.raises(UserError) as err:
        training.train(cfg)
    assert "\n" not in str(err.value)
    if case != "workdir_is_file":
        assert not workdir.exists()


TINY_FLAGS = [
    "--dataset=shapes",
    "--shapes_train_size=512",
    "--shapes_test_size=64",
    "--image_size=16",
    "--encoder=pyramid",
    "--base_channels=8",
    "--scale=4",
    "--num_parts=4",
    "--appearance_dim=2",
    "--batch_size=16",
    "--log_every=100000",
]


def _wait_for_checkpoint(checkpoint_dir, step, proc, timeout=240):
    """Waits until proc's newest checkpoint is at step or later. Not a file of that step: a
    fast run writes and rotates out several checkpoints between two looks.
    """
    import time

    end = time.monotonic() + timeout
    while True:
        latest = tf.train.latest_checkpoint(str(checkpoint_dir))
        if latest and int(latest.rsplit("-", 1)[1]) >= step:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no checkpoint of step {step} or later after {timeout} s"
        time.sleep(0.2)


def _image_folder(root):
    """Two classes of odd-sized RGB images (13 training images: epochs end mid-batch)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 13), ("test", 2)):
        for i in range(count):
            cls = root / split / ("ab"[i % 2])
            cls.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, (20 + i, 18, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(cls / f"{i}.png")
    return f"folder:{root}"


def _float_variables(prefix):

    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(name))
        if value.dtype.kind == "f" and "save_counter" not in name:
            out[name] = value
    return out


# Each case costs about a minute of TensorFlow start-ups on 2 cores: three cases cover the
# three kinds of dataset and both device counts (the other pairings passed as well when added).


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "deleted", "all"])
def test_unreadable_checkpoint_falls_back_to_an_older_one(trained, tmp_path, capsys, damage):
    cfg, _ = trained
    workdir = tmp_path / "w"
    shutil.copytree(cfg.train.workdir, workdir)
    ckpts = workdir / "checkpoints"
    victims = ["ckpt-300"] if damage != "all" else ["ckpt-100", "ckpt-200", "ckpt-300"]
    for prefix in victims:
        for path in glob.glob(str(ckpts / f"{prefix}.data-*")):
            if damage == "deleted":
                os.remove(path)
            else:
                with open(path, "r+b") as f:
                    f.truncate(100)
    resumed = tiny_config(str(workdir), train_steps=301, checkpoint_every=1000)
    if damage == "all":
        with pytest.raises(UserError, match="no readable checkpoint in .*move that directory"):
            training.train(resumed)
        assert sorted(os.listdir(ckpts)) == sorted(os.listdir(cfg.train.workdir + "/checkpoints"))
        return
    summary = training.train(resumed)
    out = capsys.readouterr().out
    assert "checkpoint" in out and "ckpt-300 is unreadable" in out
    assert "resuming from step 200" in out and summary["step"] == 301


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["unit", "imagenet"])
def test_cifar_recipe_trains_on_shapes_without_nan(tmp_path, normalization):
    """configs/cifar100.cfg (ResNet cut at 1/8, N=16, the authors' initialization and
    constants) on shapes instead of CIFAR, a few small steps, in both input spaces.
    """
    argv = [
        "train.py",
        f"--flagfile={ROOT}/configs/cifar100.cfg",
        "--dataset=shapes",
        f"--normalization={normalization}",
        "--shapes_train_size=256",
        "--shapes_test_size=64",
        "--batch_size=16",
        "--train_steps=12",
        "--log_every=4",
        f"--workdir={tmp_path}",
    ]
    cfg = cli.parse(config.Config, argv)
    assert cfg.model.initialization == "reference" and cfg.model.normalization == normalization
    summary = training.train(cfg)
    assert summary["step"] == 12
    assert all(map(math.isfinite, (summary["first_loss"], summary["last_loss"])))
    assert summary["last_loss"] < summary["first_loss"]


def test_config_json_is_replaced_whole(tmp_path, monkeypatch):
    from patchvae_tf import workdir

    path = tmp_path / "config.json"
    path.write_text('{"old": true}')

    def crash(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(workdir.os, "replace", crash)
    with pytest.raises(OSError):
        workdir.write_text_atomic(str(path), '{"new": true}')
    assert path.read_text() == '{"old": true}' and os.listdir(tmp_path) == ["config.json"]
