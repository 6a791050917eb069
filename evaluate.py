"""Evaluates a trained workdir: python evaluate.py --workdir=runs/shapes [--mode=all]."""

from patchvae_tf import commands

if __name__ == "__main__":
    commands.evaluate_script()
