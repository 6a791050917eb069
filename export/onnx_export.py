"""The raw-pixel encoder function as an ONNX model (tf2onnx), checked before it is kept."""

from __future__ import annotations

import onnx
import tensorflow as tf

from export import serving


class OnnxCheckError(RuntimeError):
    """The converted model is not what edge runtimes were promised."""


def convert(module: serving.EncoderServing, path: str, opset: int) -> dict:
    """Converts module.encode_pixels to ONNX at path; returns its inputs and outputs.

    The input keeps a dynamic batch axis and the name ``images``; the outputs keep the
    serving_default names. The model passes onnx.checker with full checks.
    """
    import tf2onnx  # Slow to import; only this stage needs it.

    s = module.image_size
    spec = [tf.TensorSpec([None, s, s, 3], tf.float32, name=serving.IMAGES)]
    model_proto, _ = tf2onnx.convert.from_function(
        module.encode_pixels, input_signature=spec, opset=opset, output_path=path
    )
    _name_batch_axis(model_proto)
    onnx.save(model_proto, path)
    onnx.checker.check_model(path, full_check=True)
    expected = set(module.encode_pixels.get_concrete_function().structured_outputs)
    info = describe(model_proto)
    if list(info["inputs"]) != [serving.IMAGES] or set(info["outputs"]) != expected:
        raise OnnxCheckError(
            f"ONNX names {list(info['inputs'])} -> {sorted(info['outputs'])} differ from "
            f"serving_default's {serving.IMAGES!r} -> {sorted(expected)}"
        )
    batch = info["inputs"][serving.IMAGES][0]
    if isinstance(batch, int):
        raise OnnxCheckError(f"ONNX input batch axis is fixed at {batch}, expected dynamic")
    info["opset"] = opset
    return info


def _name_batch_axis(model_proto: onnx.ModelProto) -> None:
    """Calls the dynamic first axis of every input and output "batch" (tf2onnx: unk__N)."""
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def describe(model_proto: onnx.ModelProto) -> dict:
    """{"inputs": {name: shape}, "outputs": {name: shape}}; a dynamic axis is its symbol."""

    def shape(value_info) -> list:
        dims = value_info.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]

    return {
        "inputs": {v.name: shape(v) for v in model_proto.graph.input},
        "outputs": {v.name: shape(v) for v in model_proto.graph.output},
    }
