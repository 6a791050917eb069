"""The export stage end to end: restore, write, reload, compare, then move into place."""

from __future__ import annotations

import datetime
import hashlib
import os
import time

import keras
import numpy as np
import tensorflow as tf

from export import (
    batching,
    checkpoint,
    images,
    keras_export,
    layout,
    litert_export,
    model_card,
    onnx_export,
    parity,
    quantize,
    report,
    serving,
    stress,
    warmup,
)
from patchvae_tf.config import ExportConfig, load_config
from patchvae_tf.config.checks import validate_export
from patchvae_tf.data import image_limits
from patchvae_tf.errors import UserError
from patchvae_tf.model import models
from patchvae_tf.pixels import to_pixels
from patchvae_tf.workdir import CONFIG_FILE

# The benchmarks read the first training images as the export does.
training_images = images.training_images


def _latency_ms(fn, runs: int = 20) -> float:
    fn()  # the first call traces / allocates
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1e3


def _numpy(outputs) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}


def export(cfg: ExportConfig) -> dict:
    """Exports the encoder of cfg.workdir into cfg.export_dir; returns the report.

    Nothing appears in export_dir unless every check passed.
    """
    validate_export(cfg)
    model_cfg = load_config(os.path.join(cfg.workdir, CONFIG_FILE))
    model = models.build_model(model_cfg.model)
    path, restored = checkpoint.restore_encoder(model, cfg.workdir, cfg.checkpoint)
    step = checkpoint.checkpoint_step(path)
    version = cfg.version or layout.next_version(cfg.export_dir, step)
    if version <= 0:
        raise UserError(f"checkpoint {path!r} is at step {step}; pass --version=N (N >= 1)")
    layout.check_target(cfg.export_dir, version)

    limits = image_limits.ImageLimits(
        cfg.max_image_pixels, cfg.max_image_aspect, cfg.max_request_images
    )
    module = serving.EncoderServing(model, limits)
    unit, calib_unit, checked_on, calibrated_on = images.export_images(cfg, model_cfg, model)
    calib = len(calib_unit)
    pixels = to_pixels(unit).astype(np.float32)
    # int8: calibrated on the training images and their extremes (saturated, uniform,
    # noisy), so every valid input is within the quantized ranges; gated on the parity
    # images and on a stress set made from them (not from the calibration images).
    calibration = to_pixels(calib_unit).astype(np.float32)
    rep_calibration = {"calibration_images": len(calibration), "calibration_extremes": 0}
    if len(calibration):
        extremes = stress.stack(stress.stress_images(calibration))
        rep_calibration["calibration_extremes"] = len(extremes)
        calibration = np.concatenate([calibration, extremes])
    stress_sets = stress.stress_images(pixels, seed=1)
    keras_out = _numpy(model.encode(tf.constant(unit), training=False))

    rep = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": os.path.abspath(cfg.workdir),
        "checkpoint": os.path.abspath(path),
        "step": step,
        "version": version,
        "model": {
            "arch": model_cfg.model.arch,
            "encoder": model_cfg.model.encoder,
            "image_size": model.image_size,
            "scale": model.scale,
            "num_parts": model.num_parts,
            "appearance_dim": model.appearance_dim,
            "encoder_variables": restored,
            "encoder_parameters": serving.parameter_count(model),
        },
        "input": {
            "images": f"float32 [batch, {model.image_size}, {model.image_size}, 3], 0..255",
            "image_bytes": "string [batch], JPEG or PNG files of any size within the limits",
            "image_tensor": "uint8 [batch, height, width, 3], any size within the limits, "
            "one size per batch",
            # What the image signatures refuse, before decoding (load() reads them here).
            "limits": limits.to_dict(),
        },
        "outputs": serving.output_shapes(model),
        "versions": report.versions(),
        "files": {},
        "parity": {
            "images": int(len(pixels)),
            "checked_on": checked_on,
            "tolerance": parity.TOLERANCE,
        },
        "calibrated_on": calibrated_on or None,
        "latency_ms_batch1": {},
        "calibration": rep_calibration,
    }
    sections = [*cfg.formats, *(["int8"] if cfg.quantize else [])]
    print(
        f"export: step {step} as version {version}: {', '.join(sections)}, each checked on "
        f"{checked_on}" + (f", int8 calibrated on {calibrated_on}" if calib else ""),
        flush=True,
    )
    started = time.perf_counter()

    def done(name: str) -> None:
        print(f"export: {name} written and checked, {time.perf_counter() - started:.1f} s")

    with layout.Staging(cfg.export_dir, version) as stage:
        rep["export_id"] = stage.id
        # Always written, so E/models.config never points into an export without one.
        report.write_models_config(stage.group(layout.MODELS_CONFIG), cfg.model_name)
        sm_out = None
        if "saved_model" in cfg.formats:
            sm_out = _saved_model(cfg, module, stage, pixels, keras_out, rep)
            done("saved_model")
        if "onnx" in cfg.formats:
            _onnx(cfg, module, stage, pixels, keras_out, sm_out, calibration, stress_sets, rep)
            done("onnx" + (" and int8" if cfg.quantize else ""))
        if "keras" in cfg.formats:
            keras_export.write(model, stage, pixels, keras_out, rep)
            done("keras")
        if "litert" in cfg.formats:
            _litert(cfg, module, stage, pixels, keras_out, sm_out, calibration, stress_sets, rep)
            done("litert" + (" and int8" if cfg.quantize else ""))
        # What a reader checks to know the files it sees are the ones this report describes.
        staged = {
            os.path.join(layout.ONNX_DIR, f): stage.group(layout.ONNX_DIR, f)
            for f in (layout.ONNX_FILE, layout.ONNX_INT8_FILE)
        }
        keras_file = os.path.join(layout.KERAS_DIR, layout.KERAS_FILE)
        staged[keras_file] = stage.group(keras_file)
        for f in (layout.LITERT_FILE, layout.LITERT_INT8_FILE):
            staged[os.path.join(layout.LITERT_DIR, f)] = stage.group(layout.LITERT_DIR, f)
        pb = os.path.join(layout.SAVED_MODEL, str(version), "saved_model.pb")
        staged[pb] = stage.join(pb)
        rep["sha256"] = {rel: _sha256(p) for rel, p in staged.items() if os.path.isfile(p)}
        rep["model_card"] = model_card.card(model_cfg, rep, cfg.workdir)
        with open(stage.group(layout.MODEL_CARD), "w") as f:
            f.write(model_card.markdown(rep["model_card"]))
        report.write_json(stage.group(layout.REPORT), rep)
        stage.commit()
    return rep


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _saved_model(cfg, module, stage, pixels, keras_out, rep) -> dict:
    """Writes, reloads and checks the SavedModel; returns its outputs on pixels."""
    out_dir = stage.saved_model_dir()
    tf.saved_model.save(module, out_dir, signatures=module.signatures())
    rep["warmup_requests"] = warmup.write_warmup(out_dir, cfg.model_name, pixels)

    loaded = tf.saved_model.load(out_dir)
    replayed = warmup.replay_warmup(out_dir, loaded)
    default = loaded.signatures[serving.DEFAULT_SIGNATURE]
    sm_out = _numpy(default(images=tf.constant(pixels)))
    diffs = parity.max_abs(sm_out, keras_out)
    parity.check("SavedModel vs Keras", diffs)

    # The bytes signature on lossless PNGs of the same (rounded) pixels must give what
    # serving_default gives: decoding and preprocessing add nothing.
    rounded = np.round(pixels)
    pngs = tf.stack([tf.io.encode_png(tf.cast(p, tf.uint8)) for p in rounded])
    bytes_out = _numpy(loaded.signatures[serving.BYTES_SIGNATURE](image_bytes=pngs))
    rounded_out = _numpy(default(images=tf.constant(rounded)))
    bytes_diffs = parity.max_abs(bytes_out, rounded_out)
    parity.check("serve_image_bytes vs serving_default", bytes_diffs)
    # The uint8 signature: at the model's size it is serving_default on the same pixels;
    # at another size (each image upscaled 3:2 by nearest neighbour, so the resize inside
    # has work to do) it is the bytes signature on the same images as PNGs.
    tensor_sig = loaded.signatures[serving.TENSOR_SIGNATURE]
    as_uint8 = tf.cast(rounded, tf.uint8)
    tensor_diffs = parity.max_abs(_numpy(tensor_sig(image_tensor=as_uint8)), rounded_out)
    parity.check("serve_image_tensor vs serving_default", tensor_diffs)
    s = pixels.shape[1]
    larger = tf.image.resize(as_uint8, [s * 3 // 2, s * 2], method="nearest")
    larger_pngs = tf.stack([tf.io.encode_png(p) for p in larger])
    resized_diffs = parity.max_abs(
        _numpy(tensor_sig(image_tensor=larger)),
        _numpy(loaded.signatures[serving.BYTES_SIGNATURE](image_bytes=larger_pngs)),
    )
    parity.check(f"serve_image_tensor vs serve_image_bytes at {s * 2}x{s * 3 // 2}", resized_diffs)
    xla = loaded.signatures[serving.XLA_SIGNATURE]
    # The warmup's batch size, which XLA has compiled already: no third compilation.
    big = min(len(pixels), 8)
    xla_out = _numpy(xla(images=tf.constant(pixels[:big])))
    xla_diffs = parity.max_abs(xla_out, {k: v[:big] for k, v in sm_out.items()})
    parity.check("serving_xla vs serving_default", xla_diffs)

    rep["signatures"] = report.signatures(loaded)
    rep["parity"]["saved_model_vs_keras"] = diffs
    rep["parity"]["image_bytes_vs_images"] = bytes_diffs
    rep["parity"]["image_tensor_vs_images"] = tensor_diffs
    rep["parity"]["image_tensor_vs_image_bytes_resized"] = resized_diffs
    rep["parity"]["serving_xla_vs_serving_default"] = xla_diffs
    rep["warmup_replayed"] = replayed
    rel = os.path.join(layout.SAVED_MODEL, str(stage.version))
    rep["files"][rel] = report.size_bytes(out_dir)
    one = tf.constant(pixels[:1])
    rep["latency_ms_batch1"]["saved_model"] = _latency_ms(lambda: default(images=one))
    rep["latency_ms_batch1"]["saved_model_xla"] = _latency_ms(lambda: xla(images=one))
    rep["batching"] = _batching(stage, default, pixels)
    return sm_out


def _batching(stage, default, pixels) -> dict:
    """Writes batching_parameters.txt from serving_default's images/s at the candidate
    batch sizes on this machine (the parity images, repeated to fill a batch).
    """
    rates = {}
    for size in batching.CANDIDATE_SIZES:
        x = tf.constant(np.resize(pixels, (size, *pixels.shape[1:])))
        runs = max(3, min(20, 256 // size))
        rates[size] = size / (_latency_ms(lambda x=x: default(images=x), runs) / 1e3)
    params = batching.parameters(rates)
    with open(stage.group(batching.BATCHING_FILE), "w") as f:
        f.write(batching.text(params, rates, "by the export"))
    return {"images_per_second": {str(k): round(v, 1) for k, v in rates.items()}, **params}


def _onnx(cfg, module, stage, pixels, keras_out, sm_out, calibration, stress_sets, rep) -> None:
    """Converts, checks and compares the ONNX model (and its int8 variant)."""
    import onnxruntime as ort

    os.makedirs(stage.group(layout.ONNX_DIR))
    path = stage.group(layout.ONNX_DIR, layout.ONNX_FILE)
    rep["onnx"] = onnx_export.convert(module, path, cfg.opset)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(sess, x):
        return dict(zip(names, sess.run(names, {serving.IMAGES: x}), strict=True))

    onnx_out = _check_runtime(
        "ONNX Runtime", "onnx", lambda x: run(session, x), pixels, keras_out, sm_out, rep
    )
    rep["files"][os.path.join(layout.ONNX_DIR, layout.ONNX_FILE)] = report.size_bytes(path)
    one = pixels[:1]
    rep["latency_ms_batch1"]["onnxruntime"] = _latency_ms(lambda: run(session, one))

    if cfg.quantize == "int8":
        int8_path = stage.group(layout.ONNX_DIR, layout.ONNX_INT8_FILE)
        print(
            f"export: int8 calibration on {len(calibration)} images (training images and "
            "their extremes)",
            flush=True,
        )
        bar = keras.utils.Progbar(len(calibration), interval=0.5)
        quantize.quantize_int8(path, int8_path, calibration, progress=bar.update)
        int8_session = ort.InferenceSession(int8_path, providers=["CPUExecutionProvider"])
        int8_out = run(int8_session, pixels)
        agreement = parity.agreement(onnx_out, int8_out)
        entry = _int8_entry(cfg, quantize.METHOD, rep["calibration"], int8_path, path, agreement)
        entry["stress"] = _stress(
            lambda x: run(session, x), lambda x: run(int8_session, x), stress_sets
        )
        if not _gate_int8(cfg, rep, "int8", int8_path, entry):
            return
        rep["files"][os.path.join(layout.ONNX_DIR, layout.ONNX_INT8_FILE)] = entry["size_bytes"]
        rep["latency_ms_batch1"]["onnxruntime_int8"] = _latency_ms(lambda: run(int8_session, one))


def _litert(cfg, module, stage, pixels, keras_out, sm_out, calibration, stress_sets, rep) -> None:
    """Converts, checks and compares the LiteRT models, run by ai_edge_litert's interpreter.

    The same checks as ONNX: float32 within parity.TOLERANCE of Keras and the SavedModel,
    batch 1 equal to its row of a batch, and the int8 model under the same cosine gate.
    """
    os.makedirs(stage.group(layout.LITERT_DIR))
    path = stage.group(layout.LITERT_DIR, layout.LITERT_FILE)
    with open(path, "wb") as f:
        f.write(litert_export.convert(module))
    info = litert_export.describe(path)
    run = litert_export.runner(litert_export.interpreter(path))
    out = _check_runtime("LiteRT", "litert", run, pixels, keras_out, sm_out, rep)
    rep["litert"] = info
    rep["files"][os.path.join(layout.LITERT_DIR, layout.LITERT_FILE)] = report.size_bytes(path)
    one = pixels[:1]
    rep["latency_ms_batch1"]["litert"] = _latency_ms(lambda: run(one))
    if cfg.quantize != "int8":
        return

    int8_path = stage.group(layout.LITERT_DIR, layout.LITERT_INT8_FILE)
    with open(int8_path, "wb") as f:
        f.write(litert_export.convert(module, calibration))
    int8_info = litert_export.describe(int8_path)
    int8_run = litert_export.runner(litert_export.interpreter(int8_path))
    agreement = parity.agreement(out, int8_run(pixels))
    entry = _int8_entry(
        cfg, litert_export.INT8_METHOD, rep["calibration"], int8_path, path, agreement
    )
    entry["ops"] = int8_info["ops"]
    entry["stress"] = _stress(run, int8_run, stress_sets)
    if not _gate_int8(cfg, rep, "litert_int8", int8_path, entry):
        return
    rep["files"][os.path.join(layout.LITERT_DIR, layout.LITERT_INT8_FILE)] = entry["size_bytes"]
    rep["latency_ms_batch1"]["litert_int8"] = _latency_ms(lambda: int8_run(one))


def _check_runtime(label: str, key: str, run, pixels, keras_out, sm_out, rep: dict) -> dict:
    """The outputs of run on the parity images, each comparison within parity.TOLERANCE (else
    ParityError) and in rep["parity"]: against Keras, against the SavedModel when there is
    one, and batch 1 against its row of the batch (the batch axis is dynamic).
    """
    out = run(pixels)
    checks = [("Keras", "keras", keras_out), ("SavedModel", "saved_model", sm_out)]
    for name, suffix, ref in checks:
        if ref is not None:
            diffs = parity.max_abs(out, ref)
            parity.check(f"{label} vs {name}", diffs)
            rep["parity"][f"{key}_vs_{suffix}"] = diffs
    single = parity.max_abs(run(pixels[:1]), {k: v[:1] for k, v in out.items()})
    parity.check(f"{label} batch 1 vs batch", single)
    rep["parity"][f"{key}_batch1_vs_batch"] = single
    return out


def _stress(float_run, int8_run, sets: dict) -> dict:
    """Per stress set (export/stress.py): the int8 outputs' agreement with float32, and
    how many int8 values are not finite (or the runtime's error, which the gate refuses).
    """
    out = {}
    for name, batch in sets.items():
        try:
            got = int8_run(batch)
        except Exception as e:  # a runtime refusing to run the model is the finding
            out[name] = {"error": " ".join(str(e).split())[:300]}
            continue
        want = float_run(batch)
        out[name] = {
            "agreement": parity.agreement(want, got),
            "non_finite": int(sum(np.sum(~np.isfinite(v)) for v in got.values())),
        }
    return out


def _int8_entry(cfg, method: str, counts: dict, int8_path: str, float_path: str, agreement) -> dict:
    """What the report says of an int8 model: how it was made, its size, its agreement."""
    size = report.size_bytes(int8_path)
    return {
        "method": method,
        # The training images, and the variants of them at the range's edges (stress.py).
        "calibration_images": int(counts["calibration_images"]),
        "calibration_extremes": int(counts["calibration_extremes"]),
        "evaluated_on": "the parity images (not used for calibration), and a stress set made "
        "from them: uniform images at 0, 128, 200 and 255, white and black backgrounds, "
        "bright and dark contrast, noise",
        "size_bytes": size,
        "size_vs_float32": size / report.size_bytes(float_path),
        "agreement_with_float32": agreement,
        "min_cosine": cfg.int8_min_cosine,
    }


def _gate_int8(cfg, rep: dict, key: str, int8_path: str, entry: dict) -> bool:
    """The int8 cosine gate (quantize.gate) on one int8 model: records entry as rep[key]
    with the verdict, and whether the model is kept (refused ones are deleted unless
    --force_int8; the float32 export goes ahead either way).
    """
    rep[key] = entry
    refusal = quantize.gate(entry["agreement_with_float32"], cfg.int8_min_cosine, entry["stress"])
    if refusal and not cfg.force_int8:
        os.remove(int8_path)
        entry["written"] = False
        entry["refused"] = f"{refusal}; --force_int8 writes it anyway"
        return False
    entry["written"] = True
    if refusal:
        entry["forced"] = refusal
    return True


def summary(cfg: ExportConfig, rep: dict) -> str:
    """A few lines for the terminal: where things went, sizes, and the parity figures."""
    lines = [f"exported step {rep['step']} as version {rep['version']} to {cfg.export_dir}"]
    for rel, size in sorted(rep["files"].items()):
        lines.append(f"  {rel}: {size / 1e6:.2f} MB")
    worst = {
        name: max(diffs.values())
        for name, diffs in rep["parity"].items()
        if isinstance(diffs, dict) and diffs
    }
    lines += [f"  max abs diff {name}: {v:.2e}" for name, v in sorted(worst.items())]
    for key, name in (("int8", "int8"), ("litert_int8", "LiteRT int8")):
        if rep.get(key, {}).get("refused"):
            lines.append(f"  {name} model not written: {rep[key]['refused']}")
        if key in rep:
            agree = rep[key]["agreement_with_float32"]
            lines.append(
                f"  {name} vs float32: "
                + ", ".join(
                    f"{k} max {v['max_abs']:.3g} (cos {v['mean_cosine']:.4f})"
                    for k, v in agree.items()
                )
            )
    lines.append(f"  report: {os.path.join(cfg.export_dir, layout.REPORT)}")
    return "\n".join(lines)
