"""Subprocess for tests/test_trainer.py, where strategies must be made before TensorFlow starts.

python tests/library_worker.py CONFIG.json STOP_AT: one worker of a two-worker
patchvae_tf.train run (TF_CONFIG names the cluster) on data from a function, with a callback
that stops training on worker 1 only.

python tests/library_worker.py CONFIG.json mirrored: under MirroredStrategy (CONFIG's
virtual CPU devices), a function building the backbone, on a tf.data.Dataset object; then a
keras.Model object as the backbone (refused: "REFUSED <message>").

Each prints "RESULT <step>" with the step its returned model was loaded at.
"""

import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import patchvae_tf  # noqa: E402
from patchvae_tf.config import Config  # noqa: E402

PIXELS = np.random.default_rng(0).integers(0, 256, size=(64, 36, 36, 3), dtype=np.uint8)


class StopOnWorkerOne(keras.callbacks.Callback):
    def __init__(self, stop_at: int):
        super().__init__()
        self.stop_at = stop_at
        self.index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    def on_train_batch_end(self, batch, logs=None):
        if self.index == 1 and batch >= self.stop_at:
            self.model.stop_training = True


def shard(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(PIXELS)
    return ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id).shuffle(64, seed=1)


def mobilenet_stem() -> keras.Model:
    base = keras.applications.MobileNetV2(weights=None, include_top=False, alpha=0.35)
    return keras.Model(base.input, base.get_layer("block_2_add").output)


def main() -> None:
    from patchvae_tf.errors import UserError

    with open(sys.argv[1]) as f:
        cfg = Config.from_dict(json.load(f))
    if sys.argv[2] != "mirrored":
        model = patchvae_tf.train(cfg, shard, callbacks=[StopOnWorkerOne(int(sys.argv[2]))])
        print(f"RESULT {model.step}", flush=True)
        return
    # Logical devices exist only if split before TensorFlow's first op, the dataset's here.
    from patchvae_tf.training import distribute

    distribute.configure_devices(cfg.distribute)
    images = tf.data.Dataset.from_tensor_slices(PIXELS).shuffle(64, seed=2)
    model = patchvae_tf.train(cfg, images, encoder=mobilenet_stem)
    other = dataclasses.replace(cfg.train, workdir=cfg.train.workdir + "_object")
    try:
        patchvae_tf.train(cfg.replace(train=other), PIXELS, encoder=mobilenet_stem())
    except UserError as e:
        print(f"REFUSED {e}", flush=True)
    print(f"RESULT {model.step} {model.config.model.encoder}", flush=True)


if __name__ == "__main__":
    main()
