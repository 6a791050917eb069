"""Setting up an evaluation: the workdir's config and checkpoint, the data and the plan."""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf

from patchvae_tf import data
from patchvae_tf.config import Config, EvalConfig, load_config
from patchvae_tf.errors import UserError
from patchvae_tf.model import latents, models
from patchvae_tf.model.autoencoder import Autoencoder
from patchvae_tf.recognition.fit import progbar
from patchvae_tf.workdir import CONFIG_FILE, restore


@dataclasses.dataclass
class Setup:
    """What every section reads: the config, the data, the restored model and the plan."""

    cfg: Config  # the training config, with the data section the evaluation reads
    source: data.Source
    model: Autoencoder
    step: int
    modes: tuple[str, ...]
    skipped: dict[str, str]


def _data_config(cfg: Config, ecfg: EvalConfig) -> Config:
    image_size = cfg.model.image_size
    if ecfg.image_size and ecfg.image_size != image_size:
        raise UserError(
            f"--image_size={ecfg.image_size} does not match the model's image size {image_size} "
            f"(from {os.path.join(ecfg.workdir, CONFIG_FILE)})"
        )
    return cfg.replace(data=ecfg.labelled(cfg.data))


def restore_model(cfg: Config) -> tuple[Autoencoder, int]:
    """The model of cfg restored from its workdir's latest checkpoint, and that step."""
    model = models.build_model(cfg.model)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    if not restore(cfg, model, step=step):
        raise UserError(
            f"workdir {cfg.train.workdir!r} has no checkpoint; train a model there first "
            f"(python train.py --workdir={cfg.train.workdir})"
        )
    return model, int(step.numpy())


def _num_stages(model) -> int:
    return len(model.encoder.stages)


def _plan(ecfg: EvalConfig, cfg: Config, source: data.Source, model) -> tuple[tuple, dict]:
    """The sections to run; an explicit --mode that cannot run is a UserError, "all" skips it."""
    explicit = ecfg.mode != "all"
    reasons = {}
    workdir = ecfg.workdir
    for mode in ("probe", "finetune"):
        if not source.num_classes:
            reasons[mode] = f"dataset {source.name!r} has no labels; {mode} needs labelled images"
        elif source.num_classes < 2:
            reasons[mode] = (
                f"dataset {source.name!r} has {source.num_classes} class; {mode} needs labels of "
                "at least 2 classes"
            )
        elif not source.sizes.get("test"):
            reasons[mode] = f"dataset {source.name!r} has no test images to score {mode} on"
    if not isinstance(model, models.PatchVAE):
        reasons["parts"] = f"workdir {workdir!r} holds a {cfg.model.arch}, which has no parts"
    elif not source.has_masks:
        reasons["parts"] = (
            f"dataset {source.name!r} has no ground-truth part masks; part discovery needs "
            "--dataset=shapes"
        )
    elif not source.sizes.get("test"):
        reasons["parts"] = f"dataset {source.name!r} has no test images"
    modes = ecfg.modes()
    if source.unlabelled and {"probe", "finetune"} & set(modes):
        # Scoring unlabelled images would report 0 (or fail): stop, whatever the mode.
        raise UserError(source.unlabelled)
    if explicit and modes[0] in reasons:
        raise UserError(reasons[modes[0]])
    too_deep = [k for k in ecfg.freeze_stages if k > _num_stages(model)]
    if "finetune" in modes and too_deep:
        raise UserError(
            f"--freeze_stages={too_deep[0]} exceeds the {_num_stages(model)} stages of "
            f"the {cfg.model.encoder} encoder"
        )
    skipped = {m: r for m, r in reasons.items() if m in modes}
    return tuple(m for m in modes if m not in skipped), skipped


def setup(ecfg: EvalConfig) -> Setup:
    """Reads the workdir's config and checkpoint and the dataset; checks every input first."""
    if not os.path.isdir(ecfg.workdir):
        raise UserError(f"--workdir {ecfg.workdir!r} is not a directory")
    saved = load_config(os.path.join(ecfg.workdir, CONFIG_FILE))
    # The config records where it was trained; the workdir may have moved since.
    saved = saved.replace(train=dataclasses.replace(saved.train, workdir=ecfg.workdir))
    cfg = _data_config(saved, ecfg)
    keras.utils.set_random_seed(ecfg.seed)
    model, step = restore_model(cfg)
    source = data.get_source(cfg.data, cfg.model.image_size, cfg.train.seed)
    modes, skipped = _plan(ecfg, cfg, source, model)
    for mode, reason in skipped.items():
        print(f"skipping {mode}: {reason}")
    return Setup(cfg, source, model, step, modes, skipped)


def temperature(setup: Setup) -> tf.Tensor:
    """The relaxation temperature training had reached at the checkpoint's step, at which
    evaluation samples reconstructions: the authors' test() samples at their current one
    (0.138 at the end of the 11,700-step recipes), not at the minimum.
    """
    m = setup.cfg.model
    return latents.temperature(setup.step, m.tau_init, m.tau_min, m.anneal_rate, m.anneal_schedule)


def duration(seconds: float) -> str:
    """1 s (the least it says), 12 s, 4 min 10 s, 2 h 05 min."""
    seconds = max(1, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def batches(source: data.Source, split: str, limit: int, batch_size: int, title: str = ""):
    """Up to ``limit`` examples of a split, in order, as dicts of numpy arrays; with a title,
    under a progress bar of the images read.
    """
    seen = 0
    bar = progbar(min(limit, source.sizes.get(split) or limit), title) if title else None
    ds = data.input_dataset(source, split, batch_size, training=False)
    for batch in ds.take(-(-limit // batch_size)):
        batch = {k: v.numpy() for k, v in batch.items()}
        batch = {k: v[: limit - seen] for k, v in batch.items()}
        seen += len(batch["image"])
        yield batch
        if bar is not None:
            bar.update(seen)
