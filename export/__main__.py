"""Exports a trained encoder (a train.py workdir) or recognizer (a train_classifier.py workdir):
python -m export --workdir=W --export_dir=E [--quantize=int8].
"""

import sys

from patchvae_tf.config import ExportConfig, cli


def main(cfg: ExportConfig) -> None:
    if cfg.version:  # known without the checkpoint: refuse before TensorFlow loads
        from export import layout

        layout.check_target(cfg.export_dir, cfg.version)
    # TensorFlow: after the flags are good.
    from export import exporter, litert_export, onnx_export, parity, recognizer_export, report
    from patchvae_tf.recognition import recognizer

    # A train_classifier.py workdir exports its recognizer; a train.py one, its encoder.
    stage = recognizer_export if recognizer.is_recognizer(cfg.workdir) else exporter
    try:
        rep = stage.export(cfg)
    except (parity.ParityError, onnx_export.OnnxCheckError, litert_export.LiteRTCheckError) as e:
        print(f"error: export check failed, nothing written: {e}", file=sys.stderr)
        sys.exit(1)
    print(stage.summary(cfg, rep))
    for warning in report.refusals(rep):
        print(warning, file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, ExportConfig)
