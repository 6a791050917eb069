"""Training throughput: the library's own train step (training.make_train_step), timed."""

from __future__ import annotations

import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import hardware
from patchvae_tf import data, precision, training
from patchvae_tf.config import Config


def measure(cfg: Config, steps: int, steps_per_loop: int = 1, keras_kernels: bool = False, **kw):
    """Images/s of training cfg's model (see _measure); with keras_kernels, as it trains
    with Keras's own BatchNorm and Adam ops instead of fused.py's kernels.
    """
    return _measure(cfg, steps, steps_per_loop, fused=not keras_kernels, **kw)


def _measure(
    cfg: Config,
    steps: int,
    steps_per_loop: int = 1,
    synthetic: bool = False,
    windows: int = 4,
    fused: bool = True,
) -> dict:
    """Images/s of training cfg's model as train() does, after compilation and warm-up.

    steps timed train steps are split into `windows` windows; the median window counts, so
    a burst from another process on a shared machine moves it less. A matmul probe is
    taken between windows, and per_paired_matmul_gflops is the median over windows of
    images/s divided by the probes on either side. synthetic feeds one
    fixed batch from memory instead of the input pipeline, to separate the two costs.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.train.seed)
    dc = cfg.distribute
    strategy = training.create_strategy(cfg)
    with strategy.scope():
        model = precision.build_model(cfg.model, cfg.data.image_size, dc.mixed_precision, fused)
        optimizer = precision.wrap_optimizer(
            training.make_optimizer(cfg, fused), dc.mixed_precision
        )
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    source = data.get_source(cfg.data, cfg.train.seed)
    if synthetic:
        batch = next(iter(data.input_dataset(source, "train", cfg.train.batch_size, training=True)))
        fixed = tf.data.Dataset.from_tensors({"image": batch["image"]}).repeat()
        iterator = iter(strategy.experimental_distribute_dataset(fixed))
    else:
        iterator = training.make_iterator(cfg, strategy, source)
    train_step = training.make_train_step(
        cfg, strategy, model, optimizer, step, dc.jit_compile, steps_per_loop
    )
    calls = max(1, -(-steps // (steps_per_loop * windows)))  # calls per window
    batch = cfg.train.batch_size
    with tempfile.TemporaryDirectory() as logdir:
        # A real summary writer, as in train(): the step writes the temperature in-graph.
        writer = tf.summary.create_file_writer(logdir)
        with writer.as_default():
            start = time.perf_counter()
            metrics = train_step(iterator)
            first_loss = float(metrics["loss"])
            compile_s = time.perf_counter() - start
            for _ in range(2):  # warm-up: allocator, thread pools, the prefetch buffer
                metrics = train_step(iterator)
            float(metrics["loss"])
            rates, probes = [], [hardware.matmul_gflops(repeats=2)]
            for _ in range(windows):
                start = time.perf_counter()
                for _ in range(calls):
                    metrics = train_step(iterator)
                last_loss = float(metrics["loss"])  # waits for the last step
                elapsed = time.perf_counter() - start
                rates.append(calls * steps_per_loop * batch / elapsed)
                probes.append(hardware.matmul_gflops(repeats=2))
            writer.close()
    if not (np.isfinite(first_loss) and np.isfinite(last_loss)):
        raise RuntimeError(f"training diverged while benchmarking: loss {last_loss}")
    rate = statistics.median(rates)
    # Each window against the mean of the matmul probes taken just before and after it: on
    # a shared machine both move together, so their ratio is steadier than either.
    paired = [r / ((a + b) / 2) for r, a, b in zip(rates, probes[:-1], probes[1:], strict=True)]
    return {
        "images_per_second": round(rate, 2),
        "ms_per_step": round(batch / rate * 1e3, 2),
        "us_per_image": round(1e6 / rate, 2),
        "window_images_per_second": [round(r, 2) for r in rates],
        "window_matmul_gflops": [round(p, 2) for p in probes],
        "per_paired_matmul_gflops": round(statistics.median(paired), 4),
        "timed_steps": calls * steps_per_loop * windows,
        "first_call_seconds": round(compile_s, 2),
        "loss_first_last": [round(first_loss, 3), round(last_loss, 3)],
    }
