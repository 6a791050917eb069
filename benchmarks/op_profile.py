"""Where the time goes: per-op time of the ONNX Runtime encoders and of one CIFAR-recipe train
step (ours in TensorFlow, the reference's in PyTorch), and the int8 settings timed side by side.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import statistics
import tempfile
import time

import numpy as np

from benchmarks import encoder_bench, hardware, paired
from benchmarks.progress import log, ratio_text
from benchmarks.recipes import recipe_config
from patchvae_tf.pixels import to_pixels

TOP = 12  # entries kept per table


def _table(times: collections.Counter, total: float, unit: float, top: int = TOP) -> list:
    """The largest entries of times (name -> time) as ms per step and share of total."""
    return [
        {"name": name, "ms": round(t / unit, 3), "share": round(t / total, 4)}
        for name, t in times.most_common(top)
    ]


def ort_ops(path: str, x: np.ndarray, runs: int, threads: int = 2) -> dict:
    """ONNX Runtime's own profile of `runs` runs of the model at path on x: per op type
    (all of them) and per node (the largest), in ms per run and share of the summed kernel
    time; model_run_ms is the whole run() as the session times it.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = encoder_bench.ort_session(path, threads, profile=os.path.join(tmp, "ort"))
        names = [o.name for o in session.get_outputs()]
        session.run(names, {"images": x})  # warm-up, left out below
        for _ in range(runs):
            session.run(names, {"images": x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    runs_us = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
    runs_us = runs_us[1:]  # the warm-up run
    by_type, by_node = collections.Counter(), collections.Counter()
    # Events come in run order: skip the warm-up run's nodes by counting them.
    nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    nodes = nodes[len(nodes) // (runs + 1) :]
    for e in nodes:
        by_type[e["args"]["op_name"]] += e["dur"]
        by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
    total = sum(by_type.values())
    unit = 1e3 * runs
    return {
        "threads": threads,
        "batch": int(len(x)),
        "runs": runs,
        "model_run_ms": round(sum(runs_us) / unit, 3),
        "kernels_ms": round(total / unit, 3),
        "by_op_type": _table(by_type, total, unit, top=len(by_type)),
        "top_nodes": _table(by_node, total, unit),
    }


def _phase(name: str, op_type: str) -> str:
    """forward, backward or optimizer, from a TF op's name and type."""
    if op_type.startswith("ResourceApply") or "adam" in name.split("/")[0].lower():
        return "optimizer"
    if name.startswith("gradient_tape/") or op_type == "AddN" or op_type.endswith("Grad"):
        return "backward"
    return "forward"


def tf_ops(session, calls: int) -> dict:
    """TensorFlow's trace of `calls` calls of session's train step (a train_bench.Session):
    op time per type, per op and per phase (forward with the loss, backward, optimizer), from
    the executor threads' events; the input pipeline's thread time beside it.

    The trace is TensorFlow's own XSpace protobuf, read without TensorBoard's plugin.
    """
    images_per_second, host = _traced(lambda: session.window(calls))
    names = host.event_metadata
    by_type, by_op, by_phase = (collections.Counter() for _ in range(3))
    input_ps = 0
    for line in host.lines:
        if line.name.startswith("tf_data"):
            # Producer threads of tf.data: their busy time, which overlaps the step.
            input_ps += sum(
                e.duration_ps for e in line.events if "Produce" in names[e.metadata_id].name
            )
        if not line.name.startswith("tf_Compute"):
            continue
        for e in line.events:
            label = names[e.metadata_id].name
            # Op kernels are "name:Type"; executor bookkeeping is "Class::Method".
            if ":" not in label or "::" in label:
                continue
            name, op_type = label.rsplit(":", 1)
            by_type[op_type] += e.duration_ps
            by_op[name] += e.duration_ps
            by_phase[_phase(name, op_type)] += e.duration_ps
    total = sum(by_type.values())
    steps = calls * session.steps_per_loop
    unit = 1e9 * steps
    return {
        "steps": steps,
        "images_per_second_while_tracing": round(images_per_second, 2),
        "step_ms": round(session.batch / images_per_second * 1e3, 3),
        "ops_ms": round(total / unit, 3),  # summed over the executor's threads
        "input_pipeline_thread_ms": round(input_ps / unit, 3),
        "by_phase": _table(by_phase, total, unit),
        "by_op_type": _table(by_type, total, unit),
        "top_ops": _table(by_op, total, unit),
    }


def _traced(fn):
    """(fn's result, the host plane of TensorFlow's trace of the call)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            result = fn()
        finally:
            tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    (host,) = [p for p in space.planes if p.name == "/host:CPU"]
    return result, host


def signature_ops(fn, x, calls: int) -> dict:
    """TensorFlow's trace of `calls` calls of a SavedModel signature fn on x (one batch):
    wall ms per call as traced, op time per call summed over the executor's threads, and
    per op type its ms, share and count per call. An XLA-compiled function is one entry,
    "XLA executable", whose time includes everything inside. The wall time is what a
    Python caller sees; the rest of it, beyond the ops, is the call's own overhead.
    """
    import tensorflow as tf

    images = tf.constant(x)
    for _ in range(3):
        fn(images=images)

    def run():
        start = time.perf_counter()
        for _ in range(calls):
            {k: v.numpy() for k, v in fn(images=images).items()}
        return (time.perf_counter() - start) / calls

    wall, host = _traced(run)
    names = host.event_metadata
    by_type, count = collections.Counter(), collections.Counter()
    for line in host.lines:
        if not line.name.startswith("tf_Compute"):
            continue
        for e in line.events:
            label = names[e.metadata_id].name
            if label == "CpuExecutable::ExecuteAsyncOnStream":
                op_type = "XLA executable"  # the compiled encoder, all its ops inside
            elif ":" not in label or "::" in label or label.startswith("__inference"):
                continue  # executor bookkeeping, and the function call that holds the ops
            else:
                op_type = label.rsplit(":", 1)[1]
                if op_type.startswith(" "):
                    continue  # an XLA thunk, already inside its executable's time
            by_type[op_type] += e.duration_ps
            count[op_type] += 1
    total = sum(by_type.values())
    table = _table(by_type, total, 1e9 * calls, top=len(by_type))
    for row in table:
        row["per_call"] = round(count[row["name"]] / calls, 1)
    return {
        "batch": int(len(x)),
        "calls": calls,
        "wall_ms": round(wall * 1e3, 3),
        "ops_ms": round(total / 1e9 / calls, 3),
        "by_op_type": table,
    }


# Settings of onnxruntime's quantize_static timed against each other; the first is what the
# export writes (export/quantize.py's defaults).
VARIANTS = {
    "qdq_per_channel": {"format": "QDQ", "per_channel": True, "reduce_range": False},
    "qdq_per_tensor": {"format": "QDQ", "per_channel": False, "reduce_range": False},
    "qdq_per_channel_reduce_range": {"format": "QDQ", "per_channel": True, "reduce_range": True},
    "qoperator_per_channel": {"format": "QOperator", "per_channel": True, "reduce_range": False},
    "qoperator_per_tensor": {"format": "QOperator", "per_channel": False, "reduce_range": False},
}


def int8_variants(bench, float_path: str, root: str, calibration, pixels, batch) -> list:
    """Each of VARIANTS written from the float32 model, its agreement with float32
    (the export's gate), and its images/s at batch, in windows interleaved with float32's
    and the reference's.
    """
    import onnxruntime as ort

    from export import parity, quantize

    s = bench.sizes
    size = batch.shape[1]
    float_session = ort.InferenceSession(float_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in float_session.get_outputs()]
    float_out = dict(zip(names, float_session.run(names, {"images": pixels}), strict=True))
    candidates = [("float32", float_path, None)]
    for variant, v in VARIANTS.items():
        path = os.path.join(root, f"{variant}.onnx")
        quantize.quantize_int8(
            float_path,
            path,
            calibration,
            quant_format=v["format"],
            per_channel=v["per_channel"],
            reduce_range=v["reduce_range"],
        )
        out = encoder_bench.ort_session(path, 2).run(names, {"images": pixels})
        agreement = parity.agreement(float_out, dict(zip(names, out, strict=True)))
        candidates.append((variant, path, agreement["features"]["mean_cosine"]))
    fns = {v: encoder_bench.ort_fn(encoder_bench.ort_session(p, 2)) for v, p, _ in candidates}
    for fn in fns.values():
        fn(batch), fn(batch)
    # Every candidate in each window, so all of them share the load of that moment; the
    # order rotates, so none always runs right after the reference. Three times the encoder
    # section's windows: the differences between settings are smaller than between runtimes.
    by_threads: list = []
    theirs = bench.peer.encode(size, len(batch), s.calls_batch, by_threads) if bench.peer else None
    windows = {v: [] for v in fns}
    reference = []
    order = list(fns)
    for w in range(3 * s.encoder_windows):
        if theirs and w % 2:
            reference.append(theirs())
        for v in order[w % len(order) :] + order[: w % len(order)]:
            seconds = encoder_bench.timings(fns[v], batch, s.calls_batch)
            windows[v].append(len(batch) / statistics.median(seconds))
        if theirs and not w % 2:
            reference.append(theirs())
    theirs_rates = [len(batch) / statistics.median(t) for t in reference] or None
    rows = []
    for variant, _, cosine in candidates:
        row = {
            "variant": variant,
            "settings": VARIANTS.get(variant, "float32"),
            "features_mean_cosine": None if cosine is None else round(cosine, 5),
            "images_per_second": paired.compare(windows[variant], theirs_rates, True),
            "over_float32": round(
                statistics.median(
                    a / b for a, b in zip(windows[variant], windows["float32"], strict=True)
                ),
                3,
            ),
        }
        log(
            f"profile: {variant} at batch {len(batch)}: "
            f"{row['images_per_second']['ours']:.0f} images/s, {row['over_float32']}x float32, "
            f"{ratio_text(row['images_per_second'])}, cosine {row['features_mean_cosine']}"
        )
        rows.append(row)
    return rows


def section(bench) -> dict:
    """The profile section of bench (a runner.Run)."""
    import tensorflow as tf

    from benchmarks import train_bench
    from export import images

    s = bench.sizes
    (_, size, batch), *_ = s.recipes
    runs = 3 * s.calls_batch
    out = {}
    with tempfile.TemporaryDirectory() as root:
        cfg = recipe_config(size, s.encoder_batch, "float32", bench.cfg.seed)
        log("profile: exporting the encoder (ONNX, int8 ONNX)")
        _, export_dir, rep = encoder_bench.export_artifacts(
            cfg, root, s.calibration_images, s.parity_images
        )
        # Where one image's time goes in the signatures TF Serving runs.
        sm = os.path.join(export_dir, "saved_model", str(rep["version"]))
        one = np.random.default_rng(bench.cfg.seed).uniform(0, 255, (1, size, size, 3))
        out["saved_model_batch1"] = {}
        loaded = tf.saved_model.load(sm)
        for signature in ("serving_default", "serving_xla"):
            out["saved_model_batch1"][signature] = signature_ops(
                loaded.signatures[signature], one.astype(np.float32), 300
            )
            log(f"profile: {signature} at batch 1: {out['saved_model_batch1'][signature]}")
        onnx_dir = os.path.join(export_dir, "onnx")
        x = np.random.default_rng(bench.cfg.seed).uniform(0, 255, (s.encoder_batch, size, size, 3))
        x = x.astype(np.float32)
        out["onnxruntime"] = {
            name: ort_ops(os.path.join(onnx_dir, f), x, runs)
            for name, f in (("float32", "encoder.onnx"), ("int8", "encoder.int8.onnx"))
        }
        unit = images.training_images(cfg, s.parity_images + s.calibration_images)
        pixels = to_pixels(unit).astype(np.float32)
        if bench.peer:
            bench.peer.setup("encoder_setup", f"encoder_{size}", size, batches=[1, s.encoder_batch])
        out["int8_variants"] = int8_variants(
            bench,
            os.path.join(onnx_dir, "encoder.onnx"),
            root,
            pixels[s.parity_images :],
            pixels[: s.parity_images],
            x,
        )
    log("profile: one CIFAR-recipe train step, TensorFlow trace")
    calls = bench.cfg.steps or s.window_steps[size]
    session = train_bench.Session(recipe_config(size, batch, "default", bench.cfg.seed))
    try:
        out["train_step"] = tf_ops(session, calls) | {"policy": session.policy}
    finally:
        session.close()
    if bench.peer:
        log("profile: the reference's train step, torch.profiler")
        bench.peer.setup("train_setup", f"train_{size}_{batch}", size, batch=batch)
        out["reference_train_step"] = bench.peer.reference.request(
            {
                "cmd": "profile_train",
                "key": f"train_{size}_{batch}",
                "steps": calls,
                "threads": bench.peer.threads()[0],  # PyTorch's default
            }
        )
    out["load_average"] = round(hardware.load_average(), 2)
    return {"profile": out}
