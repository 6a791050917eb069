"""export_report.json and models.config: what was exported, how big, and how well it agrees."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from importlib import metadata

from export import layout

_PACKAGES = (
    "tensorflow",
    "keras",
    "tensorflow-probability",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "ai-edge-litert",
    "tensorflow-serving-api",
    "numpy",
)


def header(cfg, stage: layout.Staging, checkpoint: str, step: int) -> dict:
    """What every export's report opens with: where it came from and when."""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "workdir": os.path.abspath(cfg.workdir),
        "checkpoint": os.path.abspath(checkpoint),
        "step": step,
        "version": stage.version,
        "export_id": stage.id,
        "versions": versions(),
    }


# The int8 models a gate may refuse, by report key, as the warnings name them.
_INT8_MODELS = {"int8": "int8", "litert_int8": "LiteRT int8", "onnx_int8": "ONNX int8"}


def refusals(rep: dict) -> list[str]:
    """One warning line per int8 model its gate refused (the float32 models were written)."""
    return [
        f"warning: {name} model not written: {rep[key]['refused']}"
        for key, name in _INT8_MODELS.items()
        if rep.get(key, {}).get("refused")
    ]


def merge(*parts: dict) -> dict:
    """One report from the parts the export's steps return. A key two parts both give must
    hold a dict in each (parity, files, ...), with no name in common: nothing is overwritten.
    """
    out: dict = {}
    for part in parts:
        for key, value in part.items():
            if key not in out:
                out[key] = value
            elif (
                isinstance(value, dict)
                and isinstance(out[key], dict)
                and not value.keys() & out[key]
            ):
                out[key] = {**out[key], **value}
            else:
                raise ValueError(f"two parts of the report give {key!r}")
    return out


def file_entry(stage: layout.Staging, *rel: str) -> dict:
    """{"files": {path in the export: size in bytes}} of a file of the staged export's group."""
    return {"files": {os.path.join(*rel): size_bytes(stage.group(*rel))}}


def saved_model_entry(stage: layout.Staging) -> dict:
    """{"files": {"saved_model/<version>": its size in bytes}} of the staged SavedModel."""
    path = stage.saved_model_dir()
    return {"files": {os.path.relpath(path, stage.path): size_bytes(path)}}


def sha256(stage: layout.Staging, files: dict) -> dict:
    """{"sha256": {path: digest}} of the staged files (a SavedModel: its saved_model.pb), so a
    reader can check that the files it sees are the ones the report describes.
    """
    out = {}
    for rel in files:
        if rel.startswith(layout.SAVED_MODEL):
            rel = os.path.join(rel, "saved_model.pb")
            path = stage.join(rel)
        else:
            path = stage.group(rel)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[rel] = digest.hexdigest()
    return {"sha256": out}


def publish(stage: layout.Staging, rep: dict, card: str) -> None:
    """Writes the model card and the report into the staged export, then publishes it."""
    with open(stage.group(layout.MODEL_CARD), "w") as f:
        f.write(card)
    write_json(stage.group(layout.REPORT), rep)
    stage.commit()


def versions() -> dict[str, str]:
    """The versions of the packages that produced the artifacts."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def size_bytes(path: str) -> int:
    """Size of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def signatures(loaded) -> dict:
    """Signature name -> inputs and outputs (dtype, shape) of a reloaded SavedModel."""

    def spec(t) -> dict:
        shape = None if t.shape.rank is None else t.shape.as_list()
        return {"dtype": t.dtype.name, "shape": shape}

    out = {}
    for name, fn in sorted(loaded.signatures.items()):
        _, kwargs = fn.structured_input_signature
        out[name] = {
            "inputs": {k: spec(v) for k, v in sorted(kwargs.items())},
            "outputs": {k: spec(v) for k, v in sorted(fn.structured_outputs.items())},
        }
    return out


def write_json(path: str, report: dict) -> None:
    with open(path, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write("\n")


def write_models_config(path: str, model_name: str) -> None:
    """A TF Serving --model_config_file for the export's saved_model/ mounted at
    /models/<model_name> (the path the tensorflow/serving image uses by default).
    """
    with open(path, "w") as f:
        f.write(
            "model_config_list {\n"
            "  config {\n"
            f"    name: '{model_name}'\n"
            f"    base_path: '/models/{model_name}'\n"
            "    model_platform: 'tensorflow'\n"
            "    model_version_policy { latest { num_versions: 1 } }\n"
            "  }\n"
            "}\n"
        )
