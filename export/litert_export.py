"""The raw-pixel encoder as LiteRT models (float32; int8 with a float32 pooling), built-ins only."""

from __future__ import annotations

import os
import warnings

import numpy as np
import tensorflow as tf

from export import layout, serving

# A LiteRT op the plain runtime lacks shows up under one of these names.
_NOT_BUILTIN = ("Flex", "Custom", "CUSTOM", "DELEGATE")


INT8_METHOD = (
    "tf.lite.TFLiteConverter integer quantization: int8 weights per channel and int8 "
    "activations, ranges calibrated on training images and their saturated, uniform and noisy "
    "variants; the occurrence probabilities and the appearance pooling stay float32 (not "
    "full-integer: a DIV by a sum that rounds to zero fails in int8); float32 input and output"
)
# Where the occurrence probabilities begin: the pooling after them divides by their sum.
_PROBABILITY_OPS = ("LOGISTIC", "SOFTMAX")


class LiteRTCheckError(RuntimeError):
    """The converted model is not what the plain LiteRT runtime was promised."""


def frozen_encoder(module: serving.EncoderServing):
    """module.encode_pixels with its variables folded into constants, outputs by name.

    Converted as it is, the function keeps its weights as resource variables (VAR_HANDLE /
    READ_VARIABLE ops), which the int8 calibrator cannot run and a microcontroller runtime
    does not have. Freezing first gives constant weights, as TensorFlow's own frozen-graph
    path does, while the wrapper keeps the signature and its output names.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = module.encode_pixels.get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    # A dict's values flatten in sorted key order: the frozen function's outputs follow it.
    names = sorted(concrete.structured_outputs)
    s = module.image_size

    @tf.function(input_signature=[tf.TensorSpec([None, s, s, 3], tf.float32, name=serving.IMAGES)])
    def encode(images):
        return dict(zip(names, frozen(images), strict=True))

    return encode.get_concrete_function()


def convert(module: serving.EncoderServing, calibration: np.ndarray | None = None) -> bytes:
    """The LiteRT flatbuffer of module.encode_pixels; int8 when calibration is given.

    calibration: [K, S, S, 3] float 0..255 images, the representative dataset. With it,
    every convolution's weights and activations are int8, while the occurrence
    probabilities and the pooling computed from them stay float32 (float_tensors), and
    input and output stay float32, so a caller sends the same 0..255 pixels as to the
    float32 model. Without it, float32 built-in ops. Select TF (Flex) ops are never
    allowed: the plain LiteRT runtime would refuse the model.
    """
    fn = frozen_encoder(module)

    def converter():
        c = tf.lite.TFLiteConverter.from_concrete_functions([fn], tf.Module())
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return c

    with warnings.catch_warnings():
        # The calibrator runs the model in TensorFlow's own deprecated tf.lite.Interpreter,
        # which warns about itself; our checks use ai_edge_litert's.
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        float_model = converter().convert()
        if calibration is None:
            return float_model
        quantizing = converter()
        quantizing.optimizations = [tf.lite.Optimize.DEFAULT]
        # INT8 first; the float32 built-ins only for the ops named below.
        quantizing.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]

        def representative():
            for batch in batches:
                yield {serving.IMAGES: batch.astype(np.float32)}

        quantizing.representative_dataset = representative
        # The converter's own selective quantization: the debugger's denylist keeps the
        # named tensors' ops in float32, the rest int8.
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=float_tensors(float_model)
        )
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=quantizing, debug_dataset=representative, debug_options=options
        )
        return debugger.get_nondebug_quantized_model()


def write(module: serving.EncoderServing, stage, name: str, calibration=None) -> str:
    """Writes convert(module, calibration) as litert/name of the staged export; returns its path."""
    os.makedirs(stage.group(layout.LITERT_DIR), exist_ok=True)
    path = stage.group(layout.LITERT_DIR, name)
    with open(path, "wb") as f:
        f.write(convert(module, calibration))
    return path


def float_tensors(model: bytes) -> list[str]:
    """The output tensors of the ops that must stay float32 in an int8 model: the occurrence
    probabilities and every op computed from them (the pooling's sums, + eps and DIV).

    In int8 a part's probabilities round to the zero point on an image where it barely
    occurs, and LiteRT's int8 DIV refuses a zero divisor ("data[i] != zero_point").
    """
    interp = interpreter(model, 1, delegates=False)
    names = {t["index"]: t["name"] for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # no public call lists a model's ops
    consumers: dict[int, list] = {}
    for op in ops:
        for i in op["inputs"]:
            consumers.setdefault(int(i), []).append(op)
    todo = [op for op in ops if op["op_name"] in _PROBABILITY_OPS]
    seen, out = set(), []
    while todo:
        op = todo.pop()
        if op["index"] in seen:
            continue
        seen.add(op["index"])
        for i in op["outputs"]:
            out.append(names[int(i)])
            todo.extend(consumers.get(int(i), []))
    return out


def interpreter(model: str | bytes, threads: int = 2, delegates: bool = True):
    """An ai_edge_litert Interpreter of a .tflite path (or its bytes).

    delegates: LiteRT's default XNNPACK delegate on (what a CPU deployment gets), or off:
    the built-in kernels alone, whose op list names every op of the model.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"model_path": model} if isinstance(model, str) else {"model_content": model}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(num_threads=threads, **kwargs)


def runner(interp, threads: int = 2):
    """A function: images [B, S, S, 3] float 0..255 -> {name: array}, plain tensor API, of an
    interpreter or of a .tflite path (its interpreter built with threads).

    The input's batch axis is -1 in the model (its shape_signature) and 1 until resized:
    each new batch size calls resize_tensor_input and allocate_tensors, as a LiteRT caller
    without signature runners must.
    """
    if isinstance(interp, (str, bytes)):
        interp = interpreter(interp, threads)
    signature = interp.get_signature_runner(serving.DEFAULT_SIGNATURE)
    in_index = signature.get_input_details()[serving.IMAGES]["index"]
    out_index = {k: d["index"] for k, d in signature.get_output_details().items()}
    state = {"shape": None}

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        if images.shape != state["shape"]:
            interp.resize_tensor_input(in_index, list(images.shape))
            interp.allocate_tensors()
            state["shape"] = images.shape
        interp.set_tensor(in_index, np.ascontiguousarray(images, np.float32))
        interp.invoke()
        return {k: interp.get_tensor(i).copy() for k, i in out_index.items()}

    return run


def describe(model: str | bytes) -> dict:
    """Input and outputs (name, dtype, shape with -1 for a dynamic axis) and the ops used.

    Raises LiteRTCheckError when an op is not a LiteRT built-in or the batch axis is fixed.
    The built-in kernels alone load it (no delegate), so a Flex op could not hide in one.
    """
    try:
        interp = interpreter(model, 1, delegates=False)
        interp.allocate_tensors()
    except (RuntimeError, ValueError) as e:  # an unresolved custom or Flex op, for one
        first = " ".join(str(e).split())[:300]
        raise LiteRTCheckError(f"the plain LiteRT runtime cannot load the model: {first}") from e
    # No public call lists a model's ops; the interpreter's own per-node details do.
    ops = sorted({op["op_name"] for op in interp._get_ops_details()})
    foreign = [op for op in ops if op.startswith(_NOT_BUILTIN)]
    if foreign:
        raise LiteRTCheckError(f"LiteRT model uses ops outside the built-in set: {foreign}")

    def spec(d) -> dict:
        return {"dtype": np.dtype(d["dtype"]).name, "shape": d["shape_signature"].tolist()}

    signature = interp.get_signature_runner(serving.DEFAULT_SIGNATURE)
    info = {
        "signature": serving.DEFAULT_SIGNATURE,
        "inputs": {k: spec(v) for k, v in signature.get_input_details().items()},
        "outputs": {k: spec(v) for k, v in signature.get_output_details().items()},
        "ops": ops,
    }
    if list(info["inputs"]) != [serving.IMAGES]:
        raise LiteRTCheckError(f"LiteRT input names {list(info['inputs'])}, expected ['images']")
    batch = info["inputs"][serving.IMAGES]["shape"][0]
    if batch != -1:
        raise LiteRTCheckError(f"LiteRT input batch axis is fixed at {batch}, expected dynamic")
    return info
