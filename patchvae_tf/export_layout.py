"""The names of an export directory that export/ writes and patchvae_tf.load() reads."""

import os

SAVED_MODEL = "saved_model"
REPORT = "export_report.json"
# Inside each SavedModel version: its export's onnx/, report and config, travelling with it.
GROUP_IN_MODEL = os.path.join("assets.extra", "export")
