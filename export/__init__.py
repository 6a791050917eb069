"""The export stage: the trained encoder as a TF Serving SavedModel and an ONNX model."""
