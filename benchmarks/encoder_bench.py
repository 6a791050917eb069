"""Encoder inference: Keras, the exported SavedModel and ONNX Runtime (float32, int8), timed."""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from benchmarks import hardware, paired
from benchmarks.progress import log, ratio_text
from benchmarks.recipes import recipe_config
from patchvae_tf.config import Config, ExportConfig
from patchvae_tf.model import models
from patchvae_tf.pixels import to_model
from patchvae_tf.workdir import CHECKPOINT_DIR, CONFIG_FILE


def export_artifacts(cfg: Config, root: str, calibration_images: int, parity_images: int):
    """Writes a checkpoint of a freshly built model of cfg, then runs the export stage on it
    (SavedModel, ONNX and LiteRT, each with int8). Returns (model, export dir, export report).

    The weights are untrained: speed does not depend on their values.
    """
    from export import exporter

    workdir, export_dir = os.path.join(root, "workdir"), os.path.join(root, "export")
    os.makedirs(workdir)
    model = models.build_model(cfg.model)
    step = tf.Variable(1, dtype=tf.int64, name="step")
    checkpoint = tf.train.Checkpoint(model=model, step=step)
    tf.train.CheckpointManager(
        checkpoint, os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=1
    ).save(checkpoint_number=1)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(cfg.to_json())
    ecfg = ExportConfig(
        workdir=workdir,
        export_dir=export_dir,
        formats=("saved_model", "onnx", "litert"),
        quantize="int8",
        # Timed whatever the int8 gate says of it; its agreement is in the report.
        force_int8=True,
        parity_images=parity_images,
        calibration_images=calibration_images,
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
        return model.encode(to_model(tf.clip_by_value(pixels, 0.0, 255.0)), training=False)

    return lambda x: {k: v.numpy() for k, v in encode(tf.constant(x)).items()}


def saved_model_fn(path: str, signature: str = "serving_default"):
    fn = tf.saved_model.load(path).signatures[signature]
    return lambda x: {k: v.numpy() for k, v in fn(images=tf.constant(x)).items()}


def litert_fn(path: str, threads: int = 2):
    """The LiteRT model through ai_edge_litert's interpreter (XNNPACK on, as by default)."""
    from export import litert_export

    return litert_export.runner(litert_export.interpreter(path, threads))


def openvino_fn(path: str):
    """OpenVINO's CPU plugin on the ONNX file, float32 kept (docs/serving.md), latency hint."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(path),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    return lambda x: request.infer({"images": x})


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def ort_session(
    path: str, threads: int, optimize: bool = True, spinning: bool = True, profile: str = ""
):
    """An ONNX Runtime CPU session with the knobs that matter on a small CPU; with profile,
    ONNX Runtime's own per-node profile goes to a JSON file starting with that prefix.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
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


def section(bench) -> dict:
    """The encoder section of bench (a runner.Run): each runtime and setting at batch 1 and at
    the encoder batch, in windows interleaved with the reference's.
    """
    s = bench.sizes
    size = s.recipes[0][1]
    cfg = recipe_config(size, s.encoder_batch, "float32", bench.cfg.seed)
    rng = np.random.default_rng(bench.cfg.seed)
    batch = rng.uniform(0, 255, (s.encoder_batch, size, size, 3)).astype(np.float32)
    one = batch[:1]
    if bench.peer:
        bench.peer.setup("encoder_setup", f"encoder_{size}", size, batches=[1, s.encoder_batch])
    results = {}
    figures = []
    with tempfile.TemporaryDirectory() as root:
        log("encoder: exporting SavedModel, ONNX and LiteRT (float32 and int8)")
        model, export_dir, rep = export_artifacts(cfg, root, s.calibration_images, s.parity_images)
        sm = os.path.join(export_dir, "saved_model", str(rep["version"]))
        onnx_dir = os.path.join(export_dir, "onnx")
        litert_dir = os.path.join(export_dir, "litert")
        for runtime, knobs, make in _runtimes(model, sm, onnx_dir, litert_dir, bench.cfg.quick):
            fn = make()
            fn(one), fn(one), fn(batch), fn(batch)  # warm-up

            def ours(x, calls, fn=fn):
                return lambda: timings(fn, x, calls)

            fig = {"runtime": runtime, "settings": knobs, "batch": s.encoder_batch}
            for label, x, b, calls, per_call in (
                ("batch1_ms", one, 1, s.calls_batch1, lambda t: statistics.median(t) * 1e3),
                (
                    "batch_images_per_second",
                    batch,
                    s.encoder_batch,
                    s.calls_batch,
                    lambda t: s.encoder_batch / statistics.median(t),
                ),
            ):
                # The reference's median ms per call, per window and thread count.
                by_threads = fig[f"reference_ms_by_threads_{label}"] = []
                if bench.peer:
                    a, t = paired.interleave(
                        ours(x, calls),
                        bench.peer.encode(size, b, calls, by_threads),
                        s.encoder_windows,
                    )
                    theirs_w = [per_call(w) for w in t]
                else:
                    a = [ours(x, calls)() for _ in range(s.encoder_windows)]
                    theirs_w = None
                fig[label] = paired.compare(
                    [per_call(w) for w in a], theirs_w, higher_is_better=label != "batch1_ms"
                )
            fig["load_average"] = round(hardware.load_average(), 2)
            log(
                f"encoder {runtime} ({knobs}): batch 1 {fig['batch1_ms']['ours']} ms "
                f"({ratio_text(fig['batch1_ms'])}), batch {s.encoder_batch} "
                f"{fig['batch_images_per_second']['ours']:.0f} images/s "
                f"({ratio_text(fig['batch_images_per_second'])})"
            )
            figures.append(fig)
        results["export"] = {
            "files": rep["files"],
            "int8_agreement": rep.get("int8", {}).get("agreement_with_float32"),
            "litert_int8_agreement": rep.get("litert_int8", {}).get("agreement_with_float32"),
        }
        results["batching"] = batching_curve(sm, batch, s.calls_batch)
    results["encoder"] = figures
    return results


def batching_curve(sm: str, batch: np.ndarray, calls: int) -> dict:
    """serving_default's images/s at export/batching.py's candidate batch sizes (up to the
    encoder batch), and the batching_parameters.txt values that follow from them.
    """
    from export import batching

    fn = saved_model_fn(sm)
    rates = {}
    for size in [b for b in batching.CANDIDATE_SIZES if b <= len(batch)]:
        x = batch[:size]
        n = max(calls, 256 // size)
        rates[size] = size / statistics.median(timings(fn, x, n))
    params = batching.parameters(rates)
    log(f"encoder: batching, images/s {rates}; parameters {params}")
    return {
        "images_per_second": {str(k): round(v, 1) for k, v in rates.items()},
        "parameters": params,
        "load_average": round(hardware.load_average(), 2),
    }


def _runtimes(model, sm: str, onnx_dir: str, litert_dir: str, quick: bool) -> list:
    """(runtime, settings, make) for each figure; make() builds the function to time."""
    from export import serving

    runtimes = [
        ("keras", "tf.function", lambda: keras_fn(model, False)),
        ("keras", "tf.function, XLA", lambda: keras_fn(model, True)),
        ("saved_model", "serving_default", lambda: saved_model_fn(sm)),
        (
            "saved_model_xla",
            serving.XLA_SIGNATURE,
            lambda: saved_model_fn(sm, serving.XLA_SIGNATURE),
        ),
    ]
    settings = [(2, True, True, False), (1, True, True, False)]
    if not quick:
        settings += [(2, True, True, True), (2, True, False, False)]
    else:
        settings += [(2, True, True, True)]
    for fname, label in (
        ("encoder.onnx", "onnxruntime"),
        ("encoder.int8.onnx", "onnxruntime_int8"),
    ):
        path = os.path.join(onnx_dir, fname)
        for threads, optimize, spin, bound in settings:
            knobs = f"threads={threads}, spinning={'on' if spin else 'off'}" + (
                ", iobinding" if bound else ""
            )
            runtimes.append(
                (
                    label,
                    knobs,
                    lambda path=path, t=threads, o=optimize, sp=spin, b=bound: ort_fn(
                        ort_session(path, t, o, sp), b
                    ),
                )
            )
    for fname, label in (("encoder.tflite", "litert"), ("encoder.int8.tflite", "litert_int8")):
        path = os.path.join(litert_dir, fname)
        runtimes.append((label, "threads=2, XNNPACK", lambda path=path: litert_fn(path)))
    if openvino_installed():  # a development dependency: timed where it is there
        for fname, label in (("encoder.onnx", "openvino"), ("encoder.int8.onnx", "openvino_int8")):
            path = os.path.join(onnx_dir, fname)
            runtimes.append((label, "CPU, f32, latency hint", lambda path=path: openvino_fn(path)))
    return runtimes
