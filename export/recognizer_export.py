"""The recognizer of a train_classifier.py workdir, exported as the encoder is (versions
published whole, every file checked): a SavedModel with TF Serving's Predict and Classify
signatures, ONNX (class names in its metadata) and LiteRT (labels.txt beside it), each run
on the test images and compared with Keras: top-1 agreement and the largest probability
difference, in the report and the model card with the test accuracy.
"""

from __future__ import annotations

import datetime
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
from patchvae_tf import restore as strict
from patchvae_tf.config import ExportConfig
from patchvae_tf.data import image_limits
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


def export(cfg: ExportConfig) -> dict:
    """Exports the recognizer of cfg.workdir into cfg.export_dir; returns the report.

    Nothing appears in export_dir unless every check passed.
    """
    rec = recognizer.restore(cfg.workdir)
    if cfg.checkpoint:
        rec.path = checkpoint.find_checkpoint(cfg.workdir, cfg.checkpoint)
        strict.restore(rec.path, cfg.workdir, **rec.objects())
    number = int(rec.path.rsplit("-", 1)[-1]) if rec.path.rsplit("-", 1)[-1].isdigit() else 0
    version = cfg.version or layout.next_version(cfg.export_dir, number)
    if version <= 0:
        raise UserError(f"checkpoint {rec.path!r} has no number; pass --version=N (N >= 1)")
    layout.check_target(cfg.export_dir, version)

    clf, names = rec.classifier, rec.class_names
    enc = rec.encoder_config
    source = data.get_source(enc.data, rec.image_size, enc.train.seed)
    unit, labels = _images(source, "test", MAX_TEST_IMAGES)
    pixels = to_pixels(unit).astype(np.float32)
    keras_probs = _batched(
        lambda p: clf.outputs(tf.constant(to_model(p)))["probabilities"], pixels
    ).astype(np.float64)
    calibration = None
    if cfg.quantize:
        calibration = to_pixels(_images(source, "train", cfg.calibration_images)[0])
    limits = image_limits.ImageLimits(
        cfg.max_image_pixels, cfg.max_image_aspect, cfg.max_request_images
    )
    module = rs.RecognizerServing(clf, names, limits)
    results = recognizer.read_results(cfg.workdir)
    rep = {
        "kind": "recognizer",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": os.path.abspath(cfg.workdir),
        "checkpoint": os.path.abspath(rec.path),
        "step": number,
        "version": version,
        "class_names": list(names),
        "recognizer": {
            "head": rec.config.classifier_head,
            "input": rec.config.classifier_input,
            "frozen_stages": clf.frozen,
            "encoder_stages": num_stages(clf.model),
            "labels_per_class": rec.config.labels_per_class,
            "dataset": source.name,
        },
        "encoder": {"workdir": rec.encoder_config.train.workdir, "step": rec.encoder_step},
        "model": {
            "arch": enc.model.arch,
            "encoder": enc.model.encoder,
            "image_size": rec.image_size,
            "num_classes": len(names),
        },
        "input": {
            "images": f"float32 [batch, {rec.image_size}, {rec.image_size}, 3], 0..255",
            "image_bytes": "string [batch], JPEG or PNG files of any size within the limits",
            "classification": (
                f"serialized tf.Example [batch], the file under {rs.EXAMPLE_IMAGE_KEY}"
            ),
            "limits": limits.to_dict(),
        },
        "test": {
            "images": int(len(labels)),
            "of": int(source.sizes["test"]),
            "keras_top1": float(np.mean(np.argmax(keras_probs, 1) == labels)),
            "training_results": (results or {}).get("test"),
        },
        "agreement": {},
        "versions": report.versions(),
        "files": {},
        "parity": {"tolerance": parity.TOLERANCE},
    }
    print(
        f"export: recognizer checkpoint {number} as version {version}: "
        f"{', '.join(f for f in cfg.formats if f != 'keras')}, each checked on {len(labels)} "
        "test images",
        flush=True,
    )
    if "keras" in cfg.formats:
        print("export: keras skipped: encoder.keras holds encoders, not recognizers")

    with layout.Staging(cfg.export_dir, version) as stage:
        rep["export_id"] = stage.id
        report.write_models_config(stage.group(layout.MODELS_CONFIG), cfg.model_name)
        with open(stage.group(layout.LABELS_FILE), "w") as f:
            f.write("".join(f"{n}\n" for n in names))
        if "saved_model" in cfg.formats:
            _saved_model(cfg, module, stage, pixels, keras_probs, labels, rep)
            print("export: saved_model written and checked (Predict and Classify)", flush=True)
        if "onnx" in cfg.formats:
            _onnx(cfg, module, stage, pixels, keras_probs, labels, calibration, rep)
            print("export: onnx written and checked", flush=True)
        if "litert" in cfg.formats:
            _litert(cfg, module, stage, pixels, keras_probs, labels, calibration, rep)
            print("export: litert written and checked", flush=True)
        rep["model_card"] = model_card.recognizer_card(rep)
        with open(stage.group(layout.MODEL_CARD), "w") as f:
            f.write(model_card.recognizer_markdown(rep["model_card"]))
        report.write_json(stage.group(layout.REPORT), rep)
        stage.commit()
    return rep


def _saved_model(cfg, module, stage, pixels, keras_probs, labels, rep) -> None:
    """Writes the SavedModel, sets Classify's method name, and checks every signature: Predict
    on pixels, on PNG bytes and the Classify signature (TF 2 and a TF 1 session) on tf.Examples.
    """
    out_dir = stage.saved_model_dir()
    tf.saved_model.save(module, out_dir, signatures=module.signatures())
    rep["classification_method_name"] = rs.set_classify_method(out_dir)
    if rep["classification_method_name"] != rs.CLASSIFY_METHOD:
        raise parity.ParityError(
            f"saved_model.pb's classification method name is {rep['classification_method_name']!r}"
        )
    big = min(len(pixels), 8)
    rounded = np.round(pixels)
    pngs = np.array([tf.io.encode_png(tf.cast(p, tf.uint8)).numpy() for p in rounded])
    examples = [rs.example(p) for p in pngs]
    requests = [
        (serving.DEFAULT_SIGNATURE, serving.IMAGES, pixels[:1]),
        (serving.DEFAULT_SIGNATURE, serving.IMAGES, pixels[:big]),
        (serving.BYTES_SIGNATURE, serving.IMAGE_BYTES, pngs[:1]),
        (serving.BYTES_SIGNATURE, serving.IMAGE_BYTES, pngs[:big]),
        (rs.CLASSIFY_SIGNATURE, None, examples[:1]),
        (rs.CLASSIFY_SIGNATURE, None, examples[:big]),
    ]
    rep["warmup_requests"] = warmup.write_requests(out_dir, cfg.model_name, requests)
    loaded = tf.saved_model.load(out_dir)
    rep["warmup_replayed"] = warmup.replay_warmup(out_dir, loaded)
    default = loaded.signatures[serving.DEFAULT_SIGNATURE]

    outputs = [
        default(images=tf.constant(pixels[i : i + _BATCH])) for i in range(0, len(pixels), _BATCH)
    ]
    probs = np.concatenate([o["probabilities"].numpy() for o in outputs])
    rep["agreement"]["saved_model"] = compare("SavedModel", probs, keras_probs, labels)
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
    rep["parity"]["image_bytes_vs_images"] = parity.max_abs(
        {"p": by_bytes["probabilities"].numpy()}, {"p": reference}
    )["p"]
    rep["parity"]["classify_vs_images"] = parity.max_abs(
        {"p": classify["scores"].numpy()}, {"p": reference}
    )["p"]
    rep["parity"]["classify_session_vs_images"] = parity.max_abs(
        {"p": session["scores"]}, {"p": reference}
    )["p"]
    rep["parity"]["image_tensor_vs_images"] = parity.max_abs(
        {"p": by_tensor["probabilities"].numpy()}, {"p": reference}
    )["p"]
    for key in (
        "image_bytes_vs_images",
        "image_tensor_vs_images",
        "classify_vs_images",
        "classify_session_vs_images",
    ):
        parity.check(key, {"probabilities": rep["parity"][key]})
    if (
        session["classes"][0] != list(module.class_names)
        or session["method_name"] != rs.CLASSIFY_METHOD
    ):
        raise parity.ParityError(
            f"Classify in a TF 1 session: classes {session['classes'][0]} under method "
            f"{session['method_name']!r}, expected {list(module.class_names)} under "
            f"{rs.CLASSIFY_METHOD!r}"
        )
    rep["signatures"] = report.signatures(loaded)
    rep["method_names"] = rs.method_names(out_dir)
    rep["files"][os.path.join(layout.SAVED_MODEL, str(stage.version))] = report.size_bytes(out_dir)


def _onnx(cfg, module, stage, pixels, keras_probs, labels, calibration, rep) -> None:
    """Converts and checks the ONNX recognizer (class names in its metadata), and int8."""
    import onnx
    import onnxruntime as ort

    os.makedirs(stage.group(layout.ONNX_DIR))
    path = stage.group(layout.ONNX_DIR, layout.RECOGNIZER_ONNX_FILE)
    rep["onnx"] = onnx_export.convert(module, path, cfg.opset)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "class_names", json.dumps(list(module.class_names))
    onnx.save(proto, path)

    def runner(p):
        session = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
        return lambda x: session.run([rs.PROBABILITIES], {serving.IMAGES: x})[0]

    probs = _batched(runner(path), pixels)
    rep["agreement"]["onnxruntime"] = compare("ONNX Runtime", probs, keras_probs, labels)
    rel = os.path.join(layout.ONNX_DIR, layout.RECOGNIZER_ONNX_FILE)
    rep["files"][rel] = report.size_bytes(path)
    if cfg.quantize == "int8":
        int8_path = stage.group(layout.ONNX_DIR, layout.RECOGNIZER_ONNX_INT8_FILE)
        quantize.quantize_int8(path, int8_path, calibration.astype(np.float32))
        _gate(cfg, rep, "onnx_int8", int8_path, _batched(runner(int8_path), pixels), probs, labels)


def _litert(cfg, module, stage, pixels, keras_probs, labels, calibration, rep) -> None:
    """Converts and checks the LiteRT recognizer (labels.txt beside it), and int8."""
    os.makedirs(stage.group(layout.LITERT_DIR))
    path = stage.group(layout.LITERT_DIR, layout.RECOGNIZER_LITERT_FILE)
    with open(path, "wb") as f:
        f.write(litert_export.convert(module))
    with open(stage.group(layout.LITERT_DIR, layout.LABELS_FILE), "w") as f:
        f.write("".join(f"{n}\n" for n in module.class_names))
    rep["litert"] = litert_export.describe(path)

    def runner(p):
        run = litert_export.runner(litert_export.interpreter(p))
        return lambda x: run(x)[rs.PROBABILITIES]

    probs = _batched(runner(path), pixels)
    rep["agreement"]["litert"] = compare("LiteRT", probs, keras_probs, labels)
    rep["files"][os.path.join(layout.LITERT_DIR, layout.RECOGNIZER_LITERT_FILE)] = (
        report.size_bytes(path)
    )
    if cfg.quantize == "int8":
        int8_path = stage.group(layout.LITERT_DIR, layout.RECOGNIZER_LITERT_INT8_FILE)
        with open(int8_path, "wb") as f:
            f.write(litert_export.convert(module, calibration.astype(np.float32)))
        _gate(
            cfg, rep, "litert_int8", int8_path, _batched(runner(int8_path), pixels), probs, labels
        )


def _gate(cfg, rep, key, int8_path, int8_probs, float_probs, labels) -> None:
    """Keeps an int8 model only when its top-1 agrees with float32's on at least
    --int8_min_top1_agreement of the test images (or --force_int8); records why in rep[key].
    """
    agreement = float(np.mean(np.argmax(int8_probs, 1) == np.argmax(float_probs, 1)))
    entry = {
        "top1_agreement_with_float32": agreement,
        "max_abs_probability_vs_float32": float(np.max(np.abs(int8_probs - float_probs))),
        "test_top1": float(np.mean(np.argmax(int8_probs, 1) == labels)),
        "min_top1_agreement": cfg.int8_min_top1_agreement,
        "size_bytes": report.size_bytes(int8_path),
    }
    rep[key] = entry
    if agreement < cfg.int8_min_top1_agreement and not cfg.force_int8:
        os.remove(int8_path)
        entry["written"] = False
        entry["refused"] = (
            f"int8 top-1 agrees with float32 on {agreement:.3f} of the test images, under "
            f"--int8_min_top1_agreement={cfg.int8_min_top1_agreement:g}; --force_int8 writes it "
            "anyway"
        )
        return
    entry["written"] = True
    rel = os.path.relpath(int8_path, os.path.dirname(os.path.dirname(int8_path)))
    rep["files"][rel] = entry["size_bytes"]


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
            state = "written" if e["written"] else f"not written: {e['refused']}"
            lines.append(
                f"  {key}: top-1 agreement with float32 "
                f"{e['top1_agreement_with_float32']:.3f}, {state}"
            )
    lines.append(f"  report: {os.path.join(cfg.export_dir, layout.REPORT)}")
    return "\n".join(lines)
