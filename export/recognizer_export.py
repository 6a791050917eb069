"""python -m export of a train_classifier.py workdir, published as the encoder's export is: a
SavedModel with TF Serving's Predict and Classify signatures, ONNX (class names in its
metadata) and LiteRT (labels.txt beside it), each compared with Keras on the test images.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from export import (
    checkpoint,
    layout,
    litert_export,
    model_card,
    onnx_export,
    parity,
    quantize,
    report,
    serving,
    warmup,
)
from export import recognizer_serving as rs
from patchvae_tf import data
from patchvae_tf.config import ExportConfig
from patchvae_tf.errors import UserError
from patchvae_tf.pixels import to_model, to_pixels
from patchvae_tf.recognition import fit, recognizer
from patchvae_tf.recognition.classifier import num_stages

# Test images every runtime is checked on (all of them, up to this many).
MAX_TEST_IMAGES = 2000
_BATCH = 128


def _images(source: data.Source, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first count images [n, S, S, 3] in [-1, 1] of a split, in order, and their labels."""
    images, labels = [], []
    for x, y in fit.LabelledImages(source, split).batches(_BATCH):
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(len(i) for i in images) >= count:
            break
    if not images:
        raise UserError(f"dataset {source.name!r} has no {split} images to check the export on")
    return np.concatenate(images)[:count], np.concatenate(labels)[:count].astype(np.int64)


def _batched(fn, pixels: np.ndarray) -> np.ndarray:
    """Fn's probabilities over pixels, _BATCH images at a time."""
    return np.concatenate(
        [np.asarray(fn(pixels[i : i + _BATCH])) for i in range(0, len(pixels), _BATCH)]
    )


def compare(name: str, probs: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict:
    """How a runtime's probabilities [n, C] agree with Keras's: the largest absolute
    difference, the share of images with the same top-1 class, and the runtime's test top-1.

    Raises parity.ParityError beyond parity.TOLERANCE, or for a different top-1 class on an
    image whose two best Keras probabilities are further apart than twice the tolerance
    (closer ones may swap by rounding).
    """
    diff = float(np.max(np.abs(probs.astype(np.float64) - reference))) if probs.size else 0.0
    parity.check(f"{name} vs Keras", {"probabilities": diff})
    top, ref_top = np.argmax(probs, 1), np.argmax(reference, 1)
    ordered = np.sort(reference, 1)
    margin = ordered[:, -1] - ordered[:, -2]
    flipped = np.flatnonzero((top != ref_top) & (margin > 2 * parity.TOLERANCE))
    if len(flipped):
        raise parity.ParityError(
            f"{name}: top-1 class differs from Keras's on {len(flipped)} test image(s), first "
            f"image {flipped[0]}"
        )
    return {
        "max_abs_probability": diff,
        "top1_agreement": float(np.mean(top == ref_top)),
        "test_top1": float(np.mean(top == labels)),
    }


@dataclasses.dataclass(frozen=True)
class Checked:
    """The test images every file is checked on, and what Keras gives on them."""

    pixels: np.ndarray  # [n, S, S, 3] float32 0..255
    labels: np.ndarray  # [n] int64
    keras: np.ndarray  # Keras's probabilities [n, C], float64
    calibration: np.ndarray | None  # int8 calibration images, float32 0..255 (with --quantize)


def export(cfg: ExportConfig) -> dict:
    """Exports the recognizer of cfg.workdir into cfg.export_dir; returns the report.

    Nothing appears in export_dir unless every check passed.
    """
    rec = recognizer.restore(cfg.workdir, cfg.checkpoint)
    step = checkpoint.step(rec.path)
    version = layout.new_version(cfg.export_dir, cfg.version, step, rec.path)
    enc = rec.encoder_config
    source = data.get_source(enc.data, rec.image_size, enc.train.seed)
    unit, labels = _images(source, "test", MAX_TEST_IMAGES)
    pixels = to_pixels(unit).astype(np.float32)
    keras_probs = _batched(
        lambda p: rec.classifier.outputs(tf.constant(to_model(p)))["probabilities"], pixels
    ).astype(np.float64)
    calibration = None
    if cfg.quantize:
        calibration = to_pixels(_images(source, "train", cfg.calibration_images)[0])
        calibration = calibration.astype(np.float32)
    test = Checked(pixels, labels, keras_probs, calibration)
    module = rs.RecognizerServing(rec.classifier, rec.class_names, serving.limits_of(cfg))
    print(
        f"export: recognizer checkpoint {step} as version {version}: "
        f"{', '.join(f for f in cfg.formats if f != 'keras')}, each checked on {len(labels)} "
        "test images",
        flush=True,
    )
    if "keras" in cfg.formats:
        print("export: keras skipped: encoder.keras holds encoders, not recognizers")

    with layout.Staging(cfg.export_dir, version) as stage:
        report.write_models_config(stage.group(layout.MODELS_CONFIG), cfg.model_name)
        with open(stage.group(layout.LABELS_FILE), "w") as f:
            f.write("".join(f"{n}\n" for n in rec.class_names))
        parts = [
            report.header(cfg, stage, rec.path, step),
            _recognizer(cfg, rec, source, module, test),
            {"agreement": {}, "files": {}, "parity": {"tolerance": parity.TOLERANCE}},
        ]
        if "saved_model" in cfg.formats:
            parts.append(_saved_model(cfg, module, stage, test))
            print("export: saved_model written and checked (Predict and Classify)", flush=True)
        if "onnx" in cfg.formats:
            parts.append(_onnx(cfg, module, stage, test))
            print("export: onnx written and checked", flush=True)
        if "litert" in cfg.formats:
            parts.append(_litert(cfg, module, stage, test))
            print("export: litert written and checked", flush=True)
        rep = report.merge(*parts)
        rep = report.merge(rep, {"model_card": model_card.recognizer_card(rep)})
        report.publish(stage, rep, model_card.recognizer_markdown(rep["model_card"]))
    return rep


def _recognizer(cfg, rec, source, module, test: Checked) -> dict:
    """The report's description of the recognizer, its inputs and its Keras test score."""
    enc = rec.encoder_config
    return {
        "kind": "recognizer",
        "class_names": list(rec.class_names),
        "recognizer": {
            "head": rec.config.classifier_head,
            "input": rec.config.classifier_input,
            "frozen_stages": rec.classifier.frozen,
            "encoder_stages": num_stages(rec.classifier.model),
            "labels_per_class": rec.config.labels_per_class,
            "dataset": source.name,
        },
        "encoder": {"workdir": enc.train.workdir, "step": rec.encoder_step},
        "model": {
            "arch": enc.model.arch,
            "encoder": enc.model.encoder,
            "image_size": rec.image_size,
            "num_classes": len(rec.class_names),
        },
        "input": module.inputs(),
        "test": {
            "images": int(len(test.labels)),
            "of": int(source.sizes["test"]),
            "keras_top1": float(np.mean(np.argmax(test.keras, 1) == test.labels)),
            "training_results": (recognizer.read_results(cfg.workdir) or {}).get("test"),
        },
    }


def _saved_model(cfg, module, stage, test: Checked) -> dict:
    """Writes the SavedModel, sets Classify's method name, and checks every signature: Predict
    on pixels, on PNG bytes and the Classify signature (TF 2 and a TF 1 session) on tf.Examples.
    Returns its part of the report.
    """
    pixels = test.pixels
    big = min(len(pixels), 8)
    rounded = np.round(pixels)
    pngs = warmup.png_files(pixels)
    examples = [rs.example(p) for p in pngs]
    inputs = [
        (serving.DEFAULT_SIGNATURE, serving.IMAGES, pixels),
        (serving.BYTES_SIGNATURE, serving.IMAGE_BYTES, pngs),
        (rs.CLASSIFY_SIGNATURE, None, examples),
    ]
    loaded, part = warmup.save(module, stage, cfg.model_name, inputs)
    out_dir = stage.saved_model_dir()
    method = rs.set_classify_method(out_dir)
    if method != rs.CLASSIFY_METHOD:
        raise parity.ParityError(f"saved_model.pb's classification method name is {method!r}")
    default = loaded.signatures[serving.DEFAULT_SIGNATURE]

    outputs = [
        default(images=tf.constant(pixels[i : i + _BATCH])) for i in range(0, len(pixels), _BATCH)
    ]
    probs = np.concatenate([o["probabilities"].numpy() for o in outputs])
    agreement = compare("SavedModel", probs, test.keras, test.labels)
    names = np.concatenate([o["class_names"].numpy()[:, 0] for o in outputs])
    expected = np.array(module.class_names)[np.argmax(probs, 1)]
    if [n.decode() for n in names] != list(expected):
        raise parity.ParityError(
            "SavedModel: class_names[:, 0] is not the name of argmax(probabilities)"
        )

    # Decoding adds nothing: PNGs of the rounded pixels give what the rounded pixels give,
    # through serve_image_bytes and through Classify, in TF 2 and in a TF 1 session.
    reference = default(images=tf.constant(rounded[:big]))["probabilities"].numpy()
    by_bytes = loaded.signatures[serving.BYTES_SIGNATURE](image_bytes=tf.constant(pngs[:big]))
    by_tensor = loaded.signatures[serving.TENSOR_SIGNATURE](
        **{serving.IMAGE_TENSOR: tf.constant(rounded[:big].astype(np.uint8))}
    )
    classify = loaded.signatures[rs.CLASSIFY_SIGNATURE](inputs=tf.constant(examples[:big]))
    session = rs.session_classify(out_dir, examples[:big])
    got = {
        "image_bytes_vs_images": by_bytes["probabilities"].numpy(),
        "image_tensor_vs_images": by_tensor["probabilities"].numpy(),
        "classify_vs_images": classify["scores"].numpy(),
        "classify_session_vs_images": session["scores"],
    }
    diffs = {}
    for key, p in got.items():
        diffs[key] = parity.max_abs({"p": p}, {"p": reference})["p"]
        parity.check(key, {"probabilities": diffs[key]})
    if (
        session["classes"][0] != list(module.class_names)
        or session["method_name"] != rs.CLASSIFY_METHOD
    ):
        raise parity.ParityError(
            f"Classify in a TF 1 session: classes {session['classes'][0]} under method "
            f"{session['method_name']!r}, expected {list(module.class_names)} under "
            f"{rs.CLASSIFY_METHOD!r}"
        )
    return {
        **part,
        **report.saved_model_entry(stage),
        "classification_method_name": method,
        "agreement": {"saved_model": agreement},
        "parity": diffs,
        "method_names": rs.method_names(out_dir),
    }


def _probabilities(run):
    """A runner's probabilities alone."""
    return lambda x: run(x)[rs.PROBABILITIES]


def _onnx(cfg, module, stage, test: Checked) -> dict:
    """Converts and checks the ONNX recognizer (class names in its metadata), and int8."""
    import onnx

    path, info = onnx_export.write(module, stage, layout.RECOGNIZER_ONNX_FILE, cfg.opset)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(list(module.class_names))
    onnx.save(proto, path)
    probs = _batched(_probabilities(onnx_export.runner(path)), test.pixels)
    part = report.merge(
        {"onnx": info},
        {"agreement": {"onnxruntime": compare("ONNX Runtime", probs, test.keras, test.labels)}},
        report.file_entry(stage, layout.ONNX_DIR, layout.RECOGNIZER_ONNX_FILE),
    )
    if cfg.quantize != "int8":
        return part
    rel = (layout.ONNX_DIR, layout.RECOGNIZER_ONNX_INT8_FILE)
    quantize.quantize_int8(path, stage.group(*rel), test.calibration, progress=True)
    int8 = _batched(_probabilities(onnx_export.runner(stage.group(*rel))), test.pixels)
    return report.merge(part, _gate(cfg, stage, "onnx_int8", rel, int8, probs, test.labels))


def _litert(cfg, module, stage, test: Checked) -> dict:
    """Converts and checks the LiteRT recognizer (labels.txt beside it), and int8."""
    path = litert_export.write(module, stage, layout.RECOGNIZER_LITERT_FILE)
    with open(stage.group(layout.LITERT_DIR, layout.LABELS_FILE), "w") as f:
        f.write("".join(f"{n}\n" for n in module.class_names))
    probs = _batched(_probabilities(litert_export.runner(path)), test.pixels)
    part = report.merge(
        {"litert": litert_export.describe(path)},
        {"agreement": {"litert": compare("LiteRT", probs, test.keras, test.labels)}},
        report.file_entry(stage, layout.LITERT_DIR, layout.RECOGNIZER_LITERT_FILE),
    )
    if cfg.quantize != "int8":
        return part
    name = layout.RECOGNIZER_LITERT_INT8_FILE
    int8_path = litert_export.write(module, stage, name, test.calibration)
    int8 = _batched(_probabilities(litert_export.runner(int8_path)), test.pixels)
    rel = (layout.LITERT_DIR, name)
    return report.merge(part, _gate(cfg, stage, "litert_int8", rel, int8, probs, test.labels))


def _gate(cfg, stage, key, rel, int8_probs, float_probs, labels) -> dict:
    """The report's part on an int8 model, kept only when its top-1 agrees with float32's on
    at least --int8_min_top1_agreement of the test images (or with --force_int8).
    """
    agreement = float(np.mean(np.argmax(int8_probs, 1) == np.argmax(float_probs, 1)))
    entry = {
        "top1_agreement_with_float32": agreement,
        "max_abs_probability_vs_float32": float(np.max(np.abs(int8_probs - float_probs))),
        "test_top1": float(np.mean(np.argmax(int8_probs, 1) == labels)),
        "min_top1_agreement": cfg.int8_min_top1_agreement,
        "size_bytes": report.size_bytes(stage.group(*rel)),
    }
    refusal = ""
    if agreement < cfg.int8_min_top1_agreement:
        refusal = (
            f"int8 top-1 agrees with float32 on {agreement:.3f} of the test images, under "
            f"--int8_min_top1_agreement={cfg.int8_min_top1_agreement:g}"
        )
    entry.update(quantize.verdict(stage.group(*rel), refusal, cfg.force_int8))
    files = {"files": {os.path.join(*rel): entry["size_bytes"]}} if entry["written"] else {}
    return {key: entry, **files}


def summary(cfg: ExportConfig, rep: dict) -> str:
    """A few lines for the terminal: where things went, and how each runtime agrees."""
    lines = [
        f"exported recognizer checkpoint {rep['step']} as version {rep['version']} to "
        f"{cfg.export_dir}"
    ]
    for rel, size in sorted(rep["files"].items()):
        lines.append(f"  {rel}: {size / 1e6:.2f} MB")
    lines.append(
        f"  Keras test top-1 {rep['test']['keras_top1']:.3f} on {rep['test']['images']} test images"
    )
    for name, a in rep["agreement"].items():
        lines.append(
            f"  {name}: top-1 agreement with Keras {a['top1_agreement']:.3f}, max probability "
            f"difference {a['max_abs_probability']:.2e}, test top-1 {a['test_top1']:.3f}"
        )
    for key in ("onnx_int8", "litert_int8"):
        if key in rep:
            e = rep[key]
            state = "written" if e["written"] else "not written"  # why: report.refusals
            lines.append(
                f"  {key}: top-1 agreement with float32 "
                f"{e['top1_agreement_with_float32']:.3f}, {state}"
            )
    lines.append(f"  report: {os.path.join(cfg.export_dir, layout.REPORT)}")
    return "\n".join(lines)
