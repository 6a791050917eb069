"""The deterministic encoder as a registered Keras model: what ``encoder.keras`` holds."""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf import pixels
from patchvae_tf.model import models, vae


@keras.saving.register_keras_serializable(package="patchvae_tf")
class Encoder(keras.Model):
    """Pixels [B, S, S, 3] in [0, 255] -> {"occurrence" [B, h, w, N], "appearance" [B, N, L],
    "features" [B, D]} (a VAE: "appearance" [B, N*L] and "features"), as the SavedModel
    serves them: occurrence probabilities, appearance means, pooled encoder features.

    ``autoencoder`` is the get_config of the PatchVAE or VAE whose encoder this is; only the
    layers its ``encode`` runs are tracked (and saved), so the decoder's weights stay out.
    Under a user's head, ``training=True`` updates the encoder's BatchNorm statistics as any
    Keras model's would (set ``trainable = False`` to keep them).
    """

    def __init__(self, autoencoder: dict, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(autoencoder, dict) or autoencoder.get("class") not in _ARCHS:
            raise ValueError(
                "`autoencoder` must be {'class': 'PatchVAE' | 'VAE', 'config': {...}}. "
                f"Received: autoencoder={autoencoder!r}"
            )
        self.autoencoder = autoencoder
        full = _ARCHS[autoencoder["class"]].from_config(autoencoder["config"])
        for name, layer in full.encoder_parts().items():
            setattr(self, name, layer)
        # A bound method is not tracked: the decoder (never built here) stays out of the file.
        self._encode = full.encode
        self.image_size = full.image_size

    @classmethod
    def from_autoencoder(cls, model: models.PatchVAE | vae.VAE, **kwargs) -> Encoder:
        """The encoder of a trained model, with a copy of its encoder's and heads' weights."""
        config = {"class": type(model).__name__, "config": model.get_config()}
        encoder = cls(config, **kwargs)
        encoder(tf.zeros([1, model.image_size, model.image_size, 3]))
        for name, layer in model.encoder_parts().items():
            for mine, theirs in zip(getattr(encoder, name).weights, layer.weights, strict=True):
                mine.assign(theirs)
        return encoder

    def call(self, images, training=False):
        # The same clip and scaling as the last step of source.preprocess_image.
        x = pixels.to_model(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0))
        return self._encode(x, training=training)

    def build(self, input_shape=None):
        size = self.image_size
        self._encode(tf.zeros([1, size, size, 3]), training=False)

    def get_config(self):
        return {**super().get_config(), "autoencoder": self.autoencoder}


_ARCHS = {"PatchVAE": models.PatchVAE, "VAE": vae.VAE}
