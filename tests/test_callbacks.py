"""Keras callbacks in the training loop: every logged metric, and stops agreed by all workers."""

import dataclasses
import json
import os

import keras
import pytest
import tensorflow as tf
from conftest import PIXELS, library_worker, tiny_config

from patchvae_tf.errors import UserError


class Recorder(keras.callbacks.Callback):
    """Records what the loop calls, and stops training once ``stop_at`` steps are done."""

    def __init__(self, stop_at=None):
        super().__init__()
        self.stop_at, self.calls, self.logs = stop_at, [], {}

    def on_train_begin(self, logs=None):
        self.calls.append(("begin", self.params["steps"]))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch", batch))
        self.logs[batch] = dict(logs)
        if self.stop_at is not None and batch >= self.stop_at:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        self.calls.append(("end", logs["loss"]))


def _scalars(logdir):
    """{(tag, step): value} of every scalar in the TensorBoard event files under logdir."""
    found = {}
    for path in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
    return found


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
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [
        library_worker(
            tmp_path / "cfg.json",
            "3",
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=400)[0] for p in procs]  # a hang fails here
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    for out in outs:
        assert "a callback stopped training at step 3" in out
        assert out.strip().splitlines()[-1] == "RESULT 3"
