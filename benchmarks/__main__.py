"""Runs the benchmarks: python -m benchmarks --out=benchmarks/results/run.json [--quick]."""

from patchvae_tf import cli, config

config.define_bench_flags()


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]!r}; flags start with --")
    cfg = config.bench_from_flags()
    from benchmarks import runner  # imports TensorFlow: after the flags are known to be good

    runner.main(cfg)


if __name__ == "__main__":
    cli.run(main)
