"""The train and evaluate commands: train.py, evaluate.py and the installed console scripts."""

from __future__ import annotations

from patchvae_tf.config import cli


def train_main() -> None:
    """Trains PatchVAE or a VAE baseline from the parsed flags."""
    cfg = cli.train_config()
    from patchvae_tf import training  # imports TensorFlow: after flags are known to be good
    from patchvae_tf.model import backbone

    # --encoder=module:function: imported now, and --scale follows its feature map.
    training.train(cfg.replace(model=backbone.matched(cfg.model)))


def evaluate_main() -> None:
    """Evaluates a trained workdir (or compares evaluated ones) from the parsed flags."""
    ecfg = cli.eval_config()
    if ecfg.compare:
        from patchvae_tf.evaluation import comparison

        path = comparison.write(comparison.compare(ecfg.compare), ecfg.compare_dir)
        print(f"wrote {path}")
        return
    from patchvae_tf import evaluation  # imports TensorFlow: after flags are known to be good

    print(evaluation.summary_line(evaluation.evaluate(ecfg)))


def train() -> None:
    """Console script patchvae-train: python train.py's flags and behaviour."""
    cli.define_train()
    cli.run(train_main)


def evaluate() -> None:
    """Console script patchvae-evaluate: python evaluate.py's flags and behaviour."""
    cli.define_eval()
    cli.run(evaluate_main)
