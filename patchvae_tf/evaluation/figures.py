"""The evaluation's figures: reconstructions, samples, occurrence maps, parts and curves."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from patchvae_tf.config import EvalConfig
from patchvae_tf.evaluation import drawing
from patchvae_tf.evaluation.setup import Setup, batches, temperature
from patchvae_tf.model import models
from patchvae_tf.workdir import LOG_DIR

_NUM_SHOWN = 8  # images in reconstructions.png and per row of samples.png
_NUM_MAPS = 4  # images in occurrence_maps.png
_CURVES = ("loss", "distortion", "rate_app", "rate_occ", "temperature", "learning_rate")


def read_scalars(logdir: str, tags=_CURVES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{tag: (steps, values)} of the tf.summary v2 scalars in a TensorBoard log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(logdir):
        return {}
    events = EventAccumulator(logdir, size_guidance={"tensors": 0})
    events.Reload()
    available = set(events.Tags().get("tensors", []))
    series = {}
    for tag in tags:
        if tag in available:
            points = sorted({e.step: e for e in events.Tensors(tag)}.items())  # last write wins
            steps = np.array([s for s, _ in points])
            values = np.array([float(tf.make_ndarray(e.tensor_proto)) for _, e in points])
            series[tag] = (steps, values)
    return series


def reconstruction_error(model, setup: Setup, ecfg: EvalConfig) -> dict:
    """Mean squared error per pixel of test reconstructions, on the [0, 1] pixel scale,
    beside the floor of drawing every image as the test images' mean image.
    """
    tau = temperature(setup)
    run = tf.function(
        lambda x: model(x, training=False, temperature=tau)["reconstruction"],
        reduce_retracing=True,
    )
    errors, images = [], []
    for batch in batches(setup.source, "test", ecfg.eval_examples, ecfg.batch_size):
        x = tf.constant(batch["image"])
        # Pixels in [-1, 1]: halving the difference puts the error on the [0, 1] scale.
        errors.append(np.mean(np.square((run(x).numpy() - batch["image"]) / 2.0), axis=(1, 2, 3)))
        images.append(batch["image"])
    images = np.concatenate(images)
    floor = np.mean(np.square((images - images.mean(axis=0)) / 2.0))
    return {"mse": float(np.concatenate(errors).mean()), "mean_image_mse": float(floor)}


def part_labels(part_discovery: dict | None, num_parts: int) -> list[str]:
    """A figure label per part: index, matched region and its AUROC, mean q_occ."""
    if not part_discovery:
        return [f"part {i}" for i in range(num_parts)]
    labels = []
    for p in part_discovery["parts"]:
        match = (
            f"{p['matched_region']} {p['matched_auroc']:.2f}"
            if p["matched_region"]
            else "unmatched"
        )
        state = "" if p["active"] else " off"
        labels.append(f"part {p['part']}\n{match}\nmean q {p['mean_q_occ']:.3f}{state}")
    return labels


def figures(model, setup: Setup, ecfg: EvalConfig, part_discovery=None) -> dict[str, np.ndarray]:
    """{name: image [H, W, 3] in [0, 1]} of every figure that applies to this model.

    Image tiles are upscaled (nearest) to at least drawing.MIN_TILE pixels; parts are
    labelled with part_discovery's matches when given.
    """
    source, cfg = setup.source, setup.cfg
    shown = next(batches(source, "test", _NUM_SHOWN, _NUM_SHOWN))["image"]
    out = {}
    recon = model(tf.constant(shown), training=False, temperature=temperature(setup))
    recon = recon["reconstruction"]
    out["reconstructions"] = drawing.pairs_figure(shown, recon)
    out["samples"] = drawing.tiles_figure(model.sample(2 * _NUM_SHOWN), cols=_NUM_SHOWN)
    if isinstance(model, models.PatchVAE):
        labels = part_labels(part_discovery, cfg.model.num_parts)
        maps = shown[:_NUM_MAPS]
        q = model.encode(tf.constant(maps))["occurrence"]
        out["occurrence_maps"] = drawing.occurrence_figure(maps, q, labels)
        gallery = drawing.PartGallery(cfg.model.num_parts, ecfg.gallery_size)
        encode = tf.function(lambda x: model.encode(x, training=False), reduce_retracing=True)
        for batch in batches(source, "test", ecfg.eval_examples, ecfg.batch_size):
            gallery.add(batch["image"], encode(tf.constant(batch["image"]))["occurrence"])
        out["parts"] = drawing.gallery_figure(gallery, cfg.model.scale, labels)
    curves = read_scalars(os.path.join(ecfg.workdir, LOG_DIR))
    if curves:
        out["training_curves"] = drawing.curves_image(curves)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}
