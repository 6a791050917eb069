"""Runs the benchmarks: python -m benchmarks --out=benchmarks/results/run.json [--quick]."""

from patchvae_tf.config import cli

cli.define_bench()


def main():
    cfg = cli.bench_config()
    from benchmarks import runner  # imports TensorFlow: after the flags are known to be good

    runner.main(cfg)


if __name__ == "__main__":
    cli.run(main)
