"""The VAE / beta-VAE baseline: one global Gaussian code instead of parts."""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf.model import latents, losses, networks, normalization
from patchvae_tf.model.autoencoder import Autoencoder
from patchvae_tf.model.fused import FusedBatchNorm


@keras.saving.register_keras_serializable(package="patchvae_tf")
class VAE(Autoencoder):
    """VAE / beta-VAE baseline, built as the authors' (the paper's baseline).

    phi(x) -> 1x1 conv to base_channels + BN + ReLU -> an h x w ("valid") conv to the mean
    and one to the log-variance of one global Gaussian code of size N*L. The decoder maps
    the code with an h x w transposed conv to an h x w x base_channels map + BN + LeakyReLU
    0.2, then the pyramid decoder G.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        c, init = self.base_channels, self.style["initialization"]
        bn = dict(
            momentum=self.style["batch_norm_momentum"], epsilon=self.style["batch_norm_epsilon"]
        )
        self.reduce = keras.Sequential(
            [
                networks.conv2d(c, 1, use_bias=False, initialization=init),
                FusedBatchNorm(**bn),
                keras.layers.ReLU(),
            ],
            name="reduce",
        )
        self.posterior_mean, self.posterior_logvar = (
            networks.conv2d(self.code_size, self.grid, initialization=init, name=name)
            for name in ("posterior_mean", "posterior_logvar")
        )
        self.expand = keras.Sequential(
            [
                networks.conv2d_transpose(c, self.grid, use_bias=False, initialization=init),
                FusedBatchNorm(**bn),
                networks.LeakyReLU(0.2),
            ],
            name="expand",
        )

    def _code(self, head, r):
        """[B, 1, 1, N*L] of a posterior head on the reduced map r -> [B, N*L] in the
        variables' dtype (float32 under mixed precision).
        """
        return tf.cast(tf.reshape(head(r), [-1, self.code_size]), self.variable_dtype)

    def _posterior(self, x, training):
        f, pooled = self.features(x, training)
        r = self.reduce(f, training=training)
        mean, logvar = self._code(self.posterior_mean, r), self._code(self.posterior_logvar, r)
        return pooled, mean, latents.variance(logvar)

    def encode(self, x, training=False):
        """X [B, H, W, 3] in [-1, 1] -> appearance [B, N*L] posterior means, features [B, D].

        The log-variance head is not run: the deterministic encoder has no use for it.
        """
        f, pooled = self.features(x, training)
        mean = self._code(self.posterior_mean, self.reduce(f, training=training))
        return {"appearance": mean, "features": pooled}

    def encoder_parts(self) -> dict:
        """The layers ``encode`` runs, by attribute name (the decoder is not one of them)."""
        return {
            "encoder": self.encoder,
            "reduce": self.reduce,
            "posterior_mean": self.posterior_mean,
        }

    def decode(self, z, training=False):
        """Z [B, N*L] -> the decoder's output [B, H, W, 3] in the model's space."""
        z_map = self.expand(tf.reshape(z, [-1, 1, 1, self.code_size]), training=training)
        return self.decoder(z_map, training=training)

    def call(self, x, training=False, temperature=None, seed=None):
        """As PatchVAE's; the seed goes whole to the appearance sample."""
        del temperature  # no discrete latent to relax
        _, mean, var = self._posterior(x, training)
        z = latents.sample_appearance(mean, var, seed)
        return self._outputs(self.decode(z, training), appearance_mean=mean, appearance_var=var)

    def loss_terms(self, x, outputs):
        distortion = self._distortion(x, outputs)
        r_app = losses.rate_app(outputs["appearance_mean"], outputs["appearance_var"])
        r_occ = tf.zeros_like(r_app)
        loss = losses.elbo_loss(distortion, r_app, r_occ, self.beta_app, 0.0)
        return {"loss": loss, "distortion": distortion, "rate_app": r_app, "rate_occ": r_occ}

    def sample(self, n: int):
        """N images [n, H, W, 3] in [-1, 1] decoded from z ~ N(0, I)."""
        decoded = self.decode(tf.random.normal([n, self.code_size]))
        return normalization.to_unit(decoded, self.input_space)
