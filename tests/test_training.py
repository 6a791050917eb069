import glob
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from absl import flags
from conftest import tiny_config

from patchvae_tf import config, training
from patchvae_tf.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_flagfile_parsing():
    config.define_flags()
    try:
        flags.FLAGS(["train.py", f"--flagfile={ROOT}/configs/shapes.cfg", "--num_parts=5"])
        cfg = config.from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert cfg.data.dataset == "shapes" and cfg.model.encoder == "pyramid"
    assert cfg.model.num_parts == 5 and cfg.model.prior == 0.2
    for name in ("cifar100", "indoor67", "places205", "imagenet", "mnist"):
        try:
            flags.FLAGS(["train.py", f"--flagfile={ROOT}/configs/{name}.cfg"])
            assert config.from_flags().train.workdir == f"runs/{name}"
        finally:
            flags.FLAGS.unparse_flags()


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


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--num_parts=0"], "--num_parts must be positive, got 0"),
        (["--batch_size=-4"], "--batch_size must be positive, got -4"),
        (["--image_size=30", "--scale=8"], "--image_size=30 is not divisible by --scale=8"),
        (["--encoder=vgg"], "unknown --encoder 'vgg'"),
        (["--num_parts=abc"], "abc"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args, needle, tmp_path):
    result = _run([*args, f"--workdir={tmp_path / 'w'}"])
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()


def test_bad_data_exits_2_and_writes_nothing(tmp_path):
    workdir = tmp_path / "w"
    result = _run([f"--dataset=folder:{tmp_path / 'nowhere'}", f"--workdir={workdir}"])
    assert result.returncode == 2
    assert f"image folder '{tmp_path / 'nowhere'}' does not exist" in result.stderr
    assert "Traceback" not in result.stderr and not workdir.exists()


@pytest.mark.parametrize(
    "case", ["unknown_tfds", "empty_folder", "workdir_is_file", "missing_split_image"]
)
def test_bad_data_is_a_user_error(case, tmp_path):
    workdir = tmp_path / "w"
    data = {"dataset": "shapes"}
    if case == "unknown_tfds":
        data = {"dataset": "no_such_dataset_xyz"}
    elif case == "empty_folder":
        (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
        data = {"dataset": f"folder:{tmp_path / 'empty'}"}
    elif case == "workdir_is_file":
        workdir.write_text("")
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


def _wait_for(path, proc, timeout=240):
    import time

    end = time.monotonic() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"no {path} after {timeout} s"
        time.sleep(0.2)


def test_sigterm_saves_at_that_step_exits_42_and_resumes_there(tmp_path):
    import re
    import signal

    workdir = tmp_path / "w"
    args = [*TINY_FLAGS, f"--workdir={workdir}", "--checkpoint_every=25"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args, "--train_steps=100000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(workdir / "checkpoints" / "ckpt-25.index", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == training.PREEMPTED_EXIT_CODE == 42, err[-3000:]
    saved = int(re.search(r"preempted: checkpoint saved at step (\d+)", out).group(1))
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest.endswith(f"ckpt-{saved}") and saved > 25
    step = tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE")
    assert step == saved
    assert "Traceback" not in err

    resumed = _run([*args, f"--train_steps={saved + 3}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {saved} " in resumed.stdout
    final = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert tf.train.load_variable(final, "step/.ATTRIBUTES/VARIABLE_VALUE") == saved + 3
