"""Trains PatchVAE or a VAE baseline: python train.py --flagfile=configs/shapes.cfg."""

import os

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf import commands  # noqa: E402
from patchvae_tf.config import cli  # noqa: E402

cli.define_train()
main = commands.train_main

if __name__ == "__main__":
    cli.run(main)
