"""encoder.keras: the deterministic encoder as a Keras file, checked against the model."""

from __future__ import annotations

import os

import keras
import numpy as np

from export import layout, parity, report
from patchvae_tf.model.keras_encoder import Encoder


def write(model, stage, pixels: np.ndarray, keras_out: dict) -> dict:
    """Saves model's encoder as keras/encoder.keras in the staged export, reloads it with
    keras.saving.load_model alone and refuses the export (ParityError) unless it gives the
    model's outputs on the parity pixels [B, S, S, 3] in [0, 255]; returns its report part.
    """
    os.makedirs(stage.group(layout.KERAS_DIR))
    rel = os.path.join(layout.KERAS_DIR, layout.KERAS_FILE)
    Encoder.from_autoencoder(model).save(stage.group(rel))
    reloaded = keras.saving.load_model(stage.group(rel))
    out = {k: np.asarray(v) for k, v in reloaded(pixels, training=False).items()}
    diffs = parity.max_abs(out, keras_out)
    parity.check("encoder.keras vs Keras", diffs)
    return report.merge(
        {"parity": {"keras_file_vs_keras": diffs}},
        report.file_entry(stage, rel),
        {
            "keras": {
                "file": rel,
                "load": "import patchvae_tf.model, keras; keras.saving.load_model(path)",
                "input": f"float32 [batch, {model.image_size}, {model.image_size}, 3], 0..255",
                "outputs": {k: [None, *v.shape[1:]] for k, v in out.items()},
            }
        },
    )
