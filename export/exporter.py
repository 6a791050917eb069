"""python -m export of a train.py workdir: the encoder restored once, each format written into a
staging directory and checked against the model, then published whole.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import NamedTuple

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
from patchvae_tf.model import models
from patchvae_tf.pixels import to_pixels
from patchvae_tf.workdir import CONFIG_FILE


@dataclasses.dataclass(frozen=True)
class Checked:
    """The images every file is checked on and the outputs it must agree with."""

    pixels: np.ndarray  # the parity images [n, S, S, 3], float32 0..255
    keras: dict  # the model's outputs on pixels
    calibration: np.ndarray  # int8 calibration images and their extremes, float32 0..255
    counts: dict  # calibration_images, calibration_extremes
    stress: dict  # stress.stress_images of pixels, for the int8 gate
    saved_model: dict | None = None  # serving_default's outputs on pixels, once it is written


def export(cfg: ExportConfig) -> dict:
    """Exports the encoder of cfg.workdir into cfg.export_dir; returns the report.

    Nothing appears in export_dir unless every check passed.
    """
    validate_export(cfg)
    model_cfg = load_config(os.path.join(cfg.workdir, CONFIG_FILE))
    model = models.build_model(model_cfg.model)
    path = checkpoint.restore(cfg.workdir, cfg.checkpoint, model=checkpoint.EncoderView(model))
    step = checkpoint.step(path)
    version = layout.new_version(cfg.export_dir, cfg.version, step, path)
    module = serving.EncoderServing(model, serving.limits_of(cfg))
    unit, calib_unit, checked_on, calibrated_on = images.export_images(cfg, model_cfg, model)
    data = _checked_on(model, unit, calib_unit)
    sections = [*cfg.formats, *(["int8"] if cfg.quantize else [])]
    print(
        f"export: step {step} as version {version}: {', '.join(sections)}, each checked on "
        f"{checked_on}" + (f", int8 calibrated on {calibrated_on}" if len(calib_unit) else ""),
        flush=True,
    )
    started = time.perf_counter()

    def done(name: str) -> None:
        print(f"export: {name} written and checked, {time.perf_counter() - started:.1f} s")

    with layout.Staging(cfg.export_dir, version) as stage:
        # Always written, so E/models.config never points into an export without one.
        report.write_models_config(stage.group(layout.MODELS_CONFIG), cfg.model_name)
        parts = [
            report.header(cfg, stage, path, step),
            _model(model_cfg, module, model),
            {
                "parity": {
                    "images": len(data.pixels),
                    "checked_on": checked_on,
                    "tolerance": parity.TOLERANCE,
                },
                "calibrated_on": calibrated_on or None,
                "calibration": data.counts,
                "files": {},
                "latency_ms_batch1": {},
            },
        ]
        if "saved_model" in cfg.formats:
            part, outputs = _saved_model(cfg, module, stage, data.pixels, data.keras)
            parts.append(part)
            data = dataclasses.replace(data, saved_model=outputs)
            done("saved_model")
        if "onnx" in cfg.formats:
            parts.append(_onnx(cfg, module, stage, data))
            done("onnx" + (" and int8" if cfg.quantize else ""))
        if "keras" in cfg.formats:
            parts.append(keras_export.write(model, stage, data.pixels, data.keras))
            done("keras")
        if "litert" in cfg.formats:
            parts.append(_litert(cfg, module, stage, data))
            done("litert" + (" and int8" if cfg.quantize else ""))
        rep = report.merge(*parts)
        rep = report.merge(rep, report.sha256(stage, rep["files"]))
        rep = report.merge(rep, {"model_card": model_card.card(model_cfg, rep, cfg.workdir)})
        report.publish(stage, rep, model_card.markdown(rep["model_card"]))
    return rep


def _checked_on(model, unit: np.ndarray, calib_unit: np.ndarray) -> Checked:
    """Checked from the parity and calibration images in [-1, 1].

    int8 is calibrated on the calibration images and their extremes (saturated, uniform,
    noisy), so every valid input is within the quantized ranges, and gated on the parity
    images and a stress set made from them (not from the calibration images).
    """
    pixels = to_pixels(unit).astype(np.float32)
    calibration = to_pixels(calib_unit).astype(np.float32)
    counts = {"calibration_images": len(calibration), "calibration_extremes": 0}
    if len(calibration):
        extremes = stress.stack(stress.stress_images(calibration))
        counts["calibration_extremes"] = len(extremes)
        calibration = np.concatenate([calibration, extremes])
    keras_out = _numpy(model.encode(tf.constant(unit), training=False))
    return Checked(pixels, keras_out, calibration, counts, stress.stress_images(pixels, seed=1))


def _model(model_cfg, module: serving.EncoderServing, model) -> dict:
    """The report's model, input and outputs."""
    return {
        "model": {
            "arch": model_cfg.model.arch,
            "encoder": model_cfg.model.encoder,
            "image_size": model.image_size,
            "scale": model.scale,
            "num_parts": model.num_parts,
            "appearance_dim": model.appearance_dim,
            "encoder_variables": len(module.encoder_variables),
            "encoder_parameters": module.parameter_count(),
        },
        "input": module.inputs(),
        "outputs": serving.output_shapes(model),
    }


def _latency_ms(fn, runs: int = 20) -> float:
    fn()  # the first call traces / allocates
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1e3


def _numpy(outputs) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}


def _saved_model(cfg, module, stage, pixels, keras_out) -> tuple[dict, dict]:
    """Writes, reloads and checks the SavedModel; returns its part of the report and its
    outputs on pixels.
    """
    rounded = np.round(pixels)
    pngs = warmup.png_files(pixels)
    inputs = [
        (serving.DEFAULT_SIGNATURE, serving.IMAGES, pixels),
        (serving.XLA_SIGNATURE, serving.IMAGES, pixels),
        (serving.BYTES_SIGNATURE, serving.IMAGE_BYTES, pngs),
    ]
    loaded, part = warmup.save(module, stage, cfg.model_name, inputs)
    default = loaded.signatures[serving.DEFAULT_SIGNATURE]
    by_bytes = loaded.signatures[serving.BYTES_SIGNATURE]
    sm_out = _numpy(default(images=tf.constant(pixels)))
    checks = {"saved_model_vs_keras": ("SavedModel vs Keras", sm_out, keras_out)}

    # The bytes signature on lossless PNGs of the same (rounded) pixels must give what
    # serving_default gives: decoding and preprocessing add nothing.
    rounded_out = _numpy(default(images=tf.constant(rounded)))
    checks["image_bytes_vs_images"] = (
        "serve_image_bytes vs serving_default",
        _numpy(by_bytes(image_bytes=tf.constant(pngs))),
        rounded_out,
    )
    # The uint8 signature: at the model's size it is serving_default on the same pixels;
    # at another size (each image upscaled 3:2 by nearest neighbour, so the resize inside
    # has work to do) it is the bytes signature on the same images as PNGs.
    tensor_sig = loaded.signatures[serving.TENSOR_SIGNATURE]
    as_uint8 = tf.cast(rounded, tf.uint8)
    checks["image_tensor_vs_images"] = (
        "serve_image_tensor vs serving_default",
        _numpy(tensor_sig(image_tensor=as_uint8)),
        rounded_out,
    )
    s = pixels.shape[1]
    larger = tf.image.resize(as_uint8, [s * 3 // 2, s * 2], method="nearest")
    larger_pngs = tf.constant(warmup.png_files(larger.numpy()))
    checks["image_tensor_vs_image_bytes_resized"] = (
        f"serve_image_tensor vs serve_image_bytes at {s * 2}x{s * 3 // 2}",
        _numpy(tensor_sig(image_tensor=larger)),
        _numpy(by_bytes(image_bytes=larger_pngs)),
    )
    xla = loaded.signatures[serving.XLA_SIGNATURE]
    # The warmup's batch size, which XLA has compiled already: no third compilation.
    big = min(len(pixels), 8)
    checks["serving_xla_vs_serving_default"] = (
        "serving_xla vs serving_default",
        _numpy(xla(images=tf.constant(pixels[:big]))),
        {k: v[:big] for k, v in sm_out.items()},
    )
    diffs = {}
    for key, (name, got, want) in checks.items():
        diffs[key] = parity.max_abs(got, want)
        parity.check(name, diffs[key])

    one = tf.constant(pixels[:1])
    part = {
        **part,
        **report.saved_model_entry(stage),
        "parity": diffs,
        "latency_ms_batch1": {
            "saved_model": _latency_ms(lambda: default(images=one)),
            "saved_model_xla": _latency_ms(lambda: xla(images=one)),
        },
        "batching": _batching(stage, default, pixels),
    }
    return part, sm_out


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


class _Runtime(NamedTuple):
    """How the report and the checks name a runtime's files."""

    label: str  # in the checks' messages
    key: str  # its report section, the prefix of its parity entries
    latency: str  # its latency_ms_batch1 entry; the int8 model's adds "_int8"
    int8_key: str  # the int8 model's report section
    folder: str
    float_file: str
    int8_file: str


_ONNX = _Runtime(
    "ONNX Runtime",
    "onnx",
    "onnxruntime",
    "int8",
    layout.ONNX_DIR,
    layout.ONNX_FILE,
    layout.ONNX_INT8_FILE,
)
_LITERT = _Runtime(
    "LiteRT",
    "litert",
    "litert",
    "litert_int8",
    layout.LITERT_DIR,
    layout.LITERT_FILE,
    layout.LITERT_INT8_FILE,
)


def _onnx(cfg, module, stage, data: Checked) -> dict:
    """Converts, checks and compares the ONNX model (and its int8 variant)."""
    path, info = onnx_export.write(module, stage, layout.ONNX_FILE, cfg.opset)

    def int8(int8_path: str) -> dict:
        quantize.quantize_int8(path, int8_path, data.calibration, progress=True)
        return {"method": quantize.METHOD}

    return _runtime(cfg, stage, data, _ONNX, info, onnx_export.runner, int8)


def _litert(cfg, module, stage, data: Checked) -> dict:
    """Converts, checks and compares the LiteRT models, run by ai_edge_litert's interpreter."""
    path = litert_export.write(module, stage, layout.LITERT_FILE)

    def int8(int8_path: str) -> dict:
        litert_export.write(module, stage, layout.LITERT_INT8_FILE, data.calibration)
        return {
            "method": litert_export.INT8_METHOD,
            "ops": litert_export.describe(int8_path)["ops"],
        }

    return _runtime(
        cfg, stage, data, _LITERT, litert_export.describe(path), litert_export.runner, int8
    )


def _runtime(cfg, stage, data: Checked, rt: _Runtime, info: dict, runner, write_int8) -> dict:
    """The report's part on a runtime's float32 file (info: its inputs, outputs, ...), run by
    runner(path) and checked, and with --quantize=int8 on its int8 file, which
    write_int8(path) writes (returning how it was made): its agreement with float32 on the
    parity images and each stress set, and the gate's verdict (quantize.gate).
    """
    run = runner(stage.group(rt.folder, rt.float_file))
    out, checks = _check_runtime(rt.label, rt.key, run, data)
    one = data.pixels[:1]
    part = report.merge(
        {rt.key: info},
        checks,
        report.file_entry(stage, rt.folder, rt.float_file),
        {"latency_ms_batch1": {rt.latency: _latency_ms(lambda: run(one))}},
    )
    if cfg.quantize != "int8":
        return part
    int8_path = stage.group(rt.folder, rt.int8_file)
    details = write_int8(int8_path)
    int8_run = runner(int8_path)
    size = report.size_bytes(int8_path)
    agreement = parity.agreement(out, int8_run(data.pixels))
    entry = {
        **details,
        # The training images, and the variants of them at the range's edges (stress.py).
        "calibration_images": int(data.counts["calibration_images"]),
        "calibration_extremes": int(data.counts["calibration_extremes"]),
        "evaluated_on": "the parity images (not used for calibration), and a stress set made "
        "from them: uniform images at 0, 128, 200 and 255, white and black backgrounds, "
        "bright and dark contrast, noise",
        "size_bytes": size,
        "size_vs_float32": size / report.size_bytes(stage.group(rt.folder, rt.float_file)),
        "agreement_with_float32": agreement,
        "min_cosine": cfg.int8_min_cosine,
        "stress": stress.agreement(run, int8_run, data.stress),
    }
    refusal = quantize.gate(agreement, cfg.int8_min_cosine, entry["stress"])
    entry.update(quantize.verdict(int8_path, refusal, cfg.force_int8))
    if not entry["written"]:
        return report.merge(part, {rt.int8_key: entry})
    return report.merge(
        part,
        {rt.int8_key: entry},
        report.file_entry(stage, rt.folder, rt.int8_file),
        {"latency_ms_batch1": {f"{rt.latency}_int8": _latency_ms(lambda: int8_run(one))}},
    )


def _check_runtime(label: str, key: str, run, data: Checked) -> tuple[dict, dict]:
    """(The outputs of run on the parity images, its parity part): against Keras, against
    the SavedModel when there is one, and batch 1 against its row of the batch (the batch
    axis is dynamic), each within parity.TOLERANCE (else ParityError).
    """
    out = run(data.pixels)
    diffs = {}
    for name, suffix, ref in (
        ("Keras", "keras", data.keras),
        ("SavedModel", "saved_model", data.saved_model),
    ):
        if ref is not None:
            diffs[f"{key}_vs_{suffix}"] = parity.max_abs(out, ref)
            parity.check(f"{label} vs {name}", diffs[f"{key}_vs_{suffix}"])
    single = parity.max_abs(run(data.pixels[:1]), {k: v[:1] for k, v in out.items()})
    parity.check(f"{label} batch 1 vs batch", single)
    diffs[f"{key}_batch1_vs_batch"] = single
    return out, {"parity": diffs}


def summary(cfg: ExportConfig, rep: dict) -> str:
    """A few lines for the terminal: where things went, sizes, and the parity figures."""
    lines = [f"exported step {rep['step']} as version {rep['version']} to {cfg.export_dir}"]
    for rel, size in sorted(rep["files"].items()):
        lines.append(f"  {rel}: {size / 1e6:.2f} MB")
    worst = parity.worst(rep["parity"])
    lines += [f"  max abs diff {name}: {v:.2e}" for name, v in sorted(worst.items())]
    # A refused int8 model is report.refusals' warning; its agreement is still shown here.
    for key, name in (("int8", "int8"), ("litert_int8", "LiteRT int8")):
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
