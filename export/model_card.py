"""MODEL_CARD.md: what an export is, what it was trained on, how well it does, what not to use
it for; the same fields go into export_report.json under "model_card".
"""

from __future__ import annotations

from export import parity
from patchvae_tf.errors import UserError
from patchvae_tf.evaluation import results

NOT_FOR = (
    "Not a classifier: it gives part maps, part codes and features for a model of your own "
    "to read.",
    "Not checked beyond the data it was trained on: images unlike them (another domain, "
    "size or content) give codes nobody has measured.",
    "Not for decisions about people: the recipes here were trained and measured on shapes, "
    "object and scene benchmarks only, with no audit of bias.",
    "Deterministic: occurrence probabilities and appearance means, no sampling; the decoder "
    "is not exported, so it neither reconstructs nor generates images.",
)


def _evaluation(workdir: str, step: int) -> dict | None:
    """The headline figures of the workdir's evaluation report, or None when there is none."""
    try:
        return results.headline(results.load(workdir), step)
    except UserError:
        return None


def card(cfg, rep: dict, workdir: str) -> dict:
    """The model card's fields from the training Config, the export report so far and the
    workdir's evaluation report (when it has one).
    """
    d, m, t = cfg.data, cfg.model, cfg.train
    size = m.image_size
    out = {
        "model": (
            f"{'PatchVAE' if m.arch == 'patchvae' else 'VAE'} encoder ({m.encoder}, scale "
            f"{m.scale}, {m.num_parts} parts x {m.appearance_dim} appearance dims"
            f"{', categorical' if m.categorical else ''}{', hard' if m.hard else ''})"
        ),
        "data": {
            "dataset": d.dataset,
            "train_split": d.train_split,
            "image_size": size,
            "normalization": m.normalization,
        },
        "recipe": {
            "beta_app": m.beta_app,
            "beta_occ": m.beta_occ,
            "tau": f"{m.tau_init} -> {m.tau_min} ({m.anneal_schedule}, rate {m.anneal_rate})",
            "optimizer": f"Adam lr {t.learning_rate}, batch {t.batch_size}",
            "train_steps": t.train_steps,
            "seed": t.seed,
        },
        "steps": rep["step"],
        "inputs": {
            "images": f"float32 [batch, {size}, {size}, 3], RGB pixels in [0, 255]",
            "image_bytes": "string [batch] of JPEG or PNG files of any size, resized (shorter "
            f"side to {size}) and centre-cropped as in training",
            "image_tensor": "uint8 [batch, height, width, 3] of any size (one per batch), "
            "resized and cropped as image_bytes",
            "limits": _limits(rep),
        },
        "outputs": {
            name: {"shape": shape, "range": _RANGES.get(name, "")}
            for name, shape in rep["outputs"].items()
        },
        "evaluation": _evaluation(workdir, rep["step"]),
        "parity_max_abs": parity.worst(rep["parity"]),
        "parity_checked_on": rep["parity"].get("checked_on", ""),
        "int8": _int8(rep.get("int8")),
        "use": _use(rep),
        "not_for": list(NOT_FOR),
    }
    if m.arch == "vae":
        out["outputs"]["appearance"]["range"] = "posterior mean of the global code, unbounded"
    return out


_RANGES = {
    "occurrence": "[0, 1]: q_occ, the probability each part occurs in each cell",
    "appearance": "posterior mean appearance code of each part, unbounded (prior N(0, 1))",
    "features": "encoder features averaged over the image, unbounded",
}


def _use(rep: dict) -> list[str]:
    """How to open each file this export wrote (paths relative to the export directory)."""
    files = " ".join(rep["files"])
    out = ['Python: `patchvae_tf.load("EXPORT_DIR").encode(images)` (docs/api.md)']
    if "saved_model" in files:
        out.append("TF Serving: `--model_base_path=EXPORT_DIR/saved_model` (docs/serving.md)")
    if "onnx/" in files:
        out.append("ONNX Runtime: `onnx/encoder.onnx`, input `images`")
    if "keras/" in files:
        load = "keras.saving.load_model('keras/encoder.keras')"
        out.append(f"Keras: `import patchvae_tf.model; {load}`")
    return out


def _int8(int8: dict | None) -> dict | None:
    if not int8:
        return None
    return {
        "written": int8.get("written"),
        "size_vs_float32": int8.get("size_vs_float32"),
        "mean_cosine": {k: v["mean_cosine"] for k, v in int8["agreement_with_float32"].items()},
        "refused": int8.get("refused"),
    }


def markdown(fields: dict) -> str:
    """MODEL_CARD.md from the card's fields."""
    lines = [f"# Model card: {fields['model']}", ""]
    lines += ["## Training", ""]
    for key, value in {**fields["data"], **fields["recipe"]}.items():
        lines.append(f"- {key}: {value}")
    lines += [f"- steps trained (this checkpoint): {fields['steps']}", ""]
    lines += ["## Inputs and outputs", ""]
    lines += [f"- input `{k}`: {v}" for k, v in fields["inputs"].items()]
    for name, out in fields["outputs"].items():
        shape = "[" + ", ".join("batch" if s is None else str(s) for s in out["shape"]) + "]"
        lines.append(f"- output `{name}` {shape}: {out['range']}")
    lines += ["", "## Evaluation", ""]
    ev = fields["evaluation"]
    if ev is None:
        lines.append("Not evaluated: run `evaluate.py --workdir=W` before exporting.")
    else:
        lines += [f"- {k}: {_number(v)}" for k, v in ev.items()]
    lines += ["", "## Agreement of the exported files", ""]
    if fields.get("parity_checked_on"):
        lines.append(f"- checked on {fields['parity_checked_on']}")
    lines += [
        f"- max abs difference {k}: {v:.2e}" for k, v in sorted(fields["parity_max_abs"].items())
    ]
    if fields["int8"]:
        lines += [f"- int8: {k}: {_number(v)}" for k, v in fields["int8"].items() if v is not None]
    lines += ["", "## Use", ""]
    lines += [f"- {line}" for line in fields["use"]]
    lines += ["", "## Not for", ""]
    lines += [f"- {line}" for line in fields["not_for"]]
    return "\n".join(lines) + "\n"


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_number(v)}" for k, v in value.items())
    return str(value)


def _limits(rep: dict) -> str:
    """What the image inputs refuse, from the report's limits."""
    lim = rep.get("input", {}).get("limits") or {}
    if not lim:
        return ""
    return (
        f"images of at most {lim['max_pixels']:,} pixels with a long side at most "
        f"{lim['max_aspect']:g} times the short one, {lim['max_images']} per request, "
        "checked from the file header before decoding"
    )


RECOGNIZER_NOT_FOR = (
    "Not checked beyond the classes and data it was trained on: an image of none of its "
    "classes still gets one of their names, with a probability that does not say so.",
    "Not for decisions about people: the recipes here were trained and measured on shapes, "
    "object and scene benchmarks only, with no audit of bias.",
)


def recognizer_card(rep: dict) -> dict:
    """A recognizer's model card fields from its export report."""
    r, test = rep["recognizer"], rep["test"]
    size = rep["model"]["image_size"]
    labels = "every labelled training image"
    if r["labels_per_class"]:
        labels = f"{r['labels_per_class']} labelled training images per class"
    frozen = "none: the encoder frozen"
    if r["frozen_stages"] < r["encoder_stages"]:
        frozen = f"the encoder's stages after the first {r['frozen_stages']} finetuned"
    return {
        "model": (
            f"recognizer of {len(rep['class_names'])} classes: {r['head']} head on the "
            f"{r['input']} of a {rep['model']['arch']} encoder ({rep['model']['encoder']})"
        ),
        "training": {
            "dataset": r["dataset"],
            "labels": labels,
            "encoder": f"{rep['encoder']['workdir']} at step {rep['encoder']['step']}",
            "finetuning": frozen,
            "checkpoint": rep["checkpoint"],
        },
        "classes": rep["class_names"],
        "evaluation": {
            "test images": f"{test['images']} of {test['of']}",
            "Keras test top-1": test["keras_top1"],
            **(
                {
                    "test top-5": test["training_results"]["top5"],
                    "majority label top-1": test["training_results"]["majority_top1"],
                    "per-class top-1": test["training_results"]["per_class_top1"],
                }
                if test.get("training_results")
                else {}
            ),
        },
        "agreement": rep["agreement"],
        "int8": {k: rep[k] for k in ("onnx_int8", "litert_int8") if k in rep},
        "inputs": {
            **rep["input"],
        },
        "outputs": {
            "serving_default, serve_image_bytes": (
                "probabilities [batch, classes]; classes [batch, k] (int64, best first); "
                "class_names [batch, k]; features [batch, D] (the encoder's pooled features)"
            ),
            "classification (TF Serving Classify)": "classes [batch, classes] (names), scores",
            "ONNX, LiteRT": (
                "probabilities [batch, classes]; the names in the ONNX metadata "
                "(class_names) and litert/labels.txt"
            ),
        },
        "image_size": size,
        "use": [
            'Python: `patchvae_tf.load("EXPORT_DIR").classify(images)` (docs/recognition.md)',
            "TF Serving: `--model_base_path=EXPORT_DIR/saved_model`, Predict or Classify",
            f"ONNX Runtime: `onnx/recognizer.onnx`, input `images` float32 [batch, {size}, "
            f"{size}, 3] 0..255",
            "LiteRT: `litert/recognizer.tflite` with `litert/labels.txt`",
        ],
        "not_for": list(RECOGNIZER_NOT_FOR),
    }


def recognizer_markdown(fields: dict) -> str:
    """MODEL_CARD.md of a recognizer from recognizer_card's fields."""
    lines = [f"# Model card: {fields['model']}", "", "## Training", ""]
    lines += [f"- {k}: {v}" for k, v in fields["training"].items()]
    lines += [f"- classes: {', '.join(fields['classes'])}", "", "## Evaluation", ""]
    lines += [f"- {k}: {_number(v)}" for k, v in fields["evaluation"].items()]
    lines += ["", "## Agreement of the exported files with Keras, on the test images", ""]
    for name, a in fields["agreement"].items():
        lines.append(
            f"- {name}: top-1 agreement {a['top1_agreement']:.4f}, max probability difference "
            f"{a['max_abs_probability']:.2e}, test top-1 {a['test_top1']:.4f}"
        )
    for name, e in fields["int8"].items():
        state = "written" if e["written"] else "not written"
        lines.append(
            f"- {name}: top-1 agreement with float32 {e['top1_agreement_with_float32']:.4f}, "
            f"test top-1 {e['test_top1']:.4f}, {state}"
        )
    lines += ["", "## Inputs and outputs", ""]
    lines += [f"- input `{k}`: {v}" for k, v in fields["inputs"].items()]
    lines += [f"- {k}: {v}" for k, v in fields["outputs"].items()]
    lines += ["", "## Use", ""]
    lines += [f"- {line}" for line in fields["use"]]
    lines += ["", "## Not for", ""]
    lines += [f"- {line}" for line in fields["not_for"]]
    return "\n".join(lines) + "\n"
