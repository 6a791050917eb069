"""Recognition by finetuning a classifier on the encoder, the authors' classifier.py."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf import data, models
from patchvae_tf.config import EvalConfig
from patchvae_tf.evaluation.probes import WEIGHT_DECAY, topk_accuracy
from patchvae_tf.evaluation.setup import Setup, batches, restore_model


def _freeze_depths(ecfg: EvalConfig, num_stages: int) -> list[int]:
    """The numbers of frozen stages to finetune with: every depth 0..all unless listed."""
    if not ecfg.freeze_stages:
        return list(range(num_stages + 1))
    return list(dict.fromkeys(num_stages if k < 0 else k for k in ecfg.freeze_stages))


def _trainable(stages, frozen: int) -> list:
    """Variables the classifier trains in the encoder: those of the stages after the first
    ``frozen``, without BatchNorm's scale and offset, which the authors never train
    (set_bn_fix); BatchNorm statistics still follow the batches in every stage.
    """
    out = []
    for stage in stages[frozen:]:
        # TrackableView walks every object a stage holds (TF's public checkpoint graph), so
        # nested blocks' BatchNorms are found without Keras's private layer walk.
        batch_norms = [
            obj
            for obj in tf.train.TrackableView(stage).descendants()
            if isinstance(obj, keras.layers.BatchNormalization)
        ]
        fixed = {id(v) for bn in batch_norms for v in bn.trainable_variables}
        out += [v for v in stage.trainable_variables if id(v) not in fixed]
    return out


def _finetune_once(model, setup: Setup, ecfg: EvalConfig, frozen: int) -> dict:
    """The authors' classifier.py on ``model``'s phi(x) with the first ``frozen`` stages fixed.

    flatten -> dropout -> dense 512 -> ReLU -> dense classes (normal(0, 0.01) weights, zero
    biases); SGD with momentum 0.9 and weight decay 1e-4 added to the gradient (PyTorch's
    coupled form), the rate divided by 10 every --finetune_lr_step_epochs epochs. An epoch is
    one pass over the labelled training split. As under PyTorch's model.train(), BatchNorm
    normalises with batch statistics and updates its moving averages in frozen stages too.
    """
    cfg, source = setup.cfg, setup.source
    stages = model.encoder.stages
    init = dict(
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=ecfg.seed),
        bias_initializer="zeros",
    )
    head = keras.Sequential(
        [
            keras.layers.Flatten(),
            keras.layers.Dropout(ecfg.dropout, seed=ecfg.seed),
            keras.layers.Dense(512, **init),
            keras.layers.ReLU(),
            keras.layers.Dense(source.num_classes, **init),
        ],
        name="classifier",
    )

    def logits_of(x, training):
        return head(model.features(x, training=training)[0], training=training)

    logits_of(tf.zeros([1, cfg.model.image_size, cfg.model.image_size, 3]), False)
    variables = head.trainable_variables + _trainable(stages, frozen)
    _, batch_size, steps_per_epoch = _epochs(source, ecfg)
    schedule = finetune_schedule(
        ecfg.finetune_learning_rate,
        ecfg.finetune_epochs,
        ecfg.finetune_lr_step_epochs,
        steps_per_epoch,
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = logits_of(images, True)
            ce = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
            # Weight decay in the loss: its gradient wd * w is what PyTorch's SGD adds.
            decay = 0.5 * WEIGHT_DECAY * tf.add_n([tf.reduce_sum(v * v) for v in variables])
            total = ce + decay
        optimizer.apply_gradients(zip(tape.gradient(total, variables), variables, strict=True))
        return ce

    flip = cfg.data.random_flip
    ds = data.input_dataset(source, "train", batch_size, training=True, seed=ecfg.seed, flip=flip)
    iterator = iter(ds)
    start, epoch_losses = time.perf_counter(), []
    for _ in range(ecfg.finetune_epochs):
        losses = [float(train_step(*_image_label(next(iterator)))) for _ in range(steps_per_epoch)]
        epoch_losses.append(float(np.mean(losses)))
    seconds = time.perf_counter() - start

    predict = tf.function(lambda x: logits_of(x, False), reduce_retracing=True)
    logits, labels = [], []
    for batch in batches(source, "test", source.sizes["test"], ecfg.batch_size):
        logits.append(predict(tf.constant(batch["image"])).numpy())
        labels.append(batch["label"])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return {
        "frozen_stages": frozen,
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "epoch_losses": [round(v, 5) for v in epoch_losses],
        "test_examples": len(labels),
        "seconds": round(seconds, 1),
    }


def finetune_schedule(learning_rate: float, epochs: int, step_epochs: int, steps_per_epoch: int):
    """learning_rate * 0.1 ** (epoch // step_epochs), per optimizer step (classifier.py's)."""
    drops = range(step_epochs, epochs, step_epochs)
    if not drops:
        return learning_rate
    # The schedule holds values[i] up to and including its boundary; the optimizer's step
    # d * steps_per_epoch is the first of epoch d, so the boundary is the step before it.
    return keras.optimizers.schedules.PiecewiseConstantDecay(
        [d * steps_per_epoch - 1 for d in drops],
        [learning_rate * 0.1**i for i in range(len(drops) + 1)],
    )


def _epochs(source, ecfg: EvalConfig) -> tuple[int, int, int]:
    """(training images, batch size, steps per epoch): an epoch is one pass over the split."""
    n_train = source.sizes["train"]
    batch_size = min(ecfg.finetune_batch_size, n_train)
    return n_train, batch_size, -(-n_train // batch_size)


def _image_label(batch):
    return batch["image"], batch["label"]


def finetune(setup: Setup, ecfg: EvalConfig) -> dict:
    """The recognition protocol at each freeze depth, on fresh copies of the checkpoint (so
    the other sections see its weights), and on a randomly initialised encoder (the floor).
    """
    cfg = setup.cfg
    depths = _freeze_depths(ecfg, len(setup.model.encoder.stages))
    runs, floor = [], []
    for frozen in depths:
        keras.utils.set_random_seed(ecfg.seed)
        runs.append(_finetune_once(restore_model(cfg)[0], setup, ecfg, frozen))
        if ecfg.finetune_random_init:
            keras.utils.set_random_seed(ecfg.seed + 1)
            random_model = models.build_model(cfg.model)
            floor.append(_finetune_once(random_model, setup, ecfg, frozen))
    n_train, batch_size, steps_per_epoch = _epochs(setup.source, ecfg)
    return {
        "encoder_stages": len(setup.model.encoder.stages),
        "epochs": ecfg.finetune_epochs,
        "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "learning_rate": ecfg.finetune_learning_rate,
        "lr_step_epochs": ecfg.finetune_lr_step_epochs,
        "train_examples": n_train,
        "runs": runs,
        "random": floor,
    }
