"""Keras callbacks in the training loop: every logged metric, and stops agreed by all workers."""

import dataclasses
import json
import os

import keras
import pytest
from conftest import tiny_config
from test_trainer import PIXELS, Recorder, _scalars

from patchvae_tf.errors import UserError


def test_a_callback_sees_every_logged_metric_and_stops_training(tmp_path, capsys):
    import patchvae_tf

    cfg = tiny_config(str(tmp_path / "w"), train_steps=10, log_every=2, checkpoint_every=5)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, batch_size=8))
    with pytest.raises(UserError, match="keras.callbacks.Callback objects; got a function"):
        patchvae_tf.train(cfg, PIXELS, callbacks=[lambda logs: None])
    recorder, watcher = Recorder(stop_at=4), Recorder()
    model = patchvae_tf.train(cfg, PIXELS, callbacks=[recorder, watcher])
    assert "a callback stopped training at step 4" in capsys.readouterr().out
    assert model.step == 4  # a checkpoint where it stopped, though checkpoint_every is 5
    assert [c[0] for c in recorder.calls] == ["begin", "batch", "batch", "batch", "end"]
    assert recorder.calls[0] == ("begin", 10) and [c[1] for c in recorder.calls[1:4]] == [1, 2, 4]
    assert watcher.calls == recorder.calls  # every callback saw each call
    assert recorder.calls[-1][1] == recorder.logs[4]["loss"]
    # The logs are what TensorBoard got at those steps, metric for metric.
    written = _scalars(str(tmp_path / "w" / "logs"))
    for step in (2, 4):
        logs = recorder.logs[step]
        assert set(logs) == {
            "loss", "distortion", "rate_app", "rate_occ", "temperature", "learning_rate",
            "images_per_second",
        }  # fmt: skip
        for name, value in logs.items():
            assert written[name, step] == pytest.approx(value, rel=1e-6), name
    # Training again (no callback) continues from the stop to --train_steps.
    assert patchvae_tf.train(cfg, PIXELS).step == 10


def test_keras_early_stopping_stops_training_after_a_logging_interval_without_progress(
    tmp_path,
):
    import patchvae_tf

    cfg = tiny_config(str(tmp_path / "w"), train_steps=8, log_every=2, checkpoint_every=8)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, batch_size=8))
    # No loss falls by 1e9: the first interval after the first logged step stops it.
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=1)
    assert patchvae_tf.train(cfg, PIXELS, callbacks=[stop]).step == 2
    assert stop.stopped_epoch == 2


@pytest.mark.slow
def test_two_workers_agree_on_a_stop_only_one_of_them_asked_for(tmp_path):
    import socket
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = tiny_config(str(tmp_path / "w"), train_steps=50, log_every=1, checkpoint_every=100)
    cfg = cfg.replace(
        train=dataclasses.replace(cfg.train, batch_size=8),
        distribute=dataclasses.replace(cfg.distribute, strategy="multi_worker"),
    )
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    procs = []
    for i in range(2):
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        env = {
            **os.environ,
            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            "PYTHONPATH": root,
        }
        worker = os.path.join(root, "tests", "library_worker.py")
        procs.append(
            subprocess.Popen(
                [sys.executable, worker, str(tmp_path / "cfg.json"), "3"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
        )
    outs = [p.communicate(timeout=400)[0] for p in procs]  # a hang fails here
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    for out in outs:
        assert "a callback stopped training at step 3" in out
        assert out.strip().splitlines()[-1] == "RESULT 3"
