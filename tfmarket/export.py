"""``python -m tfmarket.export``: a trained run -> SavedModel (+ ONNX, + LiteRT) with a model card.

    python -m tfmarket.export --workdir runs/NAME [--onnx] [--litert] [--out exports/NAME] [--int8]

The exported graph takes uint8 images [B, H, W, 3] at the training size (dynamic batch) and
contains the normalisation, so callers only decode and resize (``tfmarket.preprocess``).
Outputs: ``embedding`` [B, D] (L2-normalised) and every attribute head's probabilities (the
run's attribute schema, ``schema.json``, is written into ``model_card.json``).

A parity check runs at export time on real images (the run's validation/training images):
the max absolute difference between Keras, the SavedModel, onnxruntime and LiteRT outputs must be
within ``export.parity_tolerance`` (default 1e-4) or the export is aborted and nothing is left
behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tfmarket.errors import TfmarketError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run directory of tfmarket.train")
    parser.add_argument("--out", help="output folder (default: exports/<run name>)")
    parser.add_argument("--onnx", action="store_true", help="also write model.onnx")
    parser.add_argument("--litert", action="store_true",
                        help="also write model.tflite (LiteRT, float32) for phones and edge "
                        "devices; needs ai-edge-litert (pip install 'tfmarket[litert]')")
    parser.add_argument("--int8", action="store_true",
                        help="also write model.int8.onnx for CPU serving: static int8 (QDQ, "
                        "per-channel int8 weights in 7 bits, uint8 activations), calibrated "
                        "on 200 of the run's training crops; with --litert also model.int8.tflite "
                        "(full integer, calibrated on the same crops)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "final"],
                        help="best validation mAP (best.keras, if kept) or the final model")
    parser.add_argument("--parity-images", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--json", action="store_true",
                        help="print the result as JSON (the model card is in model_card.json)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines and every warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, print_result

    import_tensorflow_quietly(args.verbose)
    from tfmarket.serving.export import export_run

    try:
        card = export_run(Path(args.workdir), Path(args.out) if args.out else None,
                          onnx=args.onnx, litert=args.litert, int8=args.int8,
                          checkpoint=args.checkpoint,
                          parity_images=args.parity_images, overwrite=args.overwrite)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {card['source_model']}: {card['source_model_note']}")
    for name, model in ((card.get("onnx") or {}).get("models") or {}).items():
        if model["outside_portable_set"]:
            print(f"warning: {name} has operators outside the portable set (OpenCV DNN or "
                  f"TensorRT may refuse it): {', '.join(model['outside_portable_set'])}",
                  file=sys.stderr)
    print_result({"out": card["out"], "files": card["files"], "parity": card["parity"]},
                 f"wrote {card['out']}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
