"""PatchVAE as a Keras subclassed model, and the model (PatchVAE or the VAE baseline) a
config describes.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from patchvae_tf.config import HARD_CATEGORICAL, ModelConfig
from patchvae_tf.model import latents, losses, networks, normalization
from patchvae_tf.model.autoencoder import Autoencoder
from patchvae_tf.model.vae import VAE


@keras.saving.register_keras_serializable(package="patchvae_tf")
class PatchVAE(Autoencoder):
    """PatchVAE: per part, where it occurs (relaxed Bernoulli) and what it looks like (Gaussian).

    ``encode`` is deterministic (q_occ, appearance means, features); ``call`` samples.
    """

    def __init__(
        self,
        occurrence_prior: float | None = None,
        categorical: bool = False,
        hard: bool = False,
        beta_occ: float = 10.0,
        hard_categorical: str = "one_hot",
        occurrence_rate_epsilon: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if hard_categorical not in HARD_CATEGORICAL:
            raise ValueError(
                f"`hard_categorical` must be one of {HARD_CATEGORICAL}. "
                f"Received: hard_categorical={hard_categorical!r}"
            )
        if not occurrence_rate_epsilon >= 0.0:
            raise ValueError(
                "`occurrence_rate_epsilon` must be >= 0. "
                f"Received: occurrence_rate_epsilon={occurrence_rate_epsilon!r}"
            )
        self.occurrence_prior = occurrence_prior or 1.0 / self.num_parts
        self.categorical, self.hard, self.beta_occ = categorical, hard, beta_occ
        self.hard_categorical = hard_categorical
        self.occurrence_rate_epsilon = occurrence_rate_epsilon
        self.heads = networks.PatchHeads(
            self.num_parts, self.appearance_dim, self.occurrence_prior, name="heads", **self.style
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

    def encoder_parts(self) -> dict:
        """The layers ``encode`` runs, by attribute name (the decoder is not one of them)."""
        return {"encoder": self.encoder, "heads": self.heads}

    def decode(self, z_hat, training=False):
        """z_hat [B, h, w, N*L] -> x_hat [B, H, W, 3]."""
        return self.decoder(z_hat, training=training)

    def call(self, x, training=False, temperature=None, seed=None):
        """Sampled reconstruction; returns the tensors the loss needs as a dict.

        seed: None (stateful sampling) or a stateless seed [2], split into one seed for the
        occurrence sample and one for the appearance sample (latents.sample_occurrence and
        sample_appearance say which draws each makes from it).
        """
        tau = self.tau_min if temperature is None else temperature
        seeds = (None, None) if seed is None else tf.random.experimental.stateless_split(seed, 2)
        _, mean, logvar, logits = self._posterior(x, training)
        q = latents.occurrence_probs(logits, self.categorical)
        z_occ = latents.sample_occurrence(
            logits,
            tau,
            categorical=self.categorical,
            hard=self.hard,
            hard_categorical=self.hard_categorical,
            seed=seeds[0],
        )
        mu_app, var_app = latents.pool_appearance(
            mean, logvar, q, self.num_parts, self.appearance_dim
        )
        z_app = latents.sample_appearance(mu_app, var_app, seeds[1])
        z_hat = latents.compose(z_app, z_occ)
        return self._outputs(
            self.decode(z_hat, training),
            occurrence_logits=logits,
            occurrence=q,
            appearance_mean=mu_app,
            appearance_var=var_app,
        )

    def loss_terms(self, x, outputs):
        """Per-image terms [B]: distortion, rate_app, rate_occ and loss."""
        distortion = self._distortion(x, outputs)
        r_app = losses.rate_app(outputs["appearance_mean"], outputs["appearance_var"])
        logits = outputs["occurrence_logits"]
        rate = losses.rate_occ_categorical if self.categorical else losses.rate_occ
        r_occ = rate(logits, self.occurrence_prior, self.occurrence_rate_epsilon)
        loss = losses.elbo_loss(distortion, r_app, r_occ, self.beta_app, self.beta_occ)
        return {"loss": loss, "distortion": distortion, "rate_app": r_app, "rate_occ": r_occ}

    def sample(self, n: int):
        """N images [n, H, W, 3] in [-1, 1] decoded from the prior."""
        z_hat = latents.sample_prior(
            n, self.grid, self.num_parts, self.appearance_dim, self.occurrence_prior
        )
        return normalization.to_unit(self.decode(z_hat), self.input_space)

    def get_config(self):
        return {
            **super().get_config(),
            "occurrence_prior": self.occurrence_prior,
            "categorical": self.categorical,
            "hard": self.hard,
            "beta_occ": self.beta_occ,
            "hard_categorical": self.hard_categorical,
            "occurrence_rate_epsilon": self.occurrence_rate_epsilon,
        }


# ModelConfig fields that both models take under the same name.
_SHARED_FIELDS = (
    "encoder",
    "image_size",
    "scale",
    "base_channels",
    "num_parts",
    "appearance_dim",
    "beta_app",
    "edge_weighting",
    "tau_min",
    "initialization",
    "batch_norm_momentum",
    "batch_norm_epsilon",
)


def build_model(cfg: ModelConfig) -> Autoencoder:
    """The model a config describes, with its variables created."""
    common = {name: getattr(cfg, name) for name in _SHARED_FIELDS} | dict(
        input_space=cfg.normalization
    )
    if cfg.custom_encoder:
        common["encoder_preprocessing"] = cfg.encoder_preprocessing
    if cfg.arch == "patchvae":
        model = PatchVAE(
            occurrence_prior=cfg.prior,
            # Only their PatchyVAE decodes twice per step; their VAE decodes once.
            decoder_batch_norm_updates=cfg.decoder_batch_norm_updates,
            categorical=cfg.categorical,
            hard=cfg.hard,
            beta_occ=cfg.beta_occ,
            hard_categorical=cfg.hard_categorical,
            occurrence_rate_epsilon=cfg.occurrence_rate_epsilon,
            name="patchvae",
            **common,
        )
    elif cfg.arch == "vae":
        model = VAE(name="vae", **common)
    else:
        raise ValueError(f"`arch` must be 'patchvae' or 'vae'. Received: arch={cfg.arch!r}")
    model(tf.zeros([1, cfg.image_size, cfg.image_size, 3], model.compute_dtype))
    return model
