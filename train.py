"""Trains PatchVAE or a VAE baseline: python train.py --flagfile=configs/shapes.cfg."""

import os

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf import cli  # noqa: E402

cli.define_train()


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]!r}; flags start with --")
    cfg = cli.train_config()
    from patchvae_tf import training  # imports TensorFlow: after flags are known to be good

    training.train(cfg)


if __name__ == "__main__":
    cli.run(main)
