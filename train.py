"""Trains PatchVAE or a VAE baseline: python train.py --flagfile=configs/shapes.cfg."""

from patchvae_tf import commands

if __name__ == "__main__":
    commands.train_script()
