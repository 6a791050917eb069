"""Every choice list and default that more than one module needs, written once."""

ARCHS = ("patchvae", "vae")
ENCODERS = ("resnet", "pyramid")
# --categorical --hard's forward value (model/latents.py).
HARD_CATEGORICAL = ("one_hot", "sign")
# --encoder of a Keras model passed from Python (patchvae_tf.train): its Keras serialization
# is the workdir's backbone.json; the digest tells two such models apart in one process.
KERAS_MODEL_PREFIX = "keras.Model:"
ANNEAL_SCHEDULES = ("reference", "exponential")
INITIALIZATIONS = ("reference", "glorot")
NORMALIZATIONS = ("unit", "imagenet")
TRAIN_SPLITS = ("listed", "all_but_test")
SHAPES_LABELS = ("largest", "kinds")
# ResNet-18 reaches 1/4 after its stem, then halves per stage.
RESNET_SCALES = (4, 8, 16, 32)
# Shapes with texture: the share of the shape's colour that each class's dark pattern removes.
TEXTURE_CONTRAST = 0.65
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "none", "mixed_float16", "mixed_bfloat16")
CLASSIFIER_HEADS = ("flatten", "pool")
# A recognizer's head: the authors' classifier (flatten or pool), or one dense layer on the
# pooled input (linear).
RECOGNIZER_HEADS = (*CLASSIFIER_HEADS, "linear")
# What a recognizer's head reads: pooled encoder features or PatchVAE's part codes.
CLASSIFIER_INPUTS = ("features", "codes")
EVAL_MODES = ("all", "probe", "finetune", "parts", "visualize")
# keras: encoder.keras, the deterministic encoder for keras.saving.load_model.
EXPORT_FORMATS = ("saved_model", "onnx", "keras", "litert")
# litert is written when asked for (--formats=saved_model,onnx,keras,litert).
DEFAULT_EXPORT_FORMATS = ("saved_model", "onnx", "keras")
QUANTIZE_MODES = ("", "int8")
MIN_ONNX_OPSET = 17
MAX_ONNX_OPSET = 18  # the newest opset tf2onnx 1.17 converts to
BENCH_SECTIONS = ("flops", "train", "encoder", "memory", "precision", "profile")
# profile (where the time goes, for docs/performance.md) runs only when asked for.
DEFAULT_BENCH_SECTIONS = BENCH_SECTIONS[:-1]
# Encoded images (patchvae_tf/data/image_limits.py): 4096 x 4096 is 75 times the pixels of
# the largest recipe's 224 x 224 crops and above nearly every photograph in the recipes'
# datasets; a long side past 16 times the short one would grow a strip on resizing.
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_ASPECT = 16.0
MAX_REQUEST_IMAGES = 128
# python -m parity: the compared variants and the dtypes both sides run in.
PARITY_VARIANTS = (
    "cifar",
    "categorical",
    "hard",
    "categorical_hard",
    "pyramid",
    "vae",
    "imagenet",
    "classifier",
    "classifier_pool",
)
PARITY_DTYPES = ("float64", "float32")
