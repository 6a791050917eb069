"""Int8: the ONNX model by static quantization, and the gate an int8 model passes to be kept."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx

from export import serving

METHOD = (
    "onnxruntime.quantization.quantize_static, QDQ format, int8 weights (per channel), uint8 "
    "activations, MinMax ranges calibrated on training images and their saturated, uniform and "
    "noisy variants; the occurrence probabilities and the appearance pooling stay float32"
)


def quantize_int8(
    float_path: str,
    int8_path: str,
    calibration: np.ndarray,
    batch: int = 16,
    progress: bool = False,
    quant_format: str = "QDQ",
    per_channel: bool = True,
    reduce_range: bool = False,
):
    """Writes the int8 model of float_path to int8_path (METHOD with the defaults).

    calibration: [K, S, S, 3] float 0..255 training images. Static quantization: only it
    turns this all-Conv encoder's convolutions into int8 kernels. Activations are uint8
    (U8S8): on x86 CPUs without VNNI, ONNX Runtime's S8S8 kernels were slower than float32
    for this encoder, and U8S8 faster. progress: a progress bar on the terminal (calibration
    takes a while).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    bar = None
    if progress:
        import keras

        print(f"export: int8 calibration on {len(calibration)} images", flush=True)
        bar = keras.utils.Progbar(len(calibration), interval=0.5)

    class Reader(CalibrationDataReader):
        def __init__(self):
            starts = range(0, len(calibration), batch)
            self.batches = iter([{serving.IMAGES: calibration[i : i + batch]} for i in starts])
            self.seen = 0

        def get_next(self):
            item = next(self.batches, None)
            if item is not None and bar is not None:
                self.seen += len(item[serving.IMAGES])
                bar.update(self.seen)
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
            quant_format=getattr(QuantFormat, quant_format),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
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
    deployment compares. stress: stress.agreement's figures; each set must run, give
    finite outputs only, and meet the same bound.
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


def verdict(int8_path: str, refusal: str, force: bool) -> dict:
    """The report's word on an int8 model a gate refused for refusal ("": passed): a refused
    model is deleted unless force (--force_int8); the float32 export goes ahead either way.
    """
    if refusal and not force:
        os.remove(int8_path)
        return {"written": False, "refused": f"{refusal}; --force_int8 writes it anyway"}
    return {"written": True, **({"forced": refusal} if refusal else {})}
