"""The model: networks, latents, losses, PatchVAE and the VAE baseline, and the deterministic
encoder as a Keras model.

Importing it registers every layer and model for Keras serialization, so
``keras.saving.load_model`` opens an exported ``encoder.keras`` after ``import patchvae_tf.model``.
"""

from patchvae_tf.model import backbone, keras_encoder  # noqa: F401  (registers every layer)
