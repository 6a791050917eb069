"""Training throughput: the library's own train step (training.make_train_step), timed in
windows that the runner interleaves with the reference's.
"""

from __future__ import annotations

import contextlib
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf import data, distribute, precision, training
from patchvae_tf.config import Config


class Session:
    """cfg's model, optimizer and input pipeline as train() builds them, compiled and warmed
    up; window(calls) times `calls` calls of the train step.

    synthetic feeds one fixed batch from memory instead of the input pipeline, to separate
    the two costs; keras_kernels builds and traces with Keras's own BatchNorm and Adam ops
    instead of fused.py's kernels.
    """

    def __init__(
        self,
        cfg: Config,
        steps_per_loop: int = 1,
        synthetic: bool = False,
        keras_kernels: bool = False,
    ):
        keras.backend.clear_session()
        keras.utils.set_random_seed(cfg.train.seed)
        self.batch, self.steps_per_loop = cfg.train.batch_size, steps_per_loop
        self._stack = contextlib.ExitStack()
        dc = cfg.distribute
        strategy = training.create_strategy(cfg)
        self.policy, _ = precision.resolve(dc.mixed_precision, strategy)
        with strategy.scope():
            model = precision.build_model(
                cfg.model, cfg.data.image_size, self.policy, fused=not keras_kernels
            )
            optimizer = precision.wrap_optimizer(
                training.make_optimizer(cfg, fused=not keras_kernels), self.policy
            )
            optimizer.build(model.trainable_variables)
            step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        source = data.get_source(cfg.data, cfg.train.seed)
        if synthetic:
            first = next(iter(data.input_dataset(source, "train", self.batch, training=True)))
            fixed = tf.data.Dataset.from_tensors({"image": first["image"]}).repeat()
            self._iterator = iter(strategy.experimental_distribute_dataset(fixed))
        else:
            self._iterator = training.make_iterator(cfg, strategy, source)
        self.jit_compile = distribute.use_xla(dc, strategy)
        self._step = training.make_train_step(
            cfg, strategy, model, optimizer, step, self.jit_compile, steps_per_loop
        )
        # A real summary writer, as in train(): the step writes the temperature in-graph.
        logdir = self._stack.enter_context(tempfile.TemporaryDirectory())
        writer = tf.summary.create_file_writer(logdir)
        self._stack.callback(writer.close)
        self._stack.enter_context(writer.as_default())
        start = time.perf_counter()
        self.first_loss = float(self._step(self._iterator)["loss"])
        self.first_call_seconds = time.perf_counter() - start
        for _ in range(2):  # warm-up: allocator, thread pools, the prefetch buffer
            metrics = self._step(self._iterator)
        self.last_loss = float(metrics["loss"])

    def window(self, calls: int) -> float:
        """Images/s over `calls` calls of the step (each steps_per_loop optimizer steps)."""
        start = time.perf_counter()
        for _ in range(calls):
            metrics = self._step(self._iterator)
        self.last_loss = float(metrics["loss"])  # waits for the last step
        elapsed = time.perf_counter() - start
        if not np.isfinite(self.last_loss):
            raise RuntimeError(f"training diverged while benchmarking: loss {self.last_loss}")
        return calls * self.steps_per_loop * self.batch / elapsed

    def close(self) -> None:
        self._stack.close()
