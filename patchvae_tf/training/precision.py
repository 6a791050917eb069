"""Mixed precision: the Keras dtype policy the networks are built under, and loss scaling."""

from __future__ import annotations

import contextlib
import functools

import keras

# CPU features (Linux /proc/cpuinfo flags) with native bfloat16 arithmetic: AVX512_BF16
# (dot products, conversions) and AMX (tile matmuls). Elsewhere bfloat16 is emulated by
# conversions around float32 kernels, which is slower than float32 itself.
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux lists them; empty where /proc/cpuinfo is absent."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_kind(flags: frozenset | None = None) -> str:
    """A name for the CPU's vector units, for choosing precision and labelling benchmarks:
    "AMX", "AVX-512 with BF16", "AVX-512", "AVX2" or "other".
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 with BF16"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return "other"


def auto_policy(device_kind: str, compute_capability=None, flags: frozenset | None = None):
    """The policy --mixed_precision=auto picks for the device that trains, and why.

    bfloat16 where the hardware computes it natively (TPUs, GPUs of compute capability 8 or
    more, CPUs with AVX512_BF16 or AMX); float16 on older GPUs (tensor cores from 7.0, and
    loss scaling guards its range); float32 elsewhere.
    """
    if device_kind == "TPU":
        return "mixed_bfloat16", "TPU"
    if device_kind == "GPU":
        major = (compute_capability or (0, 0))[0]
        if major >= 8:
            return "mixed_bfloat16", f"GPU of compute capability {major}.x"
        return "mixed_float16", f"GPU of compute capability {major}.x (no bfloat16 units)"
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in _BF16_CPU_FLAGS):
        return "mixed_bfloat16", f"CPU with {cpu_kind(flags)}"
    return "none", f"CPU with {cpu_kind(flags)}, no native bfloat16"


def device_kind(strategy=None) -> tuple[str, object]:
    """("TPU" | "GPU" | "CPU", the first GPU's compute capability or None) of where the
    step runs.
    """
    import tensorflow as tf

    if strategy is not None and isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU", None
    if tf.config.list_logical_devices("TPU"):
        return "TPU", None
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU", details.get("compute_capability")
    return "CPU", None


def resolve(name: str, strategy=None) -> tuple[str, str]:
    """(policy, reason): name itself, or for "auto" the policy auto_policy picks here."""
    if name != "auto":
        return name, "as given"
    kind, capability = device_kind(strategy)
    return auto_policy(kind, capability)


@contextlib.contextmanager
def policy_scope(name: str):
    """Builds Keras layers under dtype policy name ("none" means float32), then restores the
    previous global policy, so other models in the process are unaffected.

    Layers keep the policy they were built with: compute in float16/bfloat16, variables in
    float32. The heads and the decoder's tanh cast to the variables' dtype (networks.py), so
    the latent math (pooling, KL terms, TFP sampling, temperature) and the loss stay in
    float32. "float64" builds everything in float64 (the parity harness).
    """
    previous, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy("float32" if name == "none" else name)
    if name == "float64":  # also the optimizers' own variables (the learning rate)
        keras.config.set_floatx("float64")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
        keras.config.set_floatx(floatx)


def build_model_in_policy(model_cfg, name: str):
    """models.build_model with its networks under policy name; the model's own call keeps
    its arguments in the variables' dtype (float32 under mixed precision), so the latent
    math and the TFP sampling run in it (each network casts its own inputs to its compute
    dtype).
    """
    from patchvae_tf.model import models

    with policy_scope(name):
        model = models.build_model(model_cfg)
    model.dtype_policy = model.dtype_policy.variable_dtype
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
