"""The model: networks, latents, losses, PatchVAE and the VAE baseline, and the deterministic
encoder as a Keras model.
"""
