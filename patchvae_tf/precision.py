"""Mixed precision: the Keras dtype policy the networks are built under, and loss scaling."""

from __future__ import annotations

import contextlib

import keras


@contextlib.contextmanager
def policy_scope(name: str):
    """Builds Keras layers under dtype policy name ("none" means float32), then restores the
    previous global policy, so other models in the process are unaffected.

    Layers keep the policy they were built with: compute in float16/bfloat16, variables in
    float32. The heads and the decoder's tanh cast to float32 (networks.py), so the latent
    math (pooling, KL terms, TFP sampling, temperature) and the loss stay in float32.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if name == "none" else name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_model(model_cfg, image_size: int, name: str, fused: bool = True):
    """models.build_model with its networks under policy name; the model's own call keeps
    float32 arguments, so the temperature reaches the TFP sampling in float32 (each network
    casts its own inputs to its compute dtype).
    """
    from patchvae_tf import models

    with policy_scope(name):
        model = models.build_model(model_cfg, image_size, fused)
    model.dtype_policy = "float32"
    return model


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, name: str):
    """float16 needs dynamic loss scaling against gradient underflow; bfloat16 has float32's
    exponent range and does not.
    """
    if name == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def inner_optimizer(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer whose state is checkpointed: the same with or without loss scaling, so
    a run can resume under another --mixed_precision (the loss scale restarts).
    """
    return getattr(optimizer, "inner_optimizer", optimizer)
