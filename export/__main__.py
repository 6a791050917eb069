"""Exports a trained encoder: python -m export --workdir=W --export_dir=E [--quantize=int8]."""

import os
import sys

# Checks the flags before TensorFlow loads (see patchvae_tf/__init__.py).
os.environ["PATCHVAE_TF_COMMAND"] = "1"
from patchvae_tf import cli  # noqa: E402

cli.define_export()


def main():
    cfg = cli.export_config()
    if cfg.version:  # known without the checkpoint: refuse before TensorFlow loads
        from export import layout

        layout.check_target(cfg.export_dir, cfg.version)
    from export import exporter, onnx_export, parity  # TensorFlow: after the flags are good

    try:
        rep = exporter.export(cfg)
    except (parity.ParityError, onnx_export.OnnxCheckError) as e:
        print(f"error: export check failed, nothing written: {e}", file=sys.stderr)
        sys.exit(1)
    print(exporter.summary(cfg, rep))
    if rep.get("int8", {}).get("refused"):
        print(f"warning: int8 model not written: {rep['int8']['refused']}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
