"""export_report.json and models.config: what was exported, how big, and how well it agrees."""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata

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
