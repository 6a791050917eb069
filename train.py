"""Trains PatchVAE or a VAE baseline: python train.py --flagfile=configs/shapes.cfg."""

from patchvae_tf import commands
from patchvae_tf.config import cli

cli.define_train()

if __name__ == "__main__":
    cli.run(commands.train_main)
