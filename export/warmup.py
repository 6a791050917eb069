"""The SavedModel written with TF Serving's warmup requests (PredictionLog records in
assets.extra), reloaded and the requests replayed as the server will.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from export import report

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def png_files(pixels: np.ndarray) -> np.ndarray:
    """Pixels [B, S, S, 3] 0..255, rounded, as PNG files [B] (bytes): lossless, so a signature
    decoding them sees the rounded pixels.
    """
    return np.array([tf.io.encode_png(tf.cast(p, tf.uint8)).numpy() for p in np.round(pixels)])


def _predict_log(model_name: str, signature: str, name: str, value: np.ndarray):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def save(module, stage, model_name: str, inputs: list) -> tuple:
    """Saves module's signatures as the staged SavedModel with warmup requests made of inputs,
    reloads it and replays them; returns (the reloaded SavedModel, its part of the report).

    inputs: (signature, input name, values) triples, each sent at batch 1 and at a larger
    batch (at most 8), so TF Serving traces (and XLA compiles) the shapes real traffic uses
    before the first request. An input name None marks Classify requests (values: serialized
    tf.Examples).
    """
    out_dir = stage.saved_model_dir()
    tf.saved_model.save(module, out_dir, signatures=module.signatures())
    requests = [(s, name, v[:n]) for s, name, v in inputs for n in (1, min(len(v), 8))]
    written = _write_requests(out_dir, model_name, requests)
    loaded = tf.saved_model.load(out_dir)
    part = {
        "warmup_requests": written,
        "warmup_replayed": _replay(out_dir, loaded),
        "signatures": report.signatures(loaded),
    }
    return loaded, part


def _classify_log(model_name: str, signature: str, examples: list[bytes]):
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for blob in examples:
        request.input.example_list.examples.add().ParseFromString(blob)
    return prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )


def _write_requests(saved_model_dir: str, model_name: str, requests: list) -> list[dict]:
    """Writes (signature, input name, value) Predict requests, and Classify requests where
    the input name is None (value: serialized tf.Examples), as the warmup file.
    """
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, name, value in requests:
            if name is None:
                log = _classify_log(model_name, signature, list(value))
            else:
                log = _predict_log(model_name, signature, name, value)
            writer.write(log.SerializeToString())
    return [
        {"signature": s, "input": n or "tf.Example", "batch": int(len(v))} for s, n, v in requests
    ]


def _replay(saved_model_dir: str, loaded) -> int:
    """Runs every warmup record through the loaded SavedModel, as TF Serving will at load.

    Returns the number of records; a record that fails raises (and fails the export).
    """
    from tensorflow_serving.apis import prediction_log_pb2

    count = 0
    for raw in tf.data.TFRecordDataset(os.path.join(saved_model_dir, WARMUP_FILE)):
        log = prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        if log.HasField("classify_log"):
            request = log.classify_log.request
            blobs = [ex.SerializeToString() for ex in request.input.example_list.examples]
            inputs = {"inputs": tf.constant(blobs)}
        else:
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](**inputs)
        count += 1
    return count
