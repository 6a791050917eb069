"""The recognizer as a tf.Module: TF Serving's Predict (pixels or encoded images) and Classify
(tf.Example) signatures, and the pixel function ONNX and LiteRT are converted from.
"""

from __future__ import annotations

import tensorflow as tf

from export import serving
from patchvae_tf.data import image_limits
from patchvae_tf.pixels import to_model

CLASSIFY_SIGNATURE = "classification"
# TF Serving's Classify RPC accepts a signature only under this method name; TF 2's
# tf.saved_model.save writes tensorflow/serving/predict for every one (set_classify_method).
CLASSIFY_METHOD = "tensorflow/serving/classify"
CLASSIFY_INPUTS = "inputs"  # tf.saved_model.CLASSIFY_INPUTS, the name Classify feeds
EXAMPLE_IMAGE_KEY = "image/encoded"  # where Model Garden's tf_example input keeps the image
TOP_K = 5
PROBABILITIES = "probabilities"


class RecognizerServing(serving.EncoderServing):
    """Pixels, encoded images or tf.Examples in; class probabilities, the top-k classes and
    their names, and the encoder's pooled features out.

    The encoder's variables (encoder_variables) and the head's (head_variables) are tracked
    as TF variables, as EncoderServing does, so TF Serving's session loader finds them.
    """

    def __init__(
        self,
        classifier,
        class_names,
        limits: image_limits.ImageLimits = image_limits.DEFAULT,
        name: str = "patchvae_recognizer",
    ):
        super().__init__(classifier.model, limits, name=name)
        self.head_variables = {
            "classifier." + v.path.replace("/", "."): v.value for v in classifier.head.variables
        }
        self._classify_outputs = classifier.outputs  # a bound method: not tracked
        self.class_names = tuple(str(n) for n in class_names)
        self.top_k = min(TOP_K, len(self.class_names))
        self.classify = tf.function(
            self._classify,
            input_signature=[tf.TensorSpec([None], tf.string, name=CLASSIFY_INPUTS)],
        )

    def signatures(self) -> dict:
        return {
            serving.DEFAULT_SIGNATURE: self.serve.get_concrete_function(),
            serving.BYTES_SIGNATURE: self.serve_image_bytes.get_concrete_function(),
            serving.TENSOR_SIGNATURE: self.serve_image_tensor.get_concrete_function(),
            CLASSIFY_SIGNATURE: self.classify.get_concrete_function(),
        }

    def inputs(self) -> dict:
        return {
            **super().inputs(),
            "classification": f"serialized tf.Example [batch], the file under {EXAMPLE_IMAGE_KEY}",
        }

    def _names(self) -> tf.Tensor:
        return tf.constant(self.class_names, tf.string)

    def _encode_pixels(self, images):
        """Images [B, S, S, 3] float 0..255 -> {"probabilities" [B, C]}; no checks (the
        function ONNX and LiteRT are converted from: numbers only).
        """
        x = to_model(tf.clip_by_value(images, 0.0, 255.0))
        probabilities = self._classify_outputs(x)[PROBABILITIES]
        return {PROBABILITIES: tf.identity(probabilities, name=PROBABILITIES)}

    def _encode_scaled(self, x):
        """X [B, S, S, 3] in [-1, 1] -> probabilities [B, C], the top-k classes [B, k] (int64)
        and their class_names [B, k], and the encoder's features [B, D].
        """
        out = self._classify_outputs(x)
        top = tf.math.top_k(out[PROBABILITIES], k=self.top_k)
        outputs = {
            PROBABILITIES: out[PROBABILITIES],
            "classes": tf.cast(top.indices, tf.int64),
            "class_names": tf.gather(self._names(), top.indices),
            "features": out["features"],
        }
        return {k: tf.identity(v, name=k) for k, v in outputs.items()}

    def _classify(self, inputs):
        """Serialized tf.Examples [B] with JPEG/PNG bytes under image/encoded -> "classes"
        [B, C] (every class name) and "scores" [B, C] (their probabilities), the tensors
        TF Serving's Classify answers with.
        """
        inputs = self._counted(inputs, tf.size(inputs), CLASSIFY_INPUTS)
        spec = {EXAMPLE_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
        blobs = tf.io.parse_example(inputs, spec)[EXAMPLE_IMAGE_KEY]
        scores = self._classify_outputs(self._decode_each(blobs, serving.IMAGE_BYTES))
        scores = scores[PROBABILITIES]
        classes = tf.tile(self._names()[None], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}


def example(image_bytes: bytes) -> bytes:
    """A serialized tf.Example holding one JPEG/PNG file under image/encoded (Classify's input)."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))
    ex = tf.train.Example(features=tf.train.Features(feature={EXAMPLE_IMAGE_KEY: feature}))
    return ex.SerializeToString()


def set_classify_method(saved_model_dir: str) -> str:
    """Rewrites saved_model.pb so the classification signature's method name is
    tensorflow/serving/classify; returns the name read back from the rewritten file.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    path = f"{saved_model_dir}/saved_model.pb"
    proto = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        meta_graph.signature_def[CLASSIFY_SIGNATURE].method_name = CLASSIFY_METHOD
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return method_names(saved_model_dir)[CLASSIFY_SIGNATURE]


def method_names(saved_model_dir: str) -> dict[str, str]:
    """Signature name -> method name, as written in saved_model.pb (what TF Serving reads)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    return {k: v.method_name for k, v in proto.meta_graphs[0].signature_def.items()}


def session_classify(saved_model_dir: str, examples: list[bytes]) -> dict:
    """The classification signature run as TF Serving runs it: the SavedModel loaded into a
    TF1 graph and session (tf.compat.v1.saved_model.loader), its SignatureDef's tensors fed
    and fetched by name. Returns {"method_name", "classes" [B, C] str, "scores" [B, C]}.
    """
    graph = tf.Graph()
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # the TF 1 loader's deprecation notice: this is its point
    try:
        with tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], saved_model_dir)
            sig = meta.signature_def[CLASSIFY_SIGNATURE]
            fetches = {k: v.name for k, v in sig.outputs.items()}
            out = sess.run(fetches, {sig.inputs[CLASSIFY_INPUTS].name: list(examples)})
    finally:
        logger.setLevel(level)
    classes = [[c.decode() for c in row] for row in out["classes"]]
    return {"method_name": sig.method_name, "classes": classes, "scores": out["scores"]}
