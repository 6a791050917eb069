"""Training throughput: the library's own train step (training.make_train_step), timed in
windows interleaved with the reference's, and the train section that runs them.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import hardware, paired
from benchmarks.progress import log, ratio_text
from benchmarks.recipes import recipe_config
from patchvae_tf import data, training
from patchvae_tf.config import Config
from patchvae_tf.model.fused import FusedBatchNorm
from patchvae_tf.training import distribute, precision


def _use_keras_kernels(model, optimizer) -> None:
    """Switches the model's BatchNorms and the optimizer to Keras's own ops (before the step
    is traced), the variant that shows what fused.py's kernels save.
    """
    # The fused classes choose their kernels by dtype; here each instance gets its Keras
    # parent's method instead (same variables, Keras's ops).
    for obj in tf.train.TrackableView(model).descendants():
        if isinstance(obj, FusedBatchNorm):
            obj.call = functools.partial(keras.layers.BatchNormalization.call, obj)
    optimizer.update_step = functools.partial(keras.optimizers.Adam.update_step, optimizer)


def _loop(train_step, steps: int):
    """train_step run ``steps`` times per call: one Python dispatch and host sync per loop."""
    if steps == 1:
        return train_step

    @tf.function
    def looped(iterator):
        metrics = train_step(iterator)
        for _ in tf.range(steps - 1):
            metrics = train_step(iterator)
        return metrics

    return looped


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
            model = precision.build_model_in_policy(cfg.model, self.policy)
            adam = training.make_optimizer(cfg)
            if keras_kernels:
                _use_keras_kernels(model, adam)
            optimizer = precision.wrap_optimizer(adam, self.policy)
            optimizer.build(model.trainable_variables)
            step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        source = data.get_source(cfg.data, cfg.model.image_size, cfg.train.seed)
        if synthetic:
            first = next(iter(data.input_dataset(source, "train", self.batch, training=True)))
            fixed = tf.data.Dataset.from_tensors({"image": first["image"]}).repeat()
            self._iterator = iter(strategy.experimental_distribute_dataset(fixed))
        else:
            self._iterator = training.make_iterator(cfg, strategy, source)
        self.jit_compile = distribute.use_xla(dc, strategy)
        self._step = _loop(
            training.make_train_step(cfg, strategy, model, optimizer, step, self.jit_compile),
            steps_per_loop,
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


def section(bench) -> dict:
    """The train section of bench (a runner.Run): the CIFAR recipe under each precision
    variant, the other recipes at the default, and the knobs that show where the time goes.
    """
    cases = []
    (cifar, size, batch), *others = bench.sizes.recipes
    for variant in _variants(bench):
        cases.append(_case(bench, cifar, size, batch, variant))
    for name, other_size, other_batch in others:
        cases.append(_case(bench, name, other_size, other_batch, "default"))
    results = {"train": cases}
    results["train_variants_skipped"] = (
        "bfloat16: not native on this CPU (emulated, slower than float32)"
        if bench.results["auto_precision"]["policy"] != "mixed_bfloat16"
        else None
    )
    # Where the time goes: Keras's unfused BatchNorm and Adam, the input pipeline, and
    # the per-call dispatch.
    if bench.cfg.quick:  # one case runs every code path
        knobs = [
            _case(
                bench,
                cifar,
                size,
                batch,
                "default",
                synthetic=True,
                steps_per_loop=2,
                keras_kernels=True,
            )
        ]
    else:
        knobs = [
            _case(bench, cifar, size, batch, "default", keras_kernels=True),
            _case(bench, cifar, size, batch, "default", synthetic=True),
            _case(bench, cifar, size, batch, "default", steps_per_loop=4),
        ]
    results["train_knobs"] = knobs
    return results


def _variants(bench) -> list[str]:
    """Default always; float32 where default is not float32 without XLA; XLA; bfloat16
    (with and without XLA) only where it is native: emulated bfloat16 measures nothing
    of use.
    """
    auto = bench.results["auto_precision"]["policy"]
    names = ["default"]
    if auto != "none":
        names.append("float32")
    names.append("float32_xla")
    if auto == "mixed_bfloat16":
        names += ["bfloat16_xla"]
    return names if not bench.cfg.quick else ["default"]


def _case(bench, recipe, size, batch, variant, **knobs) -> dict:
    cfg = recipe_config(size, batch, variant, bench.cfg.seed)
    spl = knobs.get("steps_per_loop", 1)
    steps = bench.cfg.steps or bench.sizes.window_steps[size]
    calls = max(1, steps // spl)
    session = Session(cfg, **knobs)
    by_threads: list = []
    try:
        theirs = bench.peer.train(size, batch, calls * spl, by_threads) if bench.peer else None
        if theirs:
            ours_w, theirs_w = paired.interleave(
                lambda: session.window(calls), theirs, bench.sizes.windows
            )
        else:
            ours_w = [session.window(calls) for _ in range(bench.sizes.windows)]
            theirs_w = None
    finally:
        session.close()
    case = {
        "recipe": recipe,
        "image_size": size,
        "batch": batch,
        "variant": variant,
        "policy": session.policy,
        "jit_compile": session.jit_compile,
        **knobs,
        "steps_per_window": calls * spl,
        "first_call_seconds": round(session.first_call_seconds, 2),
        "loss_first_last": [round(session.first_loss, 3), round(session.last_loss, 3)],
        "images_per_second": paired.compare(ours_w, theirs_w, higher_is_better=True),
        # The reference's images/s per window at each thread count; the faster counts.
        "reference_by_threads": by_threads,
        "load_average": round(hardware.load_average(), 2),
    }
    # What the step reaches in convolution and matmul FLOPs, against the float32 matmul
    # rate measured at the start: how far from the machine's dense-math speed it runs.
    per_image = bench.flops_of(size)["train_step"]["total"]
    case["gflops_per_second"] = round(case["images_per_second"]["ours"] * per_image / 1e9, 1)
    log(
        f"train {recipe} b{batch} {variant} ({session.policy}, XLA {session.jit_compile}) "
        f"{knobs or ''}: {case['images_per_second']['ours']:.0f} images/s, reference "
        f"{case['images_per_second']['theirs']}, {ratio_text(case['images_per_second'])} "
        f"(load {case['load_average']})"
    )
    return case
