"""Recognition by finetuning a classifier on the encoder at each freeze depth, the authors'
classifier.py, through the recognizer's classifier and training loop (patchvae_tf.recognition).
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from patchvae_tf.config import EvalConfig
from patchvae_tf.evaluation.setup import Setup, batches, duration, progbar, restore_model
from patchvae_tf.model import models
from patchvae_tf.recognition import fit
from patchvae_tf.recognition.classifier import classifier
from patchvae_tf.recognition.fit import topk_accuracy


def _freeze_depths(ecfg: EvalConfig, num_stages: int) -> list[int]:
    """The numbers of frozen stages to finetune with: every depth 0..all unless listed."""
    if not ecfg.freeze_stages:
        return list(range(num_stages + 1))
    return list(dict.fromkeys(num_stages if k < 0 else k for k in ecfg.freeze_stages))


def _classifier(model, setup: Setup, ecfg: EvalConfig, frozen: int):
    """(Classifier, its SGD optimizer with the rate divided by 10 every
    --finetune_lr_step_epochs epochs) on ``model`` with the first ``frozen`` stages fixed: the
    authors' classifier.py, so BatchNorm normalises with batch statistics and updates its
    moving averages in frozen stages too, as under PyTorch's model.train().
    """
    clf = classifier(model, ecfg, setup.source.num_classes, frozen)
    _, _, steps_per_epoch = _epochs(setup.source, ecfg)
    optimizer = fit.optimizer(
        ecfg.finetune_learning_rate,
        ecfg.finetune_epochs,
        ecfg.finetune_lr_step_epochs,
        steps_per_epoch,
    )
    return clf, optimizer


def step_seconds(setup: Setup, ecfg: EvalConfig) -> float:
    """Seconds of one finetuning step (nothing frozen) at its batch size, timed on a fresh
    model: the evaluated one's weights and BatchNorm statistics stay as they are.
    """
    clf, optimizer = _classifier(models.build_model(setup.cfg.model), setup, ecfg, 0)
    train_step = tf.function(lambda x, y: clf.step(optimizer, x, y)[0])
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
    """The authors' classifier.py on ``model``'s phi(x) with the first ``frozen`` stages fixed,
    trained by recognition's one loop (train_classifier.py's): an epoch is one pass over the
    labelled training split, shuffled per epoch.
    """
    cfg, source = setup.cfg, setup.source
    clf, optimizer = _classifier(model, setup, ecfg, frozen)
    _, batch_size, _ = _epochs(source, ecfg)
    images = fit.LabelledImages(source, "train", flip=cfg.data.random_flip)
    total = ecfg.finetune_epochs * images.steps(batch_size)
    bar = progbar(total, title) if title else None
    start = time.perf_counter()
    epoch_losses = fit.train_epochs(
        clf,
        images,
        optimizer,
        epochs=ecfg.finetune_epochs,
        batch_size=batch_size,
        seed=ecfg.seed,
        bar=bar,
    )
    seconds = time.perf_counter() - start
    test = batches(source, "test", source.sizes["test"], ecfg.batch_size)
    logits, labels = fit.predict(clf, test)
    return {
        "frozen_stages": frozen,
        "top1": topk_accuracy(logits, labels, 1),
        "top5": topk_accuracy(logits, labels, 5),
        "epoch_losses": [round(v, 5) for v in epoch_losses],
        "test_examples": len(labels),
        "seconds": round(seconds, 1),
    }


def _epochs(source, ecfg: EvalConfig) -> tuple[int, int, int]:
    """(training images, batch size, steps per epoch): an epoch is one pass over the split."""
    n_train = source.sizes["train"]
    batch_size = min(ecfg.finetune_batch_size, n_train)
    return n_train, batch_size, -(-n_train // batch_size)


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
