"""The train and evaluate commands: train.py, evaluate.py and the installed console scripts."""

from __future__ import annotations

from patchvae_tf.config import Config, EvalConfig, cli


def train(cfg: Config) -> None:
    """Trains PatchVAE or a VAE baseline."""
    from patchvae_tf import training  # imports TensorFlow: after flags are known to be good
    from patchvae_tf.model import backbone

    # The strategy first (a multi-worker one must precede every other TensorFlow op); then
    # --encoder=module:function is imported, and --scale follows its feature map.
    strategy = training.create_strategy(cfg)
    training.train(cfg.replace(model=backbone.matched(cfg.model)), strategy=strategy)


def evaluate(ecfg: EvalConfig) -> None:
    """Evaluates a trained workdir, or compares evaluated ones."""
    if ecfg.compare:
        from patchvae_tf.evaluation import comparison

        path = comparison.write(comparison.compare(ecfg.compare), ecfg.compare_dir)
        print(f"wrote {path}")
        return
    from patchvae_tf import evaluation  # imports TensorFlow: after flags are known to be good

    print(evaluation.summary_line(evaluation.evaluate(ecfg)))


def train_script() -> None:
    """Console script patchvae-train: python train.py's flags and behaviour."""
    cli.run(train, Config)


def evaluate_script() -> None:
    """Console script patchvae-evaluate: python evaluate.py's flags and behaviour."""
    cli.run(evaluate, EvalConfig)
