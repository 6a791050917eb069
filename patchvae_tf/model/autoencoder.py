"""What PatchVAE and the VAE baseline share: encoder phi, pyramid decoder G, the distortion
term and their Keras configuration.
"""

from __future__ import annotations

import copy

import keras
import tensorflow as tf

from patchvae_tf.config import ENCODERS, NORMALIZATIONS
from patchvae_tf.model import losses, networks, normalization


class Autoencoder(keras.Model):
    """What both models share: encoder phi, pyramid decoder G and the loss terms."""

    def __init__(
        self,
        image_size: int = 32,
        encoder: str = "resnet",
        scale: int = 8,
        base_channels: int = 64,
        num_parts: int = 16,
        appearance_dim: int = 6,
        beta_app: float = 1.0,
        edge_weighting: bool = False,
        tau_min: float = 0.1,
        input_space: str = "unit",
        initialization: str = "reference",
        batch_norm_momentum: float = 0.9,
        batch_norm_epsilon: float = 1e-5,
        decoder_batch_norm_updates: int = 1,
        encoder_preprocessing: str = "",
        backbone=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if decoder_batch_norm_updates not in (1, 2):
            raise ValueError(
                "`decoder_batch_norm_updates` must be 1 or 2. "
                f"Received: decoder_batch_norm_updates={decoder_batch_norm_updates!r}"
            )
        if not isinstance(image_size, int) or image_size <= 0 or image_size % scale:
            raise ValueError(
                f"`image_size` must be a positive multiple of scale={scale}. "
                f"Received: image_size={image_size!r}"
            )
        if input_space not in NORMALIZATIONS:
            raise ValueError(
                f"`input_space` must be one of {NORMALIZATIONS}. "
                f"Received: input_space={input_space!r}"
            )
        self.input_space = input_space
        self.style = {
            "initialization": initialization,
            "batch_norm_momentum": batch_norm_momentum,
            "batch_norm_epsilon": batch_norm_epsilon,
        }
        self.image_size, self.encoder_name, self.scale = image_size, encoder, scale
        self.base_channels, self.num_parts, self.appearance_dim = (
            base_channels,
            num_parts,
            appearance_dim,
        )
        self.beta_app, self.edge_weighting, self.tau_min = beta_app, edge_weighting, tau_min
        self.grid = image_size // scale
        self.code_size = num_parts * appearance_dim
        self.encoder_preprocessing = encoder_preprocessing
        if encoder in ENCODERS:
            self.encoder = networks.make_encoder(encoder, scale, base_channels, **self.style)
        else:
            self.encoder = _backbone(encoder, encoder_preprocessing, backbone, image_size, scale)
        # Two updates from the same batch statistics are one with momentum squared:
        # m (m r + (1 - m) s) + (1 - m) s = m^2 r + (1 - m^2) s.
        self.decoder_batch_norm_updates = decoder_batch_norm_updates
        decoder_style = self.style | {
            "batch_norm_momentum": batch_norm_momentum**decoder_batch_norm_updates
        }
        self.decoder = networks.PyramidDecoder(
            scale, base_channels, 3, name="decoder", **decoder_style
        )

    def features(self, x, training=False):
        """X [B, H, W, 3] in [-1, 1] -> phi(x) [B, h, w, D] and its global average [B, D]
        (the recognition features). The input is normalised into the model's space first.
        """
        # A backbone with its own preprocessing takes pixels, and preprocesses them itself.
        pixels = getattr(self.encoder, "takes_pixels", False)
        f = self.encoder(
            x if pixels else normalization.normalize(x, self.input_space), training=training
        )
        return f, tf.reduce_mean(tf.cast(f, self.variable_dtype), axis=[1, 2])

    def _outputs(self, decoded, **latent):
        """The decoder's output [B, H, W, 3] in the model's space (the loss compares it with
        the normalised input; tanh cannot reach normalised values outside [-1, 1], as in the
        authors' code) and the same as [-1, 1] pixels for display.
        """
        pixels = normalization.to_unit(decoded, self.input_space)
        return {"decoded": decoded, "reconstruction": pixels, **latent}

    def _distortion(self, x, outputs):
        # The images in the model's dtype (float64 in the parity harness), as call() has them.
        x = tf.cast(x, outputs["decoded"].dtype)
        target = normalization.normalize(x, self.input_space)
        w = losses.edge_weights(target, self.scale) if self.edge_weighting else None
        return losses.distortion(target, outputs["decoded"], w)

    def get_config(self):
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "encoder": self.encoder_name,
            "scale": self.scale,
            "base_channels": self.base_channels,
            "num_parts": self.num_parts,
            "appearance_dim": self.appearance_dim,
            "beta_app": self.beta_app,
            "edge_weighting": self.edge_weighting,
            "tau_min": self.tau_min,
            "input_space": self.input_space,
            "decoder_batch_norm_updates": self.decoder_batch_norm_updates,
            **self.style,
            # A custom encoder travels with the model (encoder.keras loads without the user's
            # code when its network is made of Keras's own layers).
            **(
                {
                    "encoder_preprocessing": self.encoder_preprocessing,
                    "backbone": keras.saving.serialize_keras_object(self.encoder),
                }
                if self.encoder_name not in ENCODERS
                else {}
            ),
        }


def _backbone(encoder: str, preprocessing: str, backbone, image_size: int, scale: int):
    """The custom encoder (model/backbone.py): ``backbone`` (a Backbone, or its Keras
    serialization from get_config) or the one ``encoder`` names; its map must be 1/scale.
    """
    from patchvae_tf.model import backbone as custom

    if isinstance(backbone, dict):
        # A copy: Keras's deserialization empties the nested configs it reads.
        layer = keras.saving.deserialize_keras_object(copy.deepcopy(backbone))
    elif isinstance(backbone, custom.Backbone):
        layer = backbone
    else:
        layer = custom.build(encoder, preprocessing)
    got = layer.feature_scale(image_size)
    if got != scale:
        raise ValueError(
            f"`scale` must be what the encoder downsamples, {got}. Received: scale={scale!r}"
        )
    return layer
