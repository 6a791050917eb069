"""The train, evaluate and train_classifier commands, for the scripts and the installed
console scripts.
"""

from __future__ import annotations

from patchvae_tf.config import cli


def train_main() -> None:
    """Trains PatchVAE or a VAE baseline from the parsed flags."""
    cfg = cli.train_config()
    from patchvae_tf import training  # imports TensorFlow: after flags are known to be good

    training.train(cfg)


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


def train_classifier_main() -> None:
    """Trains (or resumes) a recognizer on a trained encoder from the parsed flags."""
    rcfg = cli.recognizer_config()
    from patchvae_tf.recognition import recognizer  # imports TensorFlow: flags are good

    print(recognizer.summary_line(recognizer.train(rcfg)))


def train() -> None:
    """Console script patchvae-train: python train.py's flags and behaviour."""
    cli.define_train()
    cli.run(train_main)


def evaluate() -> None:
    """Console script patchvae-evaluate: python evaluate.py's flags and behaviour."""
    cli.define_eval()
    cli.run(evaluate_main)


def train_classifier() -> None:
    """Console script patchvae-train-classifier: python train_classifier.py's flags."""
    cli.define_recognizer()
    cli.run(train_classifier_main)
