"""The training loop: strategy, distributed input, checkpoints, summaries and progress."""

from __future__ import annotations

import dataclasses
import os
import time

import keras
import tensorflow as tf

from patchvae_tf import data, latents, models, visualize
from patchvae_tf.config import Config
from patchvae_tf.errors import UserError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
_NUM_IMAGES = 8  # images shown in TensorBoard


def _check_workdir(cfg: Config) -> Config | None:
    """Refuses a workdir that is a file or holds a different model; returns its saved config."""
    workdir = cfg.train.workdir
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file, not a directory")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    from patchvae_tf.config import load_config

    saved = load_config(path)
    mine = dataclasses.asdict(cfg.model) | {"image_size": cfg.data.image_size}
    theirs = dataclasses.asdict(saved.model) | {"image_size": saved.data.image_size}
    diff = [f"{k}={theirs[k]!r} (now {mine[k]!r})" for k in mine if mine[k] != theirs[k]]
    if diff:
        raise UserError(
            f"--workdir {workdir!r} holds a model trained with {', '.join(diff)}; "
            "use another --workdir to train a different model"
        )
    return saved


def _write_json_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def make_optimizer(cfg: Config) -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(cfg.train.learning_rate, beta_1=0.5, beta_2=0.999)


def create_strategy(cfg: Config) -> tf.distribute.Strategy:
    """The distribution strategy; created once, before any variable."""
    del cfg
    return tf.distribute.get_strategy()


def restore(cfg: Config, model, optimizer=None, step=None) -> tf.train.CheckpointManager:
    """Restores the latest checkpoint of cfg's workdir into model (and optimizer, step)."""
    parts = {"model": model}
    if optimizer is not None:
        parts["optimizer"] = optimizer
    if step is not None:
        parts["step"] = step
    checkpoint = tf.train.Checkpoint(**parts)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(cfg.train.workdir, CHECKPOINT_DIR), max_to_keep=3
    )
    if manager.latest_checkpoint:
        status = checkpoint.restore(manager.latest_checkpoint)
        if optimizer is not None:
            status.assert_existing_objects_matched()
        else:
            status.expect_partial()
    return manager


def _log_images(model, images: tf.Tensor, step: int) -> None:
    out = model(images, training=False)
    pairs = tf.concat([images, out["reconstruction"]], axis=0)
    tf.summary.image(
        "reconstructions",
        visualize.image_grid(visualize.to_unit(pairs), cols=images.shape[0])[None],
        step=step,
    )
    tf.summary.image(
        "inputs",
        visualize.image_grid(visualize.to_unit(images), cols=images.shape[0])[None],
        step=step,
    )
    tf.summary.image(
        "samples",
        visualize.image_grid(
            visualize.to_unit(model.sample(images.shape[0])), cols=images.shape[0]
        )[None],
        step=step,
    )
    if isinstance(model, models.PatchVAE):
        q = model.encode(images)["occurrence"]
        tf.summary.image(
            "occurrence_maps", visualize.occurrence_grid(images[:4], q[:4])[None], step=step
        )


def train(cfg: Config) -> dict:
    """Trains cfg's model in cfg.train.workdir, resuming from its latest checkpoint.

    Returns a summary: first and last logged loss, final step, images/s.
    """
    t = cfg.train
    _check_workdir(cfg)
    source = data.get_source(cfg.data, t.seed)
    strategy = create_strategy(cfg)
    keras.utils.set_random_seed(t.seed)

    with strategy.scope():
        model = models.build_model(cfg.model, cfg.data.image_size)
        optimizer = make_optimizer(cfg)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    manager = restore(cfg, model, optimizer, step)
    start = int(step.numpy())

    os.makedirs(t.workdir, exist_ok=True)
    _write_json_atomic(os.path.join(t.workdir, CONFIG_FILE), cfg.to_json())
    if start:
        print(f"resuming from step {start} ({manager.latest_checkpoint})")
    if start >= t.train_steps:
        print(f"already trained for {start} steps (--train_steps={t.train_steps})")
        return {"step": start, "first_loss": None, "last_loss": None, "images_per_second": 0.0}

    global_batch = t.batch_size

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return data.input_dataset(
            source,
            "train",
            ctx.get_per_replica_batch_size(global_batch),
            training=True,
            seed=t.seed,
            input_context=ctx,
        )

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    m = cfg.model

    def step_fn(batch):
        images = batch["image"]
        tau = latents.temperature(step, m.tau_init, m.tau_min, m.anneal_rate)
        with tf.GradientTape() as tape:
            outputs = model(images, training=True, temperature=tau)
            terms = model.loss_terms(images, outputs)
            # Each replica divides its sum by the global batch, so the gradients that the
            # optimizer sums across replicas are those of the mean over the global batch.
            loss = tf.reduce_sum(terms["loss"]) / global_batch
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return {k: tf.reduce_sum(v) / global_batch for k, v in terms.items()}

    @tf.function
    def train_step(it):
        per_replica = strategy.run(step_fn, args=(next(it),))
        metrics = {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }
        metrics["temperature"] = latents.temperature(step, m.tau_init, m.tau_min, m.anneal_rate)
        step.assign_add(1)
        # Written in-graph, so logging the temperature every step costs no host round trip.
        tf.summary.scalar("temperature", metrics["temperature"], step=step)
        return metrics

    writer = tf.summary.create_file_writer(os.path.join(t.workdir, LOG_DIR))
    preview = next(iter(data.input_dataset(source, "test", _NUM_IMAGES, training=False)))
    preview = preview["image"]
    progress = keras.utils.Progbar(t.train_steps, stateful_metrics=["loss", "images/s"])
    first_loss = last_loss = None
    window_start, window_steps, rate = time.perf_counter(), 0, 0.0
    current = start
    with writer.as_default():
        while current < t.train_steps:
            metrics = train_step(iterator)
            current += 1
            window_steps += 1
            if current % t.log_every == 0 or current == t.train_steps or first_loss is None:
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
                tf.summary.scalar("learning_rate", float(optimizer.learning_rate), step=current)
                tf.summary.scalar("images_per_second", rate, step=current)
                if current % t.log_every == 0 or current == t.train_steps:
                    _log_images(model, preview, current)
                progress.update(current, [("loss", last_loss), ("images/s", rate)])
            if current % t.checkpoint_every == 0 or current == t.train_steps:
                manager.save(checkpoint_number=current)
        writer.flush()
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
    }
