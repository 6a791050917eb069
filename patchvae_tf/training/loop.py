"""The training loop: strategy, distributed input, checkpoints, summaries and progress; the
step it runs is step.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import sys
import tempfile
import time

import keras
import tensorflow as tf

from patchvae_tf import data, pixels
from patchvae_tf import restore as strict
from patchvae_tf.config import Config
from patchvae_tf.config.training import TRAINED_CONFIG
from patchvae_tf.data import tfds_source
from patchvae_tf.errors import UserError
from patchvae_tf.model import models
from patchvae_tf.training import budget, distribute, precision, summaries
from patchvae_tf.training.callbacks import Callbacks
from patchvae_tf.training.step import make_optimizer, make_train_step, step_temperature
from patchvae_tf.workdir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    LOG_DIR,
    training_lock,
    write_text_atomic,
)

_NUM_IMAGES = 8  # images shown in TensorBoard
# TF's restart code for preempted jobs (failure_handling): a job manager restarts on it.
PREEMPTED_EXIT_CODE = 42


def _check_workdir(cfg: Config) -> Config | None:
    """Refuses a workdir that is a file or holds a different model; returns its saved config."""
    workdir = cfg.train.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file, not a directory")
    probe = os.path.abspath(workdir)
    while not os.path.exists(probe):  # the workdir is created later, only if all is well
        probe = os.path.dirname(probe)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UserError(f"cannot write in --workdir {workdir!r}: {e.strerror} ({probe})") from None
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    from patchvae_tf.config import load_config

    saved = load_config(path)
    mine, theirs = dataclasses.asdict(cfg.model), dataclasses.asdict(saved.model)
    diff = [f"{k}={theirs[k]!r} (now {mine[k]!r})" for k in mine if mine[k] != theirs[k]]
    if diff:
        raise UserError(
            f"--workdir {workdir!r} holds a model trained with {', '.join(diff)}; "
            "use another --workdir to train a different model"
        )
    return saved


def create_strategy(cfg: Config) -> tf.distribute.Strategy:
    """The distribution strategy; created once, before any variable."""
    distribute.configure_devices(cfg.distribute)
    strategy = distribute.create_strategy(cfg.distribute)
    distribute.check_global_batch(cfg.train.batch_size, strategy)
    return strategy


def _log_images(model, images: tf.Tensor, step: int, tau: tf.Tensor) -> None:
    out = model(images, training=False, temperature=tau)
    pairs = tf.concat([images, out["reconstruction"]], axis=0)
    tf.summary.image(
        "reconstructions",
        summaries.image_grid(pixels.to_display(pairs), cols=images.shape[0])[None],
        step=step,
    )
    tf.summary.image(
        "inputs",
        summaries.image_grid(pixels.to_display(images), cols=images.shape[0])[None],
        step=step,
    )
    tf.summary.image(
        "samples",
        summaries.image_grid(
            pixels.to_display(model.sample(images.shape[0])), cols=images.shape[0]
        )[None],
        step=step,
    )
    if isinstance(model, models.PatchVAE):
        q = model.encode(images)["occurrence"]
        tf.summary.image(
            "occurrence_maps", summaries.occurrence_grid(images[:4], q[:4])[None], step=step
        )


def make_iterator(
    cfg: Config, strategy: tf.distribute.Strategy, source: data.Source, position: int = 0
):
    """The distributed iterator over source's training split, in global batches, beginning
    after the first ``position`` training examples (a resumed run's checkpoint says how many).

    The position, not the iterator, is checkpointed: a strategy's distributed iterator is not
    checkpointable (and a tf.data iterator's checkpoint would hold its shuffle and prefetch
    buffers of decoded images); each pipeline recomputes where it stood from the seeded
    epoch-and-offset order of data.input_dataset.
    """
    t = cfg.train

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        # Each worker reads its own shard (input_context) in per-replica batches; every
        # pipeline consumed the same share of the global batches.
        return data.input_dataset(
            source,
            "train",
            ctx.get_per_replica_batch_size(t.batch_size),
            training=True,
            seed=t.seed,
            input_context=ctx,
            flip=cfg.data.random_flip,
            start=position // ctx.num_input_pipelines,
        )

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def _next_step(train_step, iterator):
    """One step; a TFDS stream none of whose images fits the size limits ends in one line."""
    try:
        return train_step(iterator)
    except tf.errors.InvalidArgumentError as e:
        found = re.search(rf"TFDS dataset [^\n\]]*{tfds_source.NONE_FIT}[^\n\]]*", e.message)
        if found:
            raise UserError(found.group(0).replace("\\'", "'")) from None  # TF escapes quotes
        raise


def _check_same_step(strategy: tf.distribute.Strategy, step: tf.Variable) -> None:
    """Workers that restored different steps would deadlock at the end: refuse to start."""
    if distribute.task(strategy)[0] is None:
        return
    value = tf.cast(step, tf.float64)
    mean, mean_sq = (
        strategy.reduce(
            tf.distribute.ReduceOp.MEAN, strategy.run(lambda x=x: tf.identity(x)), axis=None
        )
        for x in (value, value * value)
    )
    if float(mean_sq - mean * mean) > 1e-6:
        raise UserError(
            f"workers restored different steps (this one {int(step.numpy())}, mean "
            f"{float(mean):.1f}): every worker must read the chief's --workdir checkpoints "
            "(a shared filesystem)"
        )


def _preemption_handler(strategy, manager, checkpoint_dir: str, step: tf.Variable, finite):
    """TF's handler: on SIGTERM to any worker, all save at one agreed step, then exit 42.
    finite() says whether the loss and the weights are finite: the handler saves between
    the loop's checks, so a non-finite checkpoint it wrote is deleted again (by the chief).
    """

    def exit_fn():
        distribute.remove_worker_dir(checkpoint_dir, strategy)
        saved = int(step.numpy())
        if finite():
            print(f"preempted: checkpoint saved at step {saved}; run the same command to resume")
        else:
            kept = strict.discard_latest(checkpoint_dir) if distribute.is_chief(strategy) else ""
            print(
                f"preempted at step {saved} with non-finite values: that checkpoint was deleted, "
                f"the latest stays {kept or 'none'}; lower --learning_rate or the loss weights"
            )
        sys.stdout.flush()
        sys.exit(PREEMPTED_EXIT_CODE)

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        getattr(strategy, "cluster_resolver", None),
        manager,
        termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn),
    )


def train(
    cfg: Config,
    *,
    source: data.Source | None = None,
    callbacks=(),
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Trains cfg's model in cfg.train.workdir, resuming from its latest checkpoint.

    ``source``: the training data (patchvae_tf.train passes data from Python); None reads
    cfg.data.dataset. ``callbacks``: keras.callbacks.Callback objects (callbacks.Callbacks
    says when each is called). ``strategy``: one create_strategy made already (before any
    other TensorFlow op, as a multi-worker strategy needs). Returns a summary: first and
    last logged loss, final step, images/s, and whether a callback stopped training.
    A second run on the same workdir is refused while this one holds its lock
    (workdir.training_lock).
    """
    with contextlib.ExitStack() as held:
        return _train(cfg, held, source, callbacks, strategy)


def _train(cfg: Config, held: contextlib.ExitStack, source, callbacks, strategy) -> dict:
    t, dc = cfg.train, cfg.distribute
    _check_workdir(cfg)
    strategy = strategy or create_strategy(cfg)
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec() if resolver is not None else None
    workers = sum(spec.num_tasks(j) for j in ("chief", "worker") if j in spec.jobs) if spec else 1
    budget.check(cfg, workers)  # before any variable or input is made
    chief = distribute.is_chief(strategy)
    source = source or data.get_source(cfg.data, cfg.model.image_size, t.seed)
    if chief:  # the data is good: the workdir may be made, and locked
        held.enter_context(training_lock(t.workdir))
    if dc.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(t.seed)

    policy, why = precision.resolve(dc.mixed_precision, strategy)
    if dc.mixed_precision == "auto" and chief:
        print(f"--mixed_precision=auto: {policy} ({why})")
    with strategy.scope():
        model = precision.build_model_in_policy(cfg.model, policy)
        if dc.sync_batch_norm:
            distribute.synchronize_batch_norm(model)
        optimizer = precision.wrap_optimizer(make_optimizer(cfg), policy)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        # Training examples consumed (all pipelines): where the input resumes.
        position = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_position")
        # The first step whose loss was not finite (-1: none); never checkpointed.
        diverged = tf.Variable(-1, dtype=tf.int64, trainable=False, name="diverged_at")

    checkpoint_dir = os.path.join(t.workdir, CHECKPOINT_DIR)
    parts = dict(model=model, optimizer=precision.inner_optimizer(optimizer), step=step)
    checkpoint = tf.train.Checkpoint(**parts, input_position=position)
    # Every worker restores the chief's latest checkpoint: all start at the same step.
    latest = strict.newest_readable(
        checkpoint_dir, t.workdir, resuming=True, **parts, input_position=position
    )
    _check_same_step(strategy, step)
    distribute.remove_worker_dir(checkpoint_dir, strategy)  # a killed run's leftovers
    manager = tf.train.CheckpointManager(
        checkpoint, distribute.write_dir(checkpoint_dir, strategy), max_to_keep=3
    )
    start = int(step.numpy())
    start_position = int(position.numpy())

    if chief:
        os.makedirs(t.workdir, exist_ok=True)
        write_text_atomic(os.path.join(t.workdir, CONFIG_FILE), cfg.to_json())
        # What the checkpoints are trained with, so readers notice an edited config.json.
        write_text_atomic(os.path.join(t.workdir, TRAINED_CONFIG), cfg.to_json())
    if start:
        print(f"resuming from step {start} ({latest})")
    if start >= t.train_steps:
        print(f"already trained for {start} steps (--train_steps={t.train_steps})")
        return {"step": start, "first_loss": None, "last_loss": None, "images_per_second": 0.0}

    global_batch = t.batch_size
    iterator = make_iterator(cfg, strategy, source, start_position)
    jit_compile = distribute.use_xla(dc, strategy)
    if jit_compile and dc.sync_batch_norm and strategy.num_replicas_in_sync > 1:
        # Synchronised BatchNorm all-reduces inside the forward pass; XLA cannot hold that.
        print("note: --sync_batch_norm over several replicas runs without XLA (--jit_compile)")
        jit_compile = False
    train_step = make_train_step(
        cfg, strategy, model, optimizer, step, jit_compile, position=position, diverged=diverged
    )
    weights_finite = tf.function(
        lambda: tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in model.variables])
    )

    def finite() -> bool:
        """Whether every loss so far and every weight now is finite."""
        return int(diverged.numpy()) < 0 and bool(weights_finite())

    def stop_if_diverged(metrics) -> None:
        """Raises UserError (one line) once a loss or a weight is not finite: checked at
        every logged step and before every checkpoint, so none holds a non-finite value.
        """
        if finite():
            return
        bad = int(diverged.numpy())
        terms = ", ".join(
            f"{k}={float(v):.4g}" for k, v in sorted(metrics.items()) if k != "temperature"
        )
        what = (
            f"the loss went non-finite at step {bad}"
            if bad >= 0
            else f"the weights went non-finite by step {current}"
        )
        raise UserError(
            f"training stopped: {what} (step {current}: {terms}); "
            f"no checkpoint was written since, the latest stays "
            f"{manager.latest_checkpoint or 'none'}; lower --learning_rate or the loss weights"
        )

    if chief:
        writer = tf.summary.create_file_writer(os.path.join(t.workdir, LOG_DIR))
        # None where no test image fits the size limits: training goes on without previews.
        preview = next(iter(data.input_dataset(source, "test", _NUM_IMAGES, training=False)), None)
        preview = None if preview is None else preview["image"]
    else:
        writer = tf.summary.create_noop_writer()
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    preemption = _preemption_handler(strategy, manager, checkpoint_dir, step, finite)
    progress = keras.utils.Progbar(t.train_steps, stateful_metrics=["loss", "images/s"])
    hooks = Callbacks(callbacks, model, strategy, {"epochs": 1, "steps": t.train_steps})
    hooks.begin()
    stop = False
    first_loss = last_loss = None
    window_start, window_steps, rate = time.perf_counter(), 0, 0.0
    current = start
    try:
        with writer.as_default():
            while current < t.train_steps:
                metrics = _next_step(train_step, iterator)
                current += 1
                window_steps += 1
                if current % t.log_every == 0 or current == t.train_steps or first_loss is None:
                    stop_if_diverged(metrics)
                    values = {k: float(v) for k, v in metrics.items()}
                    elapsed = time.perf_counter() - window_start
                    rate = window_steps * global_batch / max(elapsed, 1e-9)
                    window_start, window_steps = time.perf_counter(), 0
                    if first_loss is None:
                        first_loss = values["loss"]
                    last_loss = values["loss"]
                    for k, v in values.items():
                        if k != "temperature":
                            tf.summary.scalar(k, v, step=current)
                    # Through numpy: float() fails on a MirroredVariable.
                    learning_rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
                    tf.summary.scalar("learning_rate", learning_rate, step=current)
                    tf.summary.scalar("images_per_second", rate, step=current)
                    logged = current % t.log_every == 0 or current == t.train_steps
                    if chief and preview is not None and logged:
                        # Sampled at the temperature training has reached, as the authors'
                        # test() samples at theirs.
                        tau = step_temperature(cfg, current)
                        _log_images(model, preview, current, tau)
                    progress.update(current, [("loss", last_loss), ("images/s", rate)])
                    logs = {**values, "learning_rate": learning_rate, "images_per_second": rate}
                    stop = hooks.logged(current, logs)
                if current % t.checkpoint_every == 0 or current == t.train_steps or stop:
                    stop_if_diverged(metrics)
                    # Every worker saves (a collective); only the chief's copy is kept.
                    manager.save(checkpoint_number=current)
                    distribute.remove_worker_dir(checkpoint_dir, strategy)
                else:
                    preemption.save_checkpoint_if_preempted(checkpoint_number=current)
                if stop:
                    print(f"a callback stopped training at step {current}")
                    break
            writer.flush()
        hooks.end()
    finally:
        # The handler took SIGTERM for this run only; give it back (tests train in-process).
        signal.signal(signal.SIGTERM, previous_sigterm)
    if chief:
        print(
            f"trained to step {current}: checkpoint {manager.latest_checkpoint}, "
            f"TensorBoard logs in {os.path.join(t.workdir, LOG_DIR)} "
            f"(tensorboard --logdir {t.workdir})"
        )
    return {
        "step": current,
        "first_loss": first_loss,
        "last_loss": last_loss,
        "images_per_second": rate,
        "stopped": stop,
    }
