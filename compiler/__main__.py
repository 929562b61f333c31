"""``edgefleet-compile`` / ``python -m compiler``: parse the arguments, configure logging, run
one handler of :mod:`compiler.commands`, turn its error into an exit code.

Exit codes: 0 ok · 1 internal error · 2 bad input · 3 accuracy gate failed ·
4 not Edge TPU ready (--target edgetpu) · 5 toolchain failure (converter crash/timeout).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import commands
from .errors import CompilerError, GateFailed

log = logging.getLogger("compiler")

EXIT_CODES = """exit codes:
  0  success: the bundle directory is complete
  1  internal error (a bug; please report it with the message)
  2  bad input: a file, argument or data set that cannot be used (nothing is written)
  3  accuracy gate failed: the report is written next to OUT as OUT.gate-failed.json
  4  not Edge TPU ready: --target edgetpu and the model cannot map onto the Edge TPU
  5  toolchain failure: a TensorFlow conversion crashed or timed out
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet-compile",
        description="Turn a trained model into a verified, Edge-TPU-ready edgefleet bundle.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser(
        "digits",
        help="train the digits CNN (scikit-learn digits) and build its bundle",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--out", required=True, type=Path, help="bundle directory to create (must not exist)")
    d.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    d.add_argument("--seed", type=int, default=0, help="seed for the split, init and training (default 0)")
    d.add_argument("--holdout", type=Path, help="also write the held-out test set here (.npz: x uint8 N×8×8, y)")
    _common(d, name="digits")

    b = sub.add_parser(
        "build",
        help="build a bundle from a Keras .keras file, a SavedModel directory, an ONNX file (torch.onnx.export), "
        "a torch.export .pt2 program or a float .tflite",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "model",
        type=Path,
        help="a .keras file, a SavedModel directory, a .onnx file (torch.onnx.export), a .pt2 (torch.export; "
        "needs edgefleet[torch]) or a float .tflite (quantized with --calibration)",
    )
    b.add_argument(
        "--calibration", required=True, type=Path, help=".npz with x (representative inputs) or a folder of images"
    )
    b.add_argument(
        "--validation",
        required=True,
        type=Path,
        help=".npz with x and y (labels) or a folder of images with labels.csv",
    )
    b.add_argument("--out", required=True, type=Path, help="bundle directory to create (must not exist)")
    b.add_argument("--labels", type=Path, help="labels file, one per line (default: class ids)")
    b.add_argument(
        "--scale",
        type=float,
        help="image preprocess: float = pixel*scale+offset (used when x is uint8 pixels; default 1/255)",
    )
    b.add_argument("--offset", type=float, default=0.0, help="image preprocess offset (default 0)")
    b.add_argument("--image-size", metavar="HxW", help="resize image folders to HxW (default: the .keras input)")
    b.add_argument("--channels", type=int, choices=(1, 3), help="image folders: 1 = grayscale, 3 = RGB")
    b.add_argument(
        "--mean",
        type=_floats,
        help="ONNX/.pt2 image models: Normalize mean on pixel/255, one value or one per channel (e.g. "
        "0.485,0.456,0.406); uniform values become --scale/--offset, per-channel ones a 1x1 Conv in the graph",
    )
    b.add_argument("--std", type=_floats, help="ONNX/.pt2 image models: Normalize std, one value or one per channel")
    b.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        default="rgb",
        help="ONNX/.pt2 image models: the colour order the model was trained on (default rgb); bgr is folded "
        "into the graph so devices and the cloud feed RGB pixels",
    )
    _common(b, name=None)

    m = sub.add_parser(
        "import",
        help="wrap an existing int8 / Edge TPU .tflite into a bundle",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("model", type=Path, help="the CPU .tflite (int8/uint8 or float), or an *_edgetpu.tflite alone")
    m.add_argument("--edgetpu", type=Path, help="the same model compiled by edgetpu_compiler")
    m.add_argument(
        "--labels",
        type=Path,
        help="labels file, one per line, index = class id; required for a classifier (its outputs then are "
        "class scores), optional for segmentation/keypoints/detection, none for an embedding",
    )
    m.add_argument(
        "--task",
        choices=("classification", "detection", "segmentation", "keypoints", "embedding", "tensors"),
        help="what the model is for (default: told from its outputs, see docs/models.md; tensors = "
        "answer its outputs as they are)",
    )
    m.add_argument("--validation", type=Path, help=".npz (x uint8 pixels or float, y) or image folder with labels.csv")
    m.add_argument(
        "--calibration", type=Path, help="unlabelled samples for the baseline when there is no validation set"
    )
    m.add_argument(
        "--truth",
        type=Path,
        help="labelled truth for the --calibration image folder, per task: detection boxes (.jsonl), "
        "segmentation masks (a folder of PNG class-id images), keypoints (COCO JSON); reports mAP@0.5 / mIoU / "
        "PCK@0.2 (docs/models.md)",
    )
    m.add_argument(
        "--min-metric",
        type=float,
        metavar="FRACTION",
        help="with --truth: refuse the import (exit 3) when the per-task metric is below this floor, e.g. 0.5; "
        "without it the metric is reported, not gated (an imported .tflite has no float original to compare)",
    )
    m.add_argument("--out", required=True, type=Path, help="bundle directory to create (must not exist)")
    m.add_argument(
        "--scale",
        type=float,
        help="image input: float = pixel*scale+offset (default: the identity on a quantized input's pixels; "
        "raw pixels for a uint8 input without quantization, which refuses --scale; 1/255 for a float input)",
    )
    m.add_argument("--offset", type=float, help="see --scale (needs --scale)")
    m.add_argument("--name", help="bundle name (default: model file stem)")
    m.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    m.add_argument("--sign-key", type=Path, help="Ed25519 PEM key to sign the manifest (standalone use)")
    m.add_argument(
        "--no-onnx",
        action="store_true",
        help="skip the ONNX twin (tf2onnx from_tflite) for the cloud fallback (default: made from the CPU "
        "model and shipped only if its parity with LiteRT holds on --validation, else --calibration, else "
        "synthetic inputs; otherwise withheld, and the report says why)",
    )
    m.add_argument("--quiet", action="store_true", help="no progress or table, errors only")

    c = sub.add_parser(
        "cocompile",
        help="compile several int8 .tflite models in one edgetpu_compiler run: they share one Edge TPU's "
        "parameter cache (then import each with its CPU model, one channel each)",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("models", type=Path, nargs="+", help="int8 .tflite models, in cache priority order (2 or more)")
    c.add_argument("--out", required=True, type=Path, help="directory to create for the <stem>_edgetpu.tflite files")
    c.add_argument("--min-runtime", type=int, metavar="N", help="edgetpu_compiler -m (default: the compiler's newest)")

    i = sub.add_parser("inspect", help="print the report of a bundle directory")
    i.add_argument("bundle", type=Path, help="a bundle directory written by this tool")
    i.add_argument("--json", action="store_true", help="print the raw report.json")
    return p


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _common(p: argparse.ArgumentParser, name: str | None) -> None:
    p.add_argument(
        "--name", default=name, help="bundle name" + (f" (default {name})" if name else " (default: model file stem)")
    )
    p.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    p.add_argument(
        "--target",
        choices=("cpu", "edgetpu"),
        default="cpu",
        help="edgetpu: fail unless the model fully maps (default cpu)",
    )
    p.add_argument(
        "--io-type", choices=("int8", "uint8"), default="int8", help="int8 model input/output type (default int8)"
    )
    p.add_argument(
        "--min-runtime",
        type=int,
        metavar="N",
        help="edgetpu_compiler -m: oldest Edge TPU runtime to support (default: the compiler's newest)",
    )
    p.add_argument(
        "--segments",
        type=int,
        metavar="N",
        help="edgetpu_compiler -n: split into N pipelined segments, one Edge TPU each "
        "(bundle role tflite_edgetpu_segment; default: one model)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        help="largest allowed float->int8 top-1 drop in percentage points (default 1.0)",
    )
    p.add_argument(
        "--min-accuracy",
        type=float,
        metavar="FRACTION",
        help="also refuse the build (exit 3) when the int8 top-1 on --validation is below this fraction, e.g. "
        "the accuracy of the model it replaces (default: no floor)",
    )
    p.add_argument(
        "--sign-key", type=Path, help="Ed25519 PEM key to sign the manifest (standalone use; normally the hub signs)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress or table, errors only")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if args.command == "digits":
            return commands.run_digits(args)
        if args.command == "build":
            return commands.run_build(args)
        if args.command == "import":
            return commands.run_import(args)
        if args.command == "inspect":
            return commands.run_inspect(args)
        if args.command == "cocompile":
            return commands.run_cocompile(args)
    except GateFailed as exc:
        return _gate_failed(args, exc)
    except CompilerError as exc:
        print(f"edgefleet-compile: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgefleet-compile: interrupted", file=sys.stderr)
        return 130
    return 1


def _gate_failed(args: argparse.Namespace, exc: GateFailed) -> int:
    out: Path = args.out
    path = out.with_name(out.name + ".gate-failed.json")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(exc.report, indent=1, sort_keys=True) + "\n")
        where = f"; report: {path}"
    except OSError as err:
        where = f"; could not write the report to {path} ({err.strerror})"
    if not getattr(args, "quiet", False) and exc.report:
        from .table import print_summary

        print_summary(exc.report, None, None)
    print(f"edgefleet-compile: error: {exc}{where}", file=sys.stderr)
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
