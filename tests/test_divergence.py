"""Training never ends "successfully" on non-finite values; absurd sizes are refused up front."""

import dataclasses
import os

import pytest
import tensorflow as tf
from conftest import tiny_config

from patchvae_tf.config import Config, ModelConfig, TrainConfig
from patchvae_tf.errors import UserError


@pytest.mark.parametrize(
    "build, needle",
    [
        (lambda: TrainConfig(learning_rate=float("inf")), "--learning_rate must be a finite"),
        (lambda: TrainConfig(learning_rate=float("nan")), "--learning_rate must be a finite"),
        (lambda: ModelConfig(beta_occ=float("nan")), "--beta_occ must be a finite number, got nan"),
        (lambda: ModelConfig(beta_app=float("inf")), "--beta_app must be a finite number, got inf"),
        (lambda: Config.from_dict({"model": {"tau_init": "inf"}}), "--tau_init must be a number"),
    ],
)
def test_infinite_and_nan_values_are_refused_at_the_config(build, needle):
    with pytest.raises(UserError, match=needle):
        build()


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    from patchvae_tf import training
    from patchvae_tf.model import models

    workdir = str(tmp_path / "w")
    cfg = tiny_config(workdir, train_steps=4, checkpoint_every=2, log_every=100)
    cfg = cfg.replace(
        data=dataclasses.replace(cfg.data, shapes_train_size=64, shapes_test_size=16),
        train=dataclasses.replace(cfg.train, batch_size=8),
    )
    training.train(cfg)  # four good steps: checkpoints 2 and 4
    ckpts = os.path.join(workdir, "checkpoints")
    assert tf.train.latest_checkpoint(ckpts).endswith("ckpt-4")
    # The loss goes NaN from the next step on (what --learning_rate=1e10 did to a long run:
    # here injected, so the step is known), and NaN gradients make the weights NaN.
    real = models.PatchVAE.loss_terms

    def nan_loss(self, images, outputs):
        terms = real(self, images, outputs)
        return {**terms, "loss": terms["loss"] * float("nan")}

    monkeypatch.setattr(models.PatchVAE, "loss_terms", nan_loss)
    with pytest.raises(UserError) as info:
        training.train(cfg.replace(train=dataclasses.replace(cfg.train, train_steps=8)))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("training stopped: the loss went non-finite at step 5 (step 5: ")
    assert "loss=nan" in message and "distortion=" in message and "ckpt-4" in message
    # No non-finite checkpoint: the latest is still the last good one, and it is finite.
    latest = tf.train.latest_checkpoint(ckpts)
    assert latest.endswith("ckpt-4"), latest
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if hasattr(value, "dtype") and value.dtype.kind == "f":
            assert tf.reduce_all(tf.math.is_finite(value)), name


@pytest.mark.parametrize(
    "model, batch",
    [({"num_parts": 100_000}, 32), ({"image_size": 4096}, 32), ({}, 100_000_000)],
)
def test_absurd_sizes_are_refused_before_anything_is_built(model, batch, tmp_path, monkeypatch):
    from patchvae_tf import training
    from patchvae_tf.data import pipeline

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the memory check")

    monkeypatch.setattr(pipeline, "get_source", no_data)
    cfg = tiny_config(str(tmp_path / "w"))
    cfg = cfg.replace(
        model=dataclasses.replace(cfg.model, **model),
        train=dataclasses.replace(cfg.train, batch_size=batch),
    )
    with pytest.raises(UserError, match=r"this run needs at least [\d.]+ GiB .* this machine has"):
        training.train(cfg)
    assert not (tmp_path / "w").exists()


def test_the_memory_estimate_is_a_lower_bound_that_grows_with_the_sizes():
    from patchvae_tf.training import budget

    small = budget.estimate(ModelConfig(), 128)
    # The default run's variables (with gradients and Adam's moments) are at least its heads'.
    heads = 9 * 128 * (2 * 16 * 6 + 16) * 4 * 4
    assert small["variables"] >= heads
    assert budget.estimate(ModelConfig(), 256)["activations"] == 2 * small["activations"]
    assert budget.estimate(ModelConfig(num_parts=32), 128)["variables"] > small["variables"]
    # The default recipes fit this host with room (a lower bound well under 24 GiB).
    recipe = ModelConfig(image_size=224, num_parts=64, appearance_dim=16)
    assert sum(budget.estimate(recipe, 256).values()) < 12 * 2**30
    assert budget.machine_bytes() > 2**30
