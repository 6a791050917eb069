"""Evaluates a trained workdir: python evaluate.py --workdir=runs/shapes [--mode=all]."""

import os

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf import commands  # noqa: E402
from patchvae_tf.config import cli  # noqa: E402

cli.define_eval()
main = commands.evaluate_main

if __name__ == "__main__":
    cli.run(main)
