"""Scale-out: strategies agree, workers agree, preemption and kills resume, XLA, precision."""

import dataclasses
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, small_config

from patchvae_tf.errors import UserError

WORKER = os.path.join(ROOT, "tests", "scale_worker.py")
PYTHON = sys.executable


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT, **extra}


def _worker(tmp_path, name, runs, env=None, **popen):
    job = tmp_path / f"{name}.json"
    job.write_text(json.dumps({"runs": runs}))
    log = open(tmp_path / f"{name}.log", "w")
    return subprocess.Popen(
        [PYTHON, WORKER, str(job)],
        env=env or _env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        **popen,
    )


def _log(tmp_path, name):
    return (tmp_path / f"{name}.log").read_text()


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _paired(a, b):
    """(name, a's weight, b's weight) by position; names differ in per-process counters."""
    ka, kb = (sorted(k for k in w if k.startswith("w:")) for w in (a, b))
    assert len(ka) > 10 and len(ka) == len(kb)
    return [(k, a[k], b[j]) for k, j in zip(ka, kb, strict=True)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latest_step(checkpoint_dir):
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(checkpoint_dir)
    assert latest, f"no checkpoint in {checkpoint_dir}"
    return int(tf.train.load_checkpoint(latest).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))


# --- bad input: one line, exit 2, before anything trains ------------------------------


@pytest.mark.slow
def test_bad_input_exits_2(tmp_path):
    base = [PYTHON, "train.py", "--dataset=shapes", "--shapes_train_size=64"]
    cases = {
        "tf_config": ([], {"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]'}, "TF_CONFIG"),
        "batch": (
            ["--strategy=mirrored", "--virtual_cpu_devices=2", "--batch_size=5"],
            {},
            "--batch_size=5",
        ),
        "no_devices": (["--strategy=mirrored"], {}, "found no GPU and 1 CPU device"),
        "precision": (["--mixed_precision=float8"], {}, "'float8'"),
    }
    procs = {
        name: subprocess.Popen(
            [*base, f"--workdir={tmp_path / name}", *flags],
            env=_env(**env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (flags, env, _) in cases.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2, (name, err[-2000:])
        assert "Traceback" not in err, (name, err[-2000:])
        assert len(lines) == 1 and cases[name][2] in lines[0], (name, lines)
        # Refused before training: nothing was written.
        assert not os.path.exists(tmp_path / name / "checkpoints"), name


def test_parse_tf_config():
    from patchvae_tf.training import distribute

    good = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.parse_tf_config(json.dumps(good)) == good
    assert distribute.parse_tf_config("") is None
    bad = [
        "not json",
        '["a:1"]',
        '{"cluster": {"worker": ["a:1"]}}',
        '{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
        '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
        '{"cluster": {"boss": ["a:1"]}, "task": {"type": "boss", "index": 0}}',
    ]
    for text in bad:
        with pytest.raises(UserError, match="TF_CONFIG"):
            distribute.parse_tf_config(text)


# --- strategies and workers agree ----------------------------------------------------


@pytest.mark.slow
def test_mirrored_matches_default_and_deterministic_repeats(tmp_path):
    """Same weights and global batch: same loss and updated weights under the default
    strategy and MirroredStrategy over 2 logical CPUs (latents fixed to their means,
    synchronised BatchNorm, so both compute the same function). Then, with sampling and op
    determinism, the same seed gives the same losses twice.
    """
    runs = []
    for name, strategy in (("default", "default"), ("mirrored", "mirrored")):
        cfg = small_config(
            tmp_path / name,
            steps=2,
            strategy=strategy,
            virtual_cpu_devices=2,
            sync_batch_norm=True,
            deterministic=True,
        )
        runs.append(
            {"config": cfg.to_dict(), "out": str(tmp_path / f"{name}.npz"), "fixed_latents": True}
        )
    for name in ("seeded1", "seeded2"):
        cfg = small_config(tmp_path / name, steps=3, virtual_cpu_devices=2, deterministic=True)
        runs.append({"config": cfg.to_dict(), "out": str(tmp_path / f"{name}.npz")})
    proc = _worker(tmp_path, "strategies", runs)
    assert proc.wait(timeout=600) == 0, _log(tmp_path, "strategies")[-3000:]

    default, mirrored = _weights(tmp_path / "default.npz"), _weights(tmp_path / "mirrored.npz")
    assert np.isfinite(default["first_loss"])
    np.testing.assert_allclose(mirrored["first_loss"], default["first_loss"], rtol=1e-5)
    np.testing.assert_allclose(mirrored["last_loss"], default["last_loss"], rtol=1e-5)
    assert default["last_loss"] != default["first_loss"]  # the first update did something
    for k, a, b in _paired(default, mirrored):
        if "appearance_logvar" in k:
            # Zero-initialised, and with the variance unused its only gradient, the KL's, is
            # 0 at var = 1: Adam scales float noise to steps of up to lr (1e-3) per step.
            np.testing.assert_allclose(b, a, atol=2 * 1e-3 + 1e-6)
        else:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=k)

    first, second = _weights(tmp_path / "seeded1.npz"), _weights(tmp_path / "seeded2.npz")
    assert first["first_loss"] == second["first_loss"]
    assert first["last_loss"] == second["last_loss"]
    for k, a, b in _paired(first, second):
        np.testing.assert_array_equal(a, b, err_msg=k)


@pytest.mark.slow
def test_multi_worker_preempted_then_resumed(tmp_path):
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1. SIGTERM to the non-chief makes
    both save at one agreed step and exit 42; rerun, both resume there and end with identical
    weights; only the chief's checkpoints, config and logs remain.
    """
    workdir = tmp_path / "work"
    checkpoints = workdir / "checkpoints"
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(2)]

    def launch(rnd, steps, checkpoint_every):
        # Synchronised BatchNorm: otherwise each worker's moving statistics follow its own
        # batches (only the chief's are checkpointed) and could not be compared.
        cfg = small_config(workdir, steps=steps, strategy="multi_worker", sync_batch_norm=True)
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, checkpoint_every=checkpoint_every))
        procs = []
        for i in range(2):
            tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
            out = str(tmp_path / f"r{rnd}w{i}.npz")
            procs.append(
                _worker(
                    tmp_path,
                    f"r{rnd}w{i}",
                    [{"config": cfg.to_dict(), "out": out}],
                    env=_env(TF_CONFIG=json.dumps(tf_config)),
                )
            )
        return procs

    procs = launch(1, steps=100_000, checkpoint_every=3)
    deadline = time.time() + 300
    while not glob.glob(str(checkpoints / "ckpt-*.index")):
        assert time.time() < deadline and all(p.poll() is None for p in procs), _log(
            tmp_path, "r1w0"
        )[-3000:]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [42, 42], (_log(tmp_path, "r1w0")[-2000:], _log(tmp_path, "r1w1")[-2000:])
    saved = _latest_step(str(checkpoints))
    assert saved >= 3
    assert f"preempted: checkpoint saved at step {saved}" in _log(tmp_path, "r1w1")
    assert not glob.glob(str(workdir / "workertemp_*"))

    procs = launch(2, steps=saved + 2, checkpoint_every=1000)
    codes = [p.wait(timeout=300) for p in procs]
    logs = [_log(tmp_path, f"r2w{i}") for i in range(2)]
    assert codes == [0, 0], (logs[0][-2000:], logs[1][-2000:])
    assert all(f"resuming from step {saved}" in log for log in logs)
    chief, other = _weights(tmp_path / "r2w0.npz"), _weights(tmp_path / "r2w1.npz")
    assert int(chief["step"]) == saved + 2
    for k, a, b in _paired(chief, other):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=k)
    assert _latest_step(str(checkpoints)) == saved + 2
    assert not glob.glob(str(workdir / "workertemp_*"))
    # The chief's training lock (released when it exited) is the one file besides.
    assert sorted(os.listdir(workdir)) == [".training.lock", "checkpoints", "config.json", "logs"]
    # One event file per chief run: the other worker wrote no summaries.
    assert len(glob.glob(str(workdir / "logs" / "events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_sigkill_resumes_at_checkpoint(tmp_path):
    """A SIGKILL at any moment after the first checkpoint leaves a readable checkpoint; the
    rerun resumes at its step with the optimizer state (Adam's step count) restored.
    """
    import tensorflow as tf

    workdir = tmp_path / "work"
    checkpoints = workdir / "checkpoints"
    flags = [
        PYTHON,
        "train.py",
        f"--workdir={workdir}",
        "--dataset=shapes",
        "--shapes_train_size=256",
        "--shapes_test_size=16",
        "--encoder=pyramid",
        "--scale=4",
        "--base_channels=8",
        "--num_parts=4",
        "--appearance_dim=2",
        "--batch_size=16",
        "--log_every=1000",
        "--checkpoint_every=2",
        "--nojit_compile",
    ]
    proc = subprocess.Popen(
        [*flags, "--train_steps=100000"],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not glob.glob(str(checkpoints / "ckpt-*.index")):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    time.sleep(1.5)  # a few more checkpoints, so the kill may land inside a save
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    saved = _latest_step(str(checkpoints))
    assert saved >= 2 and saved % 2 == 0

    done = subprocess.run(
        [*flags, f"--train_steps={saved + 3}"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from step {saved}" in done.stdout
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(checkpoints)))
    assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == saved + 3
    # Adam counted every step since 0: its state came back with the weights.
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == saved + 3
