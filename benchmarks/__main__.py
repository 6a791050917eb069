"""Runs the benchmarks: python -m benchmarks --out=benchmarks/results/run.json [--quick]."""

from patchvae_tf.config import BenchConfig, cli
from patchvae_tf.config.checks import validate_bench


def main(cfg: BenchConfig) -> None:
    validate_bench(cfg)
    from benchmarks import runner  # imports TensorFlow: after the flags are known to be good

    runner.main(cfg)


if __name__ == "__main__":
    cli.run(main, BenchConfig)
