"""Encoder inference: Keras, the exported SavedModel and ONNX Runtime (float32, int8)."""

from __future__ import annotations

import os
import time

import tensorflow as tf

from patchvae_tf import models
from patchvae_tf.config import Config, ExportConfig, validate_export
from patchvae_tf.workdir import CHECKPOINT_DIR, CONFIG_FILE


def export_artifacts(cfg: Config, root: str, calibration_images: int, parity_images: int):
    """Writes a checkpoint of a freshly built model of cfg, then runs the export stage on it
    (SavedModel, ONNX, int8 ONNX). Returns (model, export dir, export report).

    The weights are untrained: speed does not depend on their values.
    """
    from export import exporter

    workdir, export_dir = os.path.join(root, "workdir"), os.path.join(root, "export")
    os.makedirs(workdir)
    model = models.build_model(cfg.model, cfg.data.image_size)
    step = tf.Variable(1, dtype=tf.int64, name="step")
    checkpoint = tf.train.Checkpoint(model=model, step=step)
    tf.train.CheckpointManager(
        checkpoint, os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=1
    ).save(checkpoint_number=1)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(cfg.to_json())
    ecfg = validate_export(
        ExportConfig(
            workdir=workdir,
            export_dir=export_dir,
            quantize="int8",
            parity_images=parity_images,
            calibration_images=calibration_images,
        )
    )
    rep = exporter.export(ecfg)
    return model, export_dir, rep


def timings(fn, x, runs: int) -> list[float]:
    """Seconds of each of `runs` calls of fn(x), after two warm-up calls."""
    fn(x)
    fn(x)
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        out.append(time.perf_counter() - start)
    return out


def keras_fn(model, jit_compile: bool):
    """model.encode on 0..255 pixels, as the serving signature computes it, in a tf.function."""

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def encode(pixels):
        return model.encode(tf.clip_by_value(pixels, 0.0, 255.0) / 127.5 - 1.0, training=False)

    return lambda x: {k: v.numpy() for k, v in encode(tf.constant(x)).items()}


def saved_model_fn(path: str):
    from export import serving

    fn = tf.saved_model.load(path).signatures[serving.DEFAULT_SIGNATURE]
    return lambda x: {k: v.numpy() for k, v in fn(images=tf.constant(x)).items()}


def ort_session(path: str, threads: int, optimize: bool = True, spinning: bool = True):
    """An ONNX Runtime CPU session with the knobs that matter on a small CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    # Spinning threads answer the next small request sooner, but burn CPU that other
    # processes on a shared machine want.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_fn(session, iobinding: bool = False):
    """session.run on a batch, returning host arrays; with iobinding through an IOBinding
    kept per input shape, which skips run()'s per-call argument conversion (what a
    latency-bound server would use).
    """
    from export import serving

    names = [o.name for o in session.get_outputs()]
    if not iobinding:
        return lambda x: session.run(names, {serving.IMAGES: x})
    bindings = {}

    def run(x):
        binding = bindings.get(x.shape)
        if binding is None:
            binding = bindings[x.shape] = session.io_binding()
            for name in names:
                binding.bind_output(name, "cpu")
        binding.bind_cpu_input(serving.IMAGES, x)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    return run
