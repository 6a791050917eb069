"""Parity with the authors' code: python -m parity --reference=PATH [--reference_setup]."""

import os

from parity import harness
from patchvae_tf.config import ParityConfig, cli

if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli.run(harness.command, ParityConfig)
