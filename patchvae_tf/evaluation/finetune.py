"""Recognition by finetuning a classifier on the encoder, the authors' classifier.py."""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf import data
from patchvae_tf.config import EvalConfig
from patchvae_tf.evaluation.probes import WEIGHT_DECAY, topk_accuracy
from patchvae_tf.evaluation.setup import Setup, batches, duration, progbar, restore_model
from patchvae_tf.model import models


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


class Classifier:
    """The authors' classifier.py on ``model``'s phi(x) with the first ``frozen`` stages fixed.

    head flatten: flatten -> dropout -> dense 512 -> ReLU -> dense classes (normal(0, 0.01)
    weights, zero biases); pool: the same on phi(x) averaged over its grid (their
    ``--arch=resnet18``, which their README's ImageNet command ends up running). ``step``:
    SGD with momentum 0.9 and weight decay 1e-4 added to the gradient (PyTorch's coupled
    form). As under PyTorch's model.train(), BatchNorm normalises with batch statistics and
    updates its moving averages in frozen stages too.
    """

    def __init__(self, model, ecfg: EvalConfig, num_classes: int, frozen: int):
        init = dict(
            kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=ecfg.seed),
            bias_initializer="zeros",
        )
        reduce = (
            keras.layers.GlobalAveragePooling2D()
            if ecfg.classifier_head == "pool"
            else keras.layers.Flatten()
        )
        self.model = model
        self.head = keras.Sequential(
            [
                reduce,
                keras.layers.Dropout(ecfg.dropout, seed=ecfg.seed),
                keras.layers.Dense(512, **init),
                keras.layers.ReLU(),
                keras.layers.Dense(num_classes, **init),
            ],
            name="classifier",
        )
        size = model.image_size
        self.logits(tf.zeros([1, size, size, 3]), False)
        self.variables = self.head.trainable_variables + _trainable(model.encoder.stages, frozen)

    def logits(self, x, training, dropout_mask=None):
        """Logits [B, classes] of images [B, H, W, 3]."""
        return self._forward(x, training, dropout_mask)[1]

    def _forward(self, x, training, dropout_mask=None):
        """phi(x) [B, h, w, D] and the logits; dropout_mask (0 or 1 / (1 - rate), [B, the
        head's inputs]) in place of the dropout layer's own draw.
        """
        f = self.model.features(x, training=training)[0]
        if dropout_mask is None:
            return f, self.head(f, training=training)
        reduce, _, *rest = self.head.layers
        h = reduce(f) * dropout_mask
        for layer in rest:
            h = layer(h)
        return f, h

    def step(self, optimizer, images, labels, dropout_mask=None):
        """One SGD step; returns the cross-entropy (before the step), phi(x), the logits and
        the gradients of ``variables``.
        """
        with tf.GradientTape() as tape:
            features, logits = self._forward(images, True, dropout_mask)
            ce = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            )
            # Weight decay in the loss: its gradient wd * w is what PyTorch's SGD adds.
            decay = 0.5 * WEIGHT_DECAY * tf.add_n([tf.reduce_sum(v * v) for v in self.variables])
            total = ce + decay
        grads = tape.gradient(total, self.variables)
        optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        return ce, features, logits, grads


def _classifier(model, setup: Setup, ecfg: EvalConfig, frozen: int):
    """(train_step(images, labels) -> cross-entropy, logits(images, training)) of the
    Classifier on ``model`` with the first ``frozen`` stages fixed, its SGD rate divided by
    10 every --finetune_lr_step_epochs epochs.
    """
    source = setup.source
    clf = Classifier(model, ecfg, source.num_classes, frozen)
    _, _, steps_per_epoch = _epochs(source, ecfg)
    schedule = finetune_schedule(
        ecfg.finetune_learning_rate,
        ecfg.finetune_epochs,
        ecfg.finetune_lr_step_epochs,
        steps_per_epoch,
    )
    optimizer = keras.optimizers.SGD(schedule, momentum=0.9)

    @tf.function
    def train_step(images, labels):
        return clf.step(optimizer, images, labels)[0]

    return train_step, clf.logits


def step_seconds(setup: Setup, ecfg: EvalConfig) -> float:
    """Seconds of one finetuning step (nothing frozen) at its batch size, timed on a fresh
    model: the evaluated one's weights and BatchNorm statistics stay as they are.
    """
    train_step, _ = _classifier(models.build_model(setup.cfg.model), setup, ecfg, 0)
    _, batch_size, _ = _epochs(setup.source, ecfg)
    size = setup.cfg.model.image_size
    images, labels = tf.zeros([batch_size, size, size, 3]), tf.zeros([batch_size], tf.int32)
    float(train_step(images, labels))
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < 0.3:
        float(train_step(images, labels))
        calls += 1
    return (time.perf_counter() - start) / calls


def _finetune_once(model, setup: Setup, ecfg: EvalConfig, frozen: int, title: str = "") -> dict:
    """The authors' classifier.py on ``model``'s phi(x) with the first ``frozen`` stages fixed
    (_classifier). An epoch is one pass over the labelled training split. As under PyTorch's
    model.train(), BatchNorm normalises with batch statistics and updates its moving
    averages in frozen stages too.
    """
    cfg, source = setup.cfg, setup.source
    train_step, logits_of = _classifier(model, setup, ecfg, frozen)
    _, batch_size, steps_per_epoch = _epochs(source, ecfg)
    flip = cfg.data.random_flip
    ds = data.input_dataset(source, "train", batch_size, training=True, seed=ecfg.seed, flip=flip)
    iterator = iter(ds)
    bar = progbar(ecfg.finetune_epochs * steps_per_epoch, title) if title else None
    start, epoch_losses = time.perf_counter(), []
    for epoch in range(ecfg.finetune_epochs):
        losses = []
        for i in range(steps_per_epoch):
            losses.append(float(train_step(*_image_label(next(iterator)))))
            if bar is not None:
                bar.update(epoch * steps_per_epoch + i + 1, [("loss", losses[-1])])
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
    count = len(depths) * (2 if ecfg.finetune_random_init else 1)
    start = time.perf_counter()

    def once(model, frozen, kind):
        done = len(runs) + len(floor)
        title = f"finetune run {done + 1} of {count}: {kind}, {frozen} stages frozen"
        result = _finetune_once(model, setup, ecfg, frozen, title)
        left = (time.perf_counter() - start) / (done + 1) * (count - done - 1)
        rest = f"; the other {count - done - 1} about {duration(left)}" if done + 1 < count else ""
        print(f"  top-1 {result['top1']:.3f} in {duration(result['seconds'])}{rest}", flush=True)
        return result

    for frozen in depths:
        keras.utils.set_random_seed(ecfg.seed)
        runs.append(once(restore_model(cfg)[0], frozen, "trained"))
        if ecfg.finetune_random_init:
            keras.utils.set_random_seed(ecfg.seed + 1)
            floor.append(once(models.build_model(cfg.model), frozen, "random-init"))
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
