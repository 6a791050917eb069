"""The images an export checks and calibrates on: a folder the user names, the training data,
or (for the checks only) images drawn from the model's own decoder.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from export import serving
from patchvae_tf import data
from patchvae_tf.data import python_source
from patchvae_tf.errors import UserError

SAMPLED = "images drawn from the model's own decoder"


def training_images(cfg, count: int) -> np.ndarray:
    """The first `count` training images [count, S, S, 3] in [-1, 1], in a fixed order."""
    source = data.get_source(cfg.data, cfg.model.image_size, cfg.train.seed)
    batch = next(iter(data.input_dataset(source, "train", count, training=False)), None)
    images = None if batch is None else batch["image"].numpy()
    if images is None or len(images) < min(count, 2):
        raise UserError(f"dataset {cfg.data.dataset!r} gave too few training images to check")
    return images


def folder_images(folder: str, count: int, image_size: int, flag: str, limits) -> np.ndarray:
    """Up to `count` JPEG / PNG images under folder (sorted paths, subfolders too), resized
    and centre-cropped as in training: [k, S, S, 3] in [-1, 1].
    """
    paths = sorted(
        os.path.join(d, f)
        for d, _, files in os.walk(folder)
        for f in files
        if f.lower().endswith(data.IMAGE_EXTENSIONS)
    )[:count]
    if len(paths) < min(count, 2):
        raise UserError(
            f"--{flag}={folder!r} holds {len(paths)} JPEG or PNG image(s); {min(count, 2)} or "
            "more are needed"
        )
    out = []
    for path in paths:
        try:
            image = data.decode_image(tf.io.read_file(path), limits, f"--{flag}")
        except tf.errors.OpError as e:
            reason = e.message.splitlines()[0] if e.message else type(e).__name__
            raise UserError(f"--{flag}: cannot read image {path!r} ({reason})") from None
        out.append(data.preprocess_image(image, image_size).numpy())
    return np.stack(out)


def sampled_images(model, count: int, seed: int) -> np.ndarray:
    """`count` images [count, S, S, 3] in [-1, 1] decoded from the prior, from ``seed``."""
    keras.utils.set_random_seed(seed)
    return np.clip(model.sample(count).numpy(), -1.0, 1.0)


def export_images(cfg, model_cfg, model) -> tuple[np.ndarray, np.ndarray, str, str]:
    """(parity images, calibration images, what each set is), both [k, S, S, 3] in [-1, 1].

    Parity: --check_images, else the first --parity_images training images, else (the data
    is not there: passed from Python, a folder or TFDS dataset absent here) images drawn
    from the model's decoder, which the report and the model card say. Calibration (with
    --quantize): --calibration_folder, else the training images after the parity ones; int8
    is refused without real images.
    """
    n, size = cfg.parity_images, model.image_size
    limits = serving.limits_of(cfg)
    calib = cfg.calibration_images if cfg.quantize else 0
    wanted = (0 if cfg.check_images else n) + (0 if cfg.calibration_folder else calib)
    training, missing = None, ""
    if wanted:
        dataset = model_cfg.data.dataset
        if python_source.is_python_data(dataset):
            missing = f"the model was trained on data passed from Python, {dataset!r}"
        else:
            try:
                training = training_images(model_cfg, wanted)
            except UserError as e:
                missing = str(e)
    if cfg.check_images:
        parity = folder_images(cfg.check_images, n, size, "check_images", limits)
        parity_from = f"{len(parity)} images of --check_images={cfg.check_images}"
    elif training is not None:
        parity, training = training[:n], training[n:]
        parity_from = f"the first {len(parity)} training images"
    else:
        parity = sampled_images(model, n, model_cfg.train.seed)
        parity_from = f"{n} {SAMPLED} (the training data is not available here: {missing})"
        print(
            f"export: the training data is not available ({missing}); checking on {n} {SAMPLED}"
            "; --check_images=FOLDER checks on real images"
        )
    calibration, calibration_from = np.zeros([0, size, size, 3], np.float32), ""
    if cfg.quantize and cfg.calibration_folder:
        flag = "calibration_folder"
        calibration = folder_images(cfg.calibration_folder, calib, size, flag, limits)
        calibration_from = f"{len(calibration)} images of --calibration_folder"
    elif cfg.quantize:
        if training is None or not len(training):
            missing = missing or f"{n} training images went to the checks, none were left"
            raise UserError(
                f"--quantize={cfg.quantize} calibrates on real images and the training data is "
                f"not available ({missing}); pass --calibration_folder=FOLDER"
            )
        calibration = training[:calib]
        calibration_from = f"{len(calibration)} training images"
    return parity, calibration, parity_from, calibration_from
