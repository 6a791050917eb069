"""The one training loop of a classifier on the encoder: evaluate.py's finetuning and
train_classifier.py both run it, and score it with ``predict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from patchvae_tf import data

# Labelled images kept in memory as float32 up to this size; beyond it each epoch re-reads
# the split and keeps the selected ones.
_IN_MEMORY_BYTES = 512 << 20
# Images shuffled together when an epoch streams the whole split.
_SHUFFLE_BUFFER = 10_000


@tf.autograph.experimental.do_not_convert
def _second(i, ex):
    return ex


@tf.autograph.experimental.do_not_convert
def _pair(ex):
    return ex["image"], ex["label"]


class LabelledImages:
    """Images of one split (every one, or those at ``indices`` in reader order) as a
    tf.data pipeline per epoch: shuffled with (seed, epoch), flipped when ``flip``, so a run
    resumed at an epoch sees what an unbroken one would.
    """

    def __init__(self, source: data.Source, split: str, indices=None, flip: bool = False):
        self.source, self.split, self.flip = source, split, flip
        self.indices = None if indices is None else np.asarray(indices, np.int64)
        total = source.sizes.get(split) or 0
        self.count = total if self.indices is None else len(self.indices)
        self.arrays = None
        if self.count:
            spec = source.readers[split](None, None).element_spec["image"]
            if int(np.prod(spec.shape)) * 4 * self.count <= _IN_MEMORY_BYTES:
                self.arrays = self._gather()

    def _read(self) -> tf.data.Dataset:
        """The split's (image, label) pairs in reader order, restricted to the indices."""
        ds = self.source.readers[self.split](None, None)
        if self.indices is not None:
            mask = np.zeros([self.source.sizes[self.split]], bool)
            mask[self.indices] = True
            keep = tf.constant(mask)

            @tf.autograph.experimental.do_not_convert
            def kept(i, ex):
                return tf.gather(keep, i)

            ds = ds.enumerate().filter(kept).map(_second)
        return ds.map(_pair)

    def _gather(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for x, y in self._read().batch(256):
            images.append(x.numpy())
            labels.append(y.numpy())
        return np.concatenate(images), np.concatenate(labels).astype(np.int32)

    def steps(self, batch_size: int) -> int:
        """Optimizer steps per epoch: every image once, the last batch possibly smaller."""
        return -(-self.count // batch_size)

    def epoch(self, epoch: int, batch_size: int, seed: int):
        """Epoch ``epoch``'s shuffled (and flipped) batches of (images, labels)."""
        key = seed * 100_003 + epoch
        if self.arrays is not None:
            return self._epoch_in_memory(key, batch_size)
        ds = self._read().shuffle(max(min(self.count, _SHUFFLE_BUFFER), 1), seed=key)
        if self.flip:

            def flip(i, pair):
                stateless = tf.stack([tf.constant(key, tf.int64), i])
                return tf.image.stateless_random_flip_left_right(pair[0], seed=stateless), pair[1]

            ds = ds.enumerate().map(flip)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def _epoch_in_memory(self, key: int, batch_size: int):
        """The in-memory images' epoch, shuffled and flipped in NumPy from key: a few labelled
        images make epochs of one step, where building a tf.data pipeline per epoch would
        cost more than the step.
        """
        images, labels = self.arrays
        rng = np.random.default_rng(key)
        order = rng.permutation(self.count)
        flips = rng.random(self.count) < 0.5 if self.flip else None
        for start in range(0, self.count, batch_size):
            idx = order[start : start + batch_size]
            x = images[idx]
            if flips is not None:
                x = np.where(flips[idx, None, None, None], x[:, :, ::-1], x)
            yield tf.constant(x), tf.constant(labels[idx])

    def batches(self, batch_size: int) -> tf.data.Dataset:
        """Every image once, in order, unflipped: for scoring."""
        if self.arrays is not None:
            ds = tf.data.Dataset.from_tensor_slices(self.arrays)
        else:
            ds = self._read()
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def schedule(learning_rate: float, epochs: int, step_epochs: int, steps_per_epoch: int):
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


def progbar(total: int, title: str) -> keras.utils.Progbar:
    """A Keras progress bar (with its ETA) under a line that says what it counts."""
    print(title, flush=True)
    return keras.utils.Progbar(max(int(total), 1), interval=0.5, stateful_metrics=["loss"])


def optimizer(learning_rate: float, epochs: int, step_epochs: int, steps_per_epoch: int):
    """The authors' SGD: momentum 0.9, the rate divided by 10 every step_epochs epochs."""
    rate = schedule(learning_rate, epochs, step_epochs, steps_per_epoch)
    return keras.optimizers.SGD(rate, momentum=0.9)


def train_epochs(
    clf,
    images: LabelledImages,
    opt,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    start_epoch: int = 0,
    bar=None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Trains clf (a recognition.Classifier) from start_epoch to epochs; returns each
    epoch's mean cross-entropy. ``on_epoch(epoch, loss)`` runs after each (checkpoints,
    validation, summaries); ``bar`` (a keras.utils.Progbar of epochs * steps_per_epoch)
    counts the steps.
    """

    @tf.function(reduce_retracing=True)
    def train_step(x, y):
        return clf.step(opt, x, y)[0]

    steps = images.steps(batch_size)
    if bar is not None and start_epoch:
        bar.update(start_epoch * steps)
    losses = []
    for epoch in range(start_epoch, epochs):
        batch_losses = []
        for i, (x, y) in enumerate(images.epoch(epoch, batch_size, seed)):
            batch_losses.append(float(train_step(x, y)))
            if bar is not None:
                bar.update(epoch * steps + i + 1, [("loss", batch_losses[-1])])
        losses.append(float(np.mean(batch_losses)))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


def predict(clf, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """(logits [n, classes], labels [n]) of clf in inference mode over (images, labels)
    batches or dicts with "image" and "label".
    """
    logits, labels = [], []
    for batch in batches:
        x, y = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        logits.append(clf.infer(x).numpy())
        labels.append(np.asarray(y))
    if not logits:
        return np.zeros([0, clf.num_classes], np.float32), np.zeros([0], np.int64)
    return np.concatenate(logits), np.concatenate(labels).astype(np.int64)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits; logits [n, K], labels [n]."""
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def scores(logits: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """Top-1, top-5, each class's accuracy (its recall) and the majority label's top-1."""
    predicted = np.argmax(logits, axis=1)
    per_class = {}
    for c, name in enumerate(class_names):
        members = labels == c
        if members.any():
            per_class[name] = float(np.mean(predicted[members] == c))
    counts = np.bincount(labels, minlength=len(class_names))
    return {
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "per_class_top1": per_class,
        "majority_top1": float(counts.max() / max(len(labels), 1)),
        "examples": int(len(labels)),
    }
