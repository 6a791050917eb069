"""PatchVAE and the VAE / beta-VAE baseline as Keras subclassed models."""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf import latents, losses, networks
from patchvae_tf.config import ModelConfig


class _Autoencoder(keras.Model):
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(image_size, int) or image_size <= 0 or image_size % scale:
            raise ValueError(
                f"`image_size` must be a positive multiple of scale={scale}. "
                f"Received: image_size={image_size!r}"
            )
        self.image_size, self.encoder_name, self.scale = image_size, encoder, scale
        self.base_channels, self.num_parts, self.appearance_dim = (
            base_channels,
            num_parts,
            appearance_dim,
        )
        self.beta_app, self.edge_weighting, self.tau_min = beta_app, edge_weighting, tau_min
        self.grid = image_size // scale
        self.code_size = num_parts * appearance_dim
        self.encoder = networks.make_encoder(encoder, scale, base_channels)
        self.decoder = networks.PyramidDecoder(scale, base_channels, 3, name="decoder")

    def features(self, x, training=False):
        """phi(x) [B, h, w, D] and its global average [B, D] (the recognition features)."""
        f = self.encoder(x, training=training)
        return f, tf.reduce_mean(tf.cast(f, tf.float32), axis=[1, 2])

    def _distortion(self, x, x_hat):
        w = losses.edge_weights(x, self.scale) if self.edge_weighting else None
        return losses.distortion(x, x_hat, w)

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
        }


class PatchVAE(_Autoencoder):
    """PatchVAE: per part, where it occurs (relaxed Bernoulli) and what it looks like (Gaussian).

    ``encode`` is deterministic (q_occ, appearance means, features); ``call`` samples.
    """

    def __init__(
        self,
        occurrence_prior: float | None = None,
        categorical: bool = False,
        hard: bool = False,
        beta_occ: float = 10.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.occurrence_prior = occurrence_prior or 1.0 / self.num_parts
        self.categorical, self.hard, self.beta_occ = categorical, hard, beta_occ
        self.heads = networks.PatchHeads(
            self.num_parts, self.appearance_dim, self.occurrence_prior, name="heads"
        )

    def _posterior(self, x, training):
        f, pooled = self.features(x, training)
        mean, logvar, logits = self.heads(f, training=training)
        return pooled, mean, logvar, logits

    def encode(self, x, training=False):
        """X [B, H, W, 3] in [-1, 1] -> occurrence [B, h, w, N], appearance [B, N, L],
        features [B, D].
        """
        pooled, mean, logvar, logits = self._posterior(x, training)
        q = latents.occurrence_probs(logits, self.categorical)
        mu_app, _ = latents.pool_appearance(mean, logvar, q, self.num_parts, self.appearance_dim)
        return {"occurrence": q, "appearance": mu_app, "features": pooled}

    def decode(self, z_hat, training=False):
        """z_hat [B, h, w, N*L] -> x_hat [B, H, W, 3]."""
        return self.decoder(z_hat, training=training)

    def call(self, x, training=False, temperature=None):
        """Sampled reconstruction; returns the tensors the loss needs as a dict."""
        tau = self.tau_min if temperature is None else temperature
        _, mean, logvar, logits = self._posterior(x, training)
        q = latents.occurrence_probs(logits, self.categorical)
        z_occ = latents.sample_occurrence(logits, tau, categorical=self.categorical, hard=self.hard)
        mu_app, var_app = latents.pool_appearance(
            mean, logvar, q, self.num_parts, self.appearance_dim
        )
        z_app = latents.appearance_posterior(mu_app, var_app).sample()
        z_hat = latents.compose(z_app, z_occ)
        return {
            "reconstruction": self.decode(z_hat, training),
            "occurrence_logits": logits,
            "occurrence": q,
            "appearance_mean": mu_app,
            "appearance_var": var_app,
        }

    def loss_terms(self, x, outputs):
        """Per-image terms [B]: distortion, rate_app, rate_occ and loss."""
        distortion = self._distortion(x, outputs["reconstruction"])
        r_app = losses.rate_app(outputs["appearance_mean"], outputs["appearance_var"])
        logits = outputs["occurrence_logits"]
        if self.categorical:
            r_occ = losses.rate_occ_categorical(logits)
        else:
            r_occ = losses.rate_occ(logits, self.occurrence_prior)
        loss = losses.elbo_loss(distortion, r_app, r_occ, self.beta_app, self.beta_occ)
        return {"loss": loss, "distortion": distortion, "rate_app": r_app, "rate_occ": r_occ}

    def sample(self, n: int):
        """N images [n, H, W, 3] decoded from the prior."""
        z_hat = latents.sample_prior(
            n,
            self.grid,
            self.num_parts,
            self.appearance_dim,
            self.occurrence_prior,
            self.categorical,
        )
        return self.decode(z_hat)

    def get_config(self):
        return {
            **super().get_config(),
            "occurrence_prior": self.occurrence_prior,
            "categorical": self.categorical,
            "hard": self.hard,
            "beta_occ": self.beta_occ,
        }


class VAE(_Autoencoder):
    """VAE / beta-VAE baseline: one global Gaussian latent of size N*L from the same phi."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.posterior = keras.layers.Dense(2 * self.code_size, name="posterior")
        # Spread the code over the grid so the same decoder G serves both models.
        self.expand = keras.layers.Dense(self.grid * self.grid * self.code_size, name="expand")

    def _posterior(self, x, training):
        f, pooled = self.features(x, training)
        stats = tf.cast(self.posterior(self.flatten(f)), tf.float32)
        mean, logvar = tf.split(stats, 2, axis=-1)
        return pooled, mean, latents.variance(logvar)

    def encode(self, x, training=False):
        """X [B, H, W, 3] -> appearance [B, N*L] posterior means, features [B, D]."""
        pooled, mean, _ = self._posterior(x, training)
        return {"appearance": mean, "features": pooled}

    def decode(self, z, training=False):
        """Z [B, N*L] -> x_hat [B, H, W, 3]."""
        z_hat = tf.reshape(self.expand(z), [-1, self.grid, self.grid, self.code_size])
        return self.decoder(z_hat, training=training)

    def call(self, x, training=False, temperature=None):
        del temperature  # no discrete latent to relax
        _, mean, var = self._posterior(x, training)
        z = latents.appearance_posterior(mean, var).sample()
        return {
            "reconstruction": self.decode(z, training),
            "appearance_mean": mean,
            "appearance_var": var,
        }

    def loss_terms(self, x, outputs):
        distortion = self._distortion(x, outputs["reconstruction"])
        r_app = losses.rate_app(outputs["appearance_mean"], outputs["appearance_var"])
        r_occ = tf.zeros_like(r_app)
        loss = losses.elbo_loss(distortion, r_app, r_occ, self.beta_app, 0.0)
        return {"loss": loss, "distortion": distortion, "rate_app": r_app, "rate_occ": r_occ}

    def sample(self, n: int):
        return self.decode(tf.random.normal([n, self.code_size]))


def build_model(cfg: ModelConfig, image_size: int) -> _Autoencoder:
    """The model a config describes, with its variables created."""
    common = dict(
        image_size=image_size,
        encoder=cfg.encoder,
        scale=cfg.scale,
        base_channels=cfg.base_channels,
        num_parts=cfg.num_parts,
        appearance_dim=cfg.appearance_dim,
        beta_app=cfg.beta_app,
        edge_weighting=cfg.edge_weighting,
        tau_min=cfg.tau_min,
    )
    if cfg.arch == "patchvae":
        model = PatchVAE(
            occurrence_prior=cfg.prior,
            categorical=cfg.categorical,
            hard=cfg.hard,
            beta_occ=cfg.beta_occ,
            name="patchvae",
            **common,
        )
    elif cfg.arch == "vae":
        model = VAE(name="vae", **common)
    else:
        raise ValueError(f"`arch` must be 'patchvae' or 'vae'. Received: arch={cfg.arch!r}")
    model(tf.zeros([1, image_size, image_size, 3]))
    return model
