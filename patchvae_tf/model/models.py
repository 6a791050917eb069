"""PatchVAE and the VAE / beta-VAE baseline as Keras subclassed models."""

from __future__ import annotations

import copy

import keras
import tensorflow as tf

from patchvae_tf.config import ENCODERS, HARD_CATEGORICAL, NORMALIZATIONS, ModelConfig
from patchvae_tf.model import latents, losses, networks, normalization
from patchvae_tf.model.fused import FusedBatchNorm


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
