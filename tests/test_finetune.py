"""evaluate.py's finetuning: the authors' classifier, its heads, schedule and frozen stages."""

import os

import numpy as np
import pytest
from conftest import EVAL_FAST, copy_workdir

from patchvae_tf.config import EvalConfig
from patchvae_tf.errors import UserError


@pytest.mark.slow
def test_finetuning_learns(trained, tmp_path):
    """The authors' protocol on shapes, nothing frozen: the training loss falls epoch by epoch
    and the classifier beats chance (1/3) by a clear margin.
    """
    from patchvae_tf import evaluation

    cfg, _ = trained
    workdir = copy_workdir(cfg, tmp_path)
    settings = {
        **EVAL_FAST,
        "freeze_stages": (0,),
        "finetune_epochs": 6,
        "finetune_batch_size": 64,
        "finetune_lr_step_epochs": 4,
        # The protocol's 0.1 with momentum 0.9 makes the epoch losses of this tiny problem
        # jump; a smaller rate shows the same learning without the noise.
        "finetune_learning_rate": 0.02,
    }
    report = evaluation.evaluate(EvalConfig(workdir=workdir, mode="finetune", **settings))
    run = report["finetune"]["runs"][0]
    losses = run["epoch_losses"]
    assert run["frozen_stages"] == 0 and len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses
    assert run["top1"] > 1 / 3 + 0.25, run
    markdown = open(os.path.join(workdir, "eval", "report.md")).read()
    assert "| 0 | " in markdown and "random-init top-1" in markdown


@pytest.mark.parametrize("head", ["flatten", "pool"])
def test_classifier_head_reads_flattened_or_pooled_features(trained, head):
    """--classifier_head: the first dense layer reads phi(x) flattened (h * w * D inputs) or
    averaged over its grid (D inputs, their resnet18 classifier); the logits are that
    input through dense 512, ReLU and dense classes.
    """
    import tensorflow as tf

    from patchvae_tf.evaluation.finetune import classifier
    from patchvae_tf.model import models

    cfg, _ = trained
    model = models.build_model(cfg.model)
    clf = classifier(model, EvalConfig(classifier_head=head), num_classes=5, frozen=0)
    x = tf.random.stateless_uniform([3, 32, 32, 3], seed=[1, 2], minval=-1.0, maxval=1.0)
    f = model.features(x, training=False)[0].numpy()
    h = f.mean(axis=(1, 2)) if head == "pool" else f.reshape(3, -1)
    dense1, dense2 = (layer for layer in clf.head.layers if hasattr(layer, "kernel"))
    assert dense1.kernel.shape[0] == h.shape[1]
    hidden = np.maximum(h @ dense1.kernel.numpy() + dense1.bias.numpy(), 0.0)
    expected = hidden @ dense2.kernel.numpy() + dense2.bias.numpy()
    np.testing.assert_allclose(clf.logits(x, False).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_classifier_head_choices_are_checked():
    with pytest.raises(UserError, match="classifier_head.*'mean'"):
        EvalConfig(classifier_head="mean")


def test_sgd_schedule_divides_by_ten_every_step_epochs():
    import keras

    from patchvae_tf.recognition import fit

    lr = fit.schedule(0.1, epochs=90, step_epochs=30, steps_per_epoch=10)
    assert isinstance(lr, keras.optimizers.schedules.PiecewiseConstantDecay)
    values = [float(lr(s)) for s in (0, 299, 300, 599, 600, 899)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    assert fit.schedule(0.1, epochs=30, step_epochs=30, steps_per_epoch=5) == 0.1


def test_finetuning_trains_every_conv_after_the_frozen_stages_and_no_batch_norm_scale():
    import tensorflow as tf

    from patchvae_tf.model import networks
    from patchvae_tf.recognition import trainable

    encoder = networks.make_encoder("resnet", 8)
    encoder(tf.zeros([1, 32, 32, 3]))
    # ResNet-18 to 1/8: the stem's conv, then two blocks of two convs, the second stage's
    # first block with its 1x1 projection.
    counts = [len(trainable(encoder.stages, k)) for k in range(3)]
    assert counts == [1 + 4 + 5, 4 + 5, 5]
    names = [v.path for v in trainable(encoder.stages, 0)]
    assert all(n.endswith("/kernel") for n in names), names
