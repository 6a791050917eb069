"""Evaluates a trained workdir: python evaluate.py --workdir=runs/shapes [--mode=all]."""

import os

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf import cli  # noqa: E402

cli.define_eval()


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]!r}; flags start with --")
    ecfg = cli.eval_config()
    if ecfg.compare:
        from patchvae_tf import comparison

        path = comparison.write(comparison.compare(ecfg.compare), ecfg.compare_dir)
        print(f"wrote {path}")
        return
    from patchvae_tf import evaluation  # imports TensorFlow: after flags are known to be good

    print(evaluation.summary_line(evaluation.evaluate(ecfg)))


if __name__ == "__main__":
    cli.run(main)
