"""Evaluates a trained workdir: python evaluate.py --workdir=runs/shapes [--mode=all]."""

from patchvae_tf import commands
from patchvae_tf.config import cli

cli.define_eval()

if __name__ == "__main__":
    cli.run(commands.evaluate_main)
