"""Int8 ONNX encoder: static quantization calibrated on training images."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from export import serving

# Settings of onnxruntime's quantize_static that the benchmarks' profile section times
# against each other (python -m benchmarks --sections=profile); DEFAULT is what export writes.
VARIANTS = {
    "qdq_per_channel": {"format": "QDQ", "per_channel": True, "reduce_range": False},
    "qdq_per_tensor": {"format": "QDQ", "per_channel": False, "reduce_range": False},
    "qdq_per_channel_reduce_range": {"format": "QDQ", "per_channel": True, "reduce_range": True},
    "qoperator_per_channel": {"format": "QOperator", "per_channel": True, "reduce_range": False},
    "qoperator_per_tensor": {"format": "QOperator", "per_channel": False, "reduce_range": False},
}
DEFAULT = "qdq_per_channel"


def method(variant: str = DEFAULT) -> str:
    v = VARIANTS[variant]
    return (
        f"onnxruntime.quantization.quantize_static, {v['format']} format, int8 weights "
        f"({'per channel' if v['per_channel'] else 'per tensor'}"
        f"{', reduced range' if v['reduce_range'] else ''}), uint8 activations, MinMax ranges "
        "calibrated on training images and their saturated, uniform and noisy variants; the "
        "occurrence probabilities and the appearance pooling stay float32"
    )


METHOD = method()


def quantize_int8(
    float_path: str,
    int8_path: str,
    calibration: np.ndarray,
    batch: int = 16,
    variant: str = DEFAULT,
    progress=None,
):
    """Writes the int8 model of float_path to int8_path, with the settings of VARIANTS[variant].

    calibration: [K, S, S, 3] float 0..255 training images. Static rather than dynamic
    quantization: dynamic quantization covers MatMul/Gemm-heavy models, and this encoder is
    almost all Conv, which only static quantization turns into int8 kernels. Activations are
    uint8 (U8S8): on x86 CPUs without VNNI, ONNX Runtime's S8S8 kernels were slower than
    float32 for this encoder, and U8S8 faster. progress: called with the number of
    calibration images handed to ONNX Runtime so far.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if variant not in VARIANTS:
        raise ValueError(f"unknown int8 variant {variant!r}; expected one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [
                    {serving.IMAGES: calibration[i : i + batch]}
                    for i in range(0, len(calibration), batch)
                ]
            )

            self.seen = 0

        def get_next(self):
            item = next(self.batches, None)
            if item is not None and progress is not None:
                self.seen += len(item[serving.IMAGES])
                progress(self.seen)
            return item

    with tempfile.TemporaryDirectory(dir=os.path.dirname(int8_path)) as tmp:
        # Shape inference and graph clean-up first, as onnxruntime recommends for quantization.
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(float_path, prepared, skip_symbolic_shape=True)
        excluded = float_nodes(onnx.load(prepared))
        quantize_static(
            prepared,
            int8_path,
            Reader(),
            quant_format=getattr(QuantFormat, v["format"]),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=v["per_channel"],
            reduce_range=v["reduce_range"],
            nodes_to_exclude=excluded,
        )
    onnx.checker.check_model(int8_path, full_check=True)


# Where the occurrence probabilities begin: the pooling that follows divides by their sum.
_PROBABILITY_OPS = ("Sigmoid", "Softmax")


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes that must stay float: the occurrence probabilities and every
    node computed from them (the pooling's weighted sums, its + eps and its division).

    Quantized, a part's probabilities round to 0 on an image where it barely occurs, the
    1e-7 added to their sum rounds away with them, and the division computes 0 / 0: NaN
    appearance on uniform or white images. Kept float, they cost a few small elementwise
    ops; every convolution stays int8.
    """
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    todo = [n for n in model.graph.node if n.op_type in _PROBABILITY_OPS]
    seen: dict[str, None] = {}
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen[node.name] = None
        for out in node.output:
            todo.extend(consumers.get(out, []))
    return list(seen)


def gate(agreement: dict, min_cosine: float, stress: dict | None = None) -> str:
    """Why an int8 model is not good enough to deploy ("" when it is).

    agreement: parity.agreement(float32 outputs, int8 outputs) on the parity images. The
    bound is on the mean cosine of the features, per image, to float32: what a recognition
    deployment compares. stress: exporter._stress's figures per stress set; each set must
    run, give finite outputs only, and meet the same bound.
    """
    cosine = agreement["features"]["mean_cosine"]
    if not cosine >= min_cosine:
        return (
            f"int8 features' mean cosine to float32 is {cosine:.4f} on the parity images, under "
            f"--int8_min_cosine={min_cosine:g}"
        )
    for name, result in (stress or {}).items():
        if "error" in result:
            return f"the int8 model fails on the {name} stress images: {result['error']}"
        if result["non_finite"]:
            return (
                f"the int8 model gives {result['non_finite']} non-finite values on the {name} "
                "stress images"
            )
        cosine = result["agreement"]["features"]["mean_cosine"]
        if not cosine >= min_cosine:
            return (
                f"int8 features' mean cosine to float32 is {cosine:.4f} on the {name} stress "
                f"images, under --int8_min_cosine={min_cosine:g}"
            )
    return ""
