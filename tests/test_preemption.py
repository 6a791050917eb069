"""A killed or preempted training run resumes where it stopped."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_train

from patchvae_tf import training

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
    """The floating-point variables of the checkpoint at prefix, by name."""
    reader = tf.train.load_checkpoint(prefix)
    out = {}
    for name in reader.get_variable_to_shape_map():
        value = np.asarray(reader.get_tensor(name))
        if value.dtype.kind == "f" and "save_counter" not in name:
            out[name] = value
    return out


@pytest.mark.slow
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
        _wait_for_checkpoint(workdir / "checkpoints", 25, proc)
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

    resumed = run_train([*args, f"--train_steps={saved + 3}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {saved} " in resumed.stdout
    final = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert tf.train.load_variable(final, "step/.ATTRIBUTES/VARIABLE_VALUE") == saved + 3


@pytest.mark.slow
def test_sigterm_after_divergence_leaves_no_non_finite_checkpoint(tmp_path):
    """The handler saves between the loop's checks: a checkpoint of non-finite weights it
    wrote is deleted again, and the latest stays the last finite one (here: none).
    """
    import signal
    import time

    workdir = tmp_path / "w"
    args = [*TINY_FLAGS, f"--workdir={workdir}", "--checkpoint_every=100000"]
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args, "--train_steps=100000", "--learning_rate=1e30"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 120
        while not (workdir / "logs").exists():  # written just before the first step
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end
            time.sleep(0.2)
        time.sleep(5)  # a few hundred steps at lr 1e30: the weights are long past finite
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == training.PREEMPTED_EXIT_CODE, err[-3000:]
    assert "with non-finite values: that checkpoint was deleted, the latest stays none" in out
    assert tf.train.latest_checkpoint(str(workdir / "checkpoints")) is None
    assert not list((workdir / "checkpoints").glob("ckpt-*"))


def test_discard_latest_makes_the_one_before_the_latest(tmp_path):
    from patchvae_tf import restore

    v = tf.Variable(0.0)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path), max_to_keep=3)
    for i in (1, 2):
        v.assign(float(i))
        manager.save(checkpoint_number=i)
    assert restore.discard_latest(str(tmp_path)).endswith("ckpt-1")
    assert not list(tmp_path.glob("ckpt-2*"))
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")
    v.assign(9.0)
    assert restore.newest_readable(str(tmp_path), str(tmp_path), v=v).endswith("ckpt-1")
    assert float(v.numpy()) == 1.0
    # The state file keeps ckpt-1's timestamp: a resumed run's manager still rotates it out.
    again = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(tmp_path), max_to_keep=3)
    assert [os.path.basename(p) for p in again.checkpoints] == ["ckpt-1"]
    assert restore.discard_latest(str(tmp_path)) is None
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "devices"), [("shapes", 1), ("folder", 2), ("tfds", 1)])
def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_one(
    tmp_path, request, dataset, devices
):
    """--deterministic: killed (SIGKILL) after a checkpoint and resumed, a run ends with the
    weights of a run that never stopped: the input order, flips and samples resume exactly.
    """
    import signal

    name = _image_folder(tmp_path / "images") if dataset == "folder" else "shapes"
    if dataset == "tfds":  # 37 training images here too
        from conftest import TINY_TFDS

        name = f"{TINY_TFDS} --data_dir={request.getfixturevalue('tiny_tfds')}"
    args = [
        *TINY_FLAGS,
        *f"--dataset={name}".split(),
        "--shapes_train_size=37",  # epochs end mid-batch here too
        "--batch_size=8",
        "--checkpoint_every=6",
        "--deterministic",
        "--random_flip",
    ]
    if devices == 2:
        args += ["--strategy=mirrored", "--virtual_cpu_devices=2"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args, f"--workdir={killed}", "--train_steps=100000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_checkpoint(killed / "checkpoints", 12, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    latest = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    saved = int(latest.rsplit("-", 1)[1])
    steps = saved + 7  # past the last checkpoint, through several epoch ends
    runs = {
        workdir: subprocess.Popen(
            [sys.executable, "train.py", *args, f"--workdir={workdir}", f"--train_steps={steps}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for workdir in (killed, fresh)
    }
    outputs = {}
    for workdir, run in runs.items():
        outputs[workdir], err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
    assert f"resuming from step {saved} " in outputs[killed]
    final = {w: _float_variables(str(w / "checkpoints" / f"ckpt-{steps}")) for w in runs}
    assert final[killed].keys() == final[fresh].keys() and len(final[fresh]) > 20
    worst = max(float(np.max(np.abs(final[killed][k] - final[fresh][k]))) for k in final[fresh])
    print(f"{dataset}, {devices} device(s): resumed at {saved}, max |weight diff| {worst:.3g}")
    assert worst <= 1e-6, worst
    position = tf.train.load_variable(
        str(killed / "checkpoints" / f"ckpt-{steps}"), "input_position/.ATTRIBUTES/VARIABLE_VALUE"
    )
    assert position == steps * 8
