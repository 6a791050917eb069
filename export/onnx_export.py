"""The raw-pixel encoder function as an ONNX model (tf2onnx), checked before it is kept."""

from __future__ import annotations

import os

import onnx
import tensorflow as tf

from export import layout, serving


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
    fold_pad_into_max_pool(model_proto)
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


def write(module: serving.EncoderServing, stage, name: str, opset: int) -> tuple[str, dict]:
    """Converts module into onnx/name of the staged export; returns (path, convert's info)."""
    os.makedirs(stage.group(layout.ONNX_DIR), exist_ok=True)
    path = stage.group(layout.ONNX_DIR, name)
    return path, convert(module, path, opset)


def runner(path: str):
    """A function: images [B, S, S, 3] float 0..255 -> {output name: array}, by ONNX Runtime."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda x: dict(zip(names, session.run(names, {serving.IMAGES: x}), strict=True))


def fold_pad_into_max_pool(model_proto: onnx.ModelProto) -> int:
    """Folds each zero Pad that feeds only MaxPools, and whose input is a Relu's output, into
    the pools' own pads; returns how many Pads it removed.

    The stem's ZeroPadding2D + MaxPool2D (PyTorch's MaxPool2d(3, 2, padding=1)) converts to
    a Pad node that ONNX Runtime does not fuse: it runs outside the blocked-layout (NCHWc)
    kernels and costs a layout reorder either side of it. After a Relu every value is >= 0,
    so a zero border and the pool's own border (which ignores padded cells) give the same
    maxima, as long as no window lies wholly in the border (each pad under the kernel size).
    """
    from onnx import numpy_helper

    graph = model_proto.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {v.name for v in graph.output}
    removed = []
    for pad in graph.node:
        if pad.op_type != "Pad" or len(pad.input) < 2 or pad.output[0] in outputs:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
        pads = constants.get(pad.input[1])
        value = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0
        source = producer.get(pad.input[0])
        pools = consumers.get(pad.output[0], [])
        if (
            attrs.get("mode", b"constant") not in (b"constant", "constant")
            or pads is None
            or pads.size != 8
            or pads[[0, 1, 4, 5]].any()
            or value is None
            or float(value) != 0.0
            or source is None
            or source.op_type != "Relu"
            or not pools
            or any(not _plain_max_pool(p, pads) for p in pools)
        ):
            continue
        for pool in pools:
            pool.input[0] = pad.input[0]
            # ONNX pads: all begins, then all ends; spatial axes only.
            pool.attribute.append(
                onnx.helper.make_attribute("pads", [int(v) for v in pads[[2, 3, 6, 7]]])
            )
        removed.append(pad)
    for pad in removed:
        graph.node.remove(pad)
    used = {name for node in graph.node for name in node.input}
    for tensor in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(tensor)
    return len(removed)


def _plain_max_pool(node, pads) -> bool:
    """A 2-D MaxPool with no padding of its own that pads (NCHW Pad pads) can move into."""
    if node.op_type != "MaxPool" or len(node.output) != 1:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    kernel = attrs.get("kernel_shape", [])
    return (
        len(kernel) == 2
        and not any(attrs.get("pads", []))
        and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        and not attrs.get("ceil_mode", 0)
        and all(pads[[2, 6]] < kernel[0])
        and all(pads[[3, 7]] < kernel[1])
    )


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
