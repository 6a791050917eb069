"""Runs the benchmarks: python -m benchmarks --out=benchmarks/results/run.json [--quick]."""

import os

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf.config import cli  # noqa: E402

cli.define_bench()


def main():
    cfg = cli.bench_config()
    from benchmarks import runner  # imports TensorFlow: after the flags are known to be good

    runner.main(cfg)


if __name__ == "__main__":
    cli.run(main)
