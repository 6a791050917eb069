"""train_classifier.py's recognizer: a classifier trained on a trained encoder's workdir from
K labels per class, kept in a workdir of its own, resumed, and restored for export and load.

A recognizer workdir C holds ``config.json`` ({"recognizer": the RecognizerConfig,
"encoder": its workdir, checkpoint step and training config, "class_names": [...]}),
``checkpoints/`` (encoder, head, optimizer, epoch; ``checkpoints/best/`` with a validation
share), ``logs/`` (TensorBoard), ``labels.txt`` and ``results.json`` (test top-1, top-5
and per-class accuracy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import tensorflow as tf

from patchvae_tf import data
from patchvae_tf import restore as strict
from patchvae_tf.config import Config, load_config
from patchvae_tf.config.recognition import RecognizerConfig
from patchvae_tf.errors import UserError
from patchvae_tf.model import models
from patchvae_tf.recognition import fit, labels
from patchvae_tf.recognition.classifier import Classifier, classifier, num_stages
from patchvae_tf.workdir import CHECKPOINT_DIR, CONFIG_FILE, LOG_DIR, write_text_atomic
from patchvae_tf.workdir import restore as restore_workdir

KEY = "recognizer"  # config.json's key that tells a recognizer workdir from a training one
BEST_DIR = "best"  # under checkpoints/: the epoch of best validation top-1
RESULTS_FILE = "results.json"
LABELS_FILE = "labels.txt"
SCORE_BATCH = 128


def is_recognizer(workdir: str) -> bool:
    """Whether workdir's config.json is a recognizer's (train_classifier.py's)."""
    try:
        with open(os.path.join(workdir, CONFIG_FILE)) as f:
            return KEY in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


def read_config(workdir: str) -> dict:
    """A recognizer workdir's config.json, its sections checked; UserError otherwise."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            saved = json.load(f)
    except OSError:
        raise UserError(f"no recognizer at {workdir!r}: {path} is missing") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(saved, dict) or KEY not in saved:
        raise UserError(f"{path} is not a recognizer's config (train_classifier.py writes one)")
    try:
        saved[KEY] = RecognizerConfig(**saved[KEY])
        saved["encoder"]["config"] = Config.from_dict(saved["encoder"]["config"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{path} misses {e}: is it a recognizer's config?") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return saved


class _Parts(tf.Module):
    """Layers under fixed names: the checkpoint's tree (encoder parts, head) by attribute."""

    def __init__(self, parts: dict):
        super().__init__(name="parts")
        for name, layer in parts.items():
            setattr(self, name, layer)


@dataclasses.dataclass
class Recognizer:
    """A built (and, from ``restore``, restored) recognizer: the classifier and its labels."""

    classifier: Classifier
    class_names: tuple[str, ...]
    config: RecognizerConfig
    encoder_config: Config
    encoder_step: int
    path: str = ""  # the checkpoint restored

    @property
    def image_size(self) -> int:
        return int(self.classifier.model.image_size)

    def objects(self) -> dict:
        """What every checkpoint of the recognizer holds: the encoder parts and the head."""
        return {
            "encoder": _Parts(self.classifier.model.encoder_parts()),
            "head": self.classifier.head,
        }


def build(rcfg: RecognizerConfig, cfg: Config, num_classes: int) -> Classifier:
    """The Classifier of rcfg on a fresh model of cfg (weights as initialised)."""
    keras.utils.set_random_seed(rcfg.seed)
    model = models.build_model(cfg.model)
    stages = num_stages(model)
    if rcfg.freeze_stages > stages:
        raise UserError(
            f"--freeze_stages={rcfg.freeze_stages} exceeds the {stages} stages of the "
            f"{cfg.model.encoder} encoder"
        )
    if not stages and rcfg.freeze_stages != -1:
        raise UserError(
            f"the {cfg.model.encoder} encoder has no stages to finetune from; use "
            "--freeze_stages=-1 (frozen)"
        )
    frozen = stages if rcfg.freeze_stages < 0 else rcfg.freeze_stages
    return classifier(
        model,
        rcfg,
        num_classes,
        frozen,
        inputs=rcfg.classifier_input,
        inference_encoder=frozen == stages,
    )


def restore(workdir: str, checkpoint: str = "") -> Recognizer:
    """The recognizer of workdir from ``checkpoint`` (a prefix or a directory's latest, as
    --checkpoint names it), by default its best checkpoint (with a validation share) or its
    latest; every variable must be matched (restore.CheckpointMismatch otherwise).
    """
    saved = read_config(workdir)
    rcfg, enc = saved[KEY], saved["encoder"]
    names = tuple(saved["class_names"])
    rec = Recognizer(
        build(rcfg, enc["config"], len(names)), names, rcfg, enc["config"], enc["step"]
    )
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    best = os.path.join(checkpoints, BEST_DIR)
    checkpoint = checkpoint or (
        (tf.train.latest_checkpoint(best) if os.path.isdir(best) else None)
        or (tf.train.latest_checkpoint(checkpoints) if os.path.isdir(checkpoints) else None)
    )
    if not checkpoint:
        raise UserError(
            f"recognizer workdir {workdir!r} has no checkpoint; train it first "
            f"(python train_classifier.py --workdir={workdir} ...)"
        )
    rec.path = strict.named(checkpoint, workdir, **rec.objects())
    return rec


def _encoder_config(rcfg: RecognizerConfig) -> Config:
    """The encoder's training Config, its data section the labelled data the recognizer reads."""
    w = rcfg.encoder_workdir
    if not os.path.isdir(w):
        raise UserError(f"--encoder_workdir {w!r} is not a directory")
    if is_recognizer(w):
        raise UserError(
            f"--encoder_workdir {w!r} is a recognizer; give the encoder's train.py workdir"
        )
    cfg = load_config(os.path.join(w, CONFIG_FILE))
    return cfg.replace(
        train=dataclasses.replace(cfg.train, workdir=w), data=rcfg.labelled(cfg.data)
    )


def _check_source(source: data.Source, rcfg: RecognizerConfig) -> tuple[str, ...]:
    """The class names of a source a recognizer can learn and be scored on; else UserError."""
    name = source.name
    if source.unlabelled:
        raise UserError(source.unlabelled)
    if not source.num_classes or source.num_classes < 2:
        raise UserError(
            f"dataset {name!r} has {source.num_classes or 'no'} classes; a recognizer needs 2 "
            "or more"
        )
    if not source.sizes.get("test"):
        raise UserError(f"dataset {name!r} has no test images to score the recognizer on")
    names = source.class_names or tuple(str(i) for i in range(source.num_classes))
    return tuple(str(n) for n in names)


def _check_same(saved: dict, rcfg: RecognizerConfig, workdir: str) -> None:
    """Refuses to resume a workdir whose recognizer was asked for with other settings."""
    old = saved[KEY].to_dict()
    for key, value in rcfg.to_dict().items():
        if key == "workdir":
            continue
        if old.get(key) != value:
            raise UserError(
                f"workdir {workdir!r} holds a recognizer trained with --{key}={old.get(key)!r}, "
                f"not {value!r}: use another --workdir, or the same flags to resume it"
            )


def _plan(rcfg, cfg, step, source, names, selection, frozen_text, batch, steps) -> str:
    n_train = selection.count(source.sizes["train"])
    if rcfg.labels_per_class:
        short = [
            f"{n} ({c})"
            for n, c in zip(names, selection.available, strict=True)
            if c < rcfg.labels_per_class
        ]
        drawn = f"{rcfg.labels_per_class} per class drawn with seed {rcfg.seed}"
        if short:
            drawn += "; fewer in " + ", ".join(short)
    else:
        drawn = "every training image"
    held = (
        f", {len(selection.validation)} held out for validation"
        if len(selection.validation)
        else ""
    )
    encoder = "a random-init" if rcfg.random_init else f"step {step} of"
    return "\n".join(
        [
            f"recognizer: {rcfg.classifier_head} head on {rcfg.classifier_input} of {encoder} "
            f"{rcfg.encoder_workdir} ({cfg.model.arch}, {cfg.model.encoder}), {frozen_text}",
            f"data: {source.name}, {len(names)} classes ({', '.join(names[:10])}"
            f"{', ...' if len(names) > 10 else ''}); {n_train} of {source.sizes['train']} "
            f"training images labelled ({drawn}){held}; {source.sizes['test']} test images",
            f"training: {rcfg.epochs} epochs of {steps} step(s) at batch {batch}, SGD lr "
            f"{rcfg.learning_rate} (/10 every {rcfg.lr_step_epochs} epochs) -> {rcfg.workdir}",
        ]
    )


def train(rcfg: RecognizerConfig) -> dict:
    """Trains (or resumes) the recognizer of rcfg in rcfg.workdir; returns results.json's dict."""
    workdir = rcfg.workdir
    resumed = os.path.isfile(os.path.join(workdir, CONFIG_FILE))
    if resumed:
        saved = read_config(workdir)
        _check_same(saved, rcfg, workdir)
        cfg, step = saved["encoder"]["config"], saved["encoder"]["step"]
        # The data may have moved with the workdir: read it from this command's flags.
        cfg = (
            cfg.replace(data=_encoder_config(rcfg).data)
            if os.path.isdir(rcfg.encoder_workdir)
            else cfg
        )
    else:
        cfg, step = _encoder_config(rcfg), 0
    source = data.get_source(cfg.data, cfg.model.image_size, cfg.train.seed)
    names = _check_source(source, rcfg)
    if resumed and tuple(saved["class_names"]) != names:
        raise UserError(
            f"workdir {workdir!r} was trained on classes {saved['class_names']}, the data now "
            f"has {list(names)}: use another --workdir"
        )
    clf = build(rcfg, cfg, len(names))
    checkpoints = os.path.join(workdir, CHECKPOINT_DIR)
    # Before the recognizer's first checkpoint (a run killed early too), the encoder's
    # weights come from its workdir; after it, from the recognizer's checkpoint.
    has_checkpoint = os.path.isdir(checkpoints) and tf.train.latest_checkpoint(checkpoints)
    if not has_checkpoint and not rcfg.random_init:
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        if not restore_workdir(cfg, clf.model, step=step_var):
            raise UserError(
                f"--encoder_workdir {rcfg.encoder_workdir!r} has no checkpoint; train an encoder "
                f"there first (python train.py --workdir={rcfg.encoder_workdir})"
            )
        step = int(step_var.numpy())
    rec = Recognizer(clf, names, rcfg, cfg, step)

    selection = labels.select(source, rcfg.labels_per_class, rcfg.validation_share, rcfg.seed)
    flip = cfg.data.random_flip
    train_images = fit.LabelledImages(source, "train", selection.train, flip=flip)
    if not train_images.count:
        raise UserError(f"dataset {source.name!r}: no labelled training images to train on")
    validation = (
        fit.LabelledImages(source, "train", selection.validation)
        if len(selection.validation)
        else None
    )
    batch = min(rcfg.batch_size, train_images.count)
    steps = train_images.steps(batch)
    opt = fit.optimizer(rcfg.learning_rate, rcfg.epochs, rcfg.lr_step_epochs, steps)
    opt.build(clf.variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_validation_top1")
    objects = rec.objects()
    parts = dict(objects, optimizer=opt, epoch=epoch, best=best)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**parts), checkpoints, max_to_keep=2)
    best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(**objects, epoch=epoch),
        os.path.join(checkpoints, BEST_DIR),
        max_to_keep=1,
    )
    if manager.latest_checkpoint:
        strict.restore(manager.latest_checkpoint, workdir, **parts)
    start = int(epoch.numpy())
    if not manager.latest_checkpoint:  # resumed runs restored it
        clf.standardize(train_images.batches(SCORE_BATCH))

    stages = num_stages(clf.model)
    frozen_text = (
        "encoder frozen"
        if clf.frozen == stages
        else f"{clf.frozen} of {stages} encoder stages frozen"
    )
    print(_plan(rcfg, cfg, step, source, names, selection, frozen_text, batch, steps), flush=True)
    os.makedirs(workdir, exist_ok=True)
    encoder = {
        "workdir": os.path.abspath(rcfg.encoder_workdir),
        "step": step,
        "config": cfg.to_dict(),
    }
    config = {KEY: rcfg.to_dict(), "encoder": encoder, "class_names": list(names)}
    write_text_atomic(
        os.path.join(workdir, CONFIG_FILE), json.dumps(config, indent=2, sort_keys=True)
    )
    write_text_atomic(os.path.join(workdir, LABELS_FILE), "".join(f"{n}\n" for n in names))
    if start:
        print(f"resuming at epoch {start} of {rcfg.epochs} ({manager.latest_checkpoint})")

    writer = tf.summary.create_file_writer(os.path.join(workdir, LOG_DIR))
    started = time.perf_counter()

    def on_epoch(e: int, loss: float) -> None:
        epoch.assign(e + 1)
        lr = opt.learning_rate
        with writer.as_default(step=e + 1):
            tf.summary.scalar("loss", loss)
            tf.summary.scalar("learning_rate", float(lr.numpy() if hasattr(lr, "numpy") else lr))
            improved = False
            if validation is not None:
                logits, y = fit.predict(clf, validation.batches(SCORE_BATCH))
                top1 = fit.topk_accuracy(logits, y, 1)
                tf.summary.scalar("validation_top1", top1)
                # Ties go to the later epoch: on a few validation images they are common,
                # and the later one has trained longer.
                improved = top1 >= float(best.numpy())
                if improved:
                    best.assign(top1)
        last = e + 1 == rcfg.epochs
        if improved:
            best_manager.save(checkpoint_number=e + 1)
        if improved or last or (e + 1) % rcfg.checkpoint_every == 0:
            manager.save(checkpoint_number=e + 1)

    bar = None
    if start < rcfg.epochs:
        left = rcfg.epochs - start
        bar = fit.progbar(rcfg.epochs * steps, f"training the recognizer: {left} epoch(s) to go")
    losses = fit.train_epochs(
        clf, train_images, opt, epochs=rcfg.epochs, batch_size=batch, seed=rcfg.seed,
        start_epoch=start, bar=bar, on_epoch=on_epoch,
    )  # fmt: skip
    writer.flush()
    kept = manager.latest_checkpoint
    if validation is not None and best_manager.latest_checkpoint:
        kept = best_manager.latest_checkpoint
        strict.restore(kept, workdir, **objects, epoch=epoch)
    logits, y = fit.predict(clf, fit.LabelledImages(source, "test").batches(SCORE_BATCH))
    results = {
        "dataset": source.name,
        "class_names": list(names),
        "encoder_workdir": encoder["workdir"],
        "encoder_step": step,
        "checkpoint": os.path.abspath(kept),
        "epoch": int(epoch.numpy()),
        "train_examples": train_images.count,
        "labels_per_class": rcfg.labels_per_class,
        "validation_examples": len(selection.validation),
        "validation_top1": float(best.numpy()) if validation is not None else None,
        "epoch_losses": [round(v, 5) for v in losses],
        "seconds": round(time.perf_counter() - started, 1),
        "test": fit.scores(logits, y, names),
    }
    with writer.as_default(step=rcfg.epochs):
        tf.summary.scalar("test_top1", results["test"]["top1"])
    writer.close()
    write_text_atomic(
        os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=2, sort_keys=True) + "\n"
    )
    return results


def summary_line(results: dict) -> str:
    t = results["test"]
    return (
        f"test top-1 {t['top1']:.3f} (top-5 {t['top5']:.3f}, majority label "
        f"{t['majority_top1']:.3f}) "
        f"on {t['examples']} images; per class: "
        + ", ".join(f"{k} {v:.3f}" for k, v in t["per_class_top1"].items())
    )


def read_results(workdir: str) -> dict | None:
    """A recognizer workdir's results.json, or None when it has none (yet)."""
    try:
        with open(os.path.join(workdir, RESULTS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
