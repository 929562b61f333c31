"""``edgefleet-compile`` / ``python -m compiler``: the thin CLI over :mod:`compiler.pipeline`.

Exit codes: 0 ok · 1 internal error · 2 bad input · 3 accuracy gate failed ·
4 not Edge TPU ready (--target edgetpu) · 5 toolchain failure (converter crash/timeout).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import BadInput, CompilerError, GateFailed

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
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("digits", help="train the digits CNN (scikit-learn digits) and build its bundle",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--out", required=True, type=Path, help="bundle directory to create (must not exist)")
    d.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    d.add_argument("--seed", type=int, default=0, help="seed for the split, init and training (default 0)")
    d.add_argument("--holdout", type=Path, help="also write the held-out test set here (.npz: x uint8 N×8×8, y)")
    _common(d, name="digits")

    b = sub.add_parser("build", help="build a bundle from a Keras .keras file or SavedModel directory",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("model", type=Path, help="a .keras file or a SavedModel directory")
    b.add_argument("--calibration", required=True, type=Path,
                   help=".npz with x (representative inputs) or a folder of images")
    b.add_argument("--validation", required=True, type=Path,
                   help=".npz with x and y (labels) or a folder of images with labels.csv")
    b.add_argument("--out", required=True, type=Path, help="bundle directory to create (must not exist)")
    b.add_argument("--labels", type=Path, help="labels file, one per line (default: class ids)")
    b.add_argument("--scale", type=float, help="image preprocess: float = pixel*scale+offset "
                   "(used when x is uint8 pixels; default 1/255)")
    b.add_argument("--offset", type=float, default=0.0, help="image preprocess offset (default 0)")
    b.add_argument("--image-size", metavar="HxW", help="resize image folders to HxW (default: the .keras input)")
    b.add_argument("--channels", type=int, choices=(1, 3), help="image folders: 1 = grayscale, 3 = RGB")
    _common(b, name=None)

    m = sub.add_parser("import", help="wrap an existing int8 / Edge TPU .tflite into a bundle",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("model", type=Path, help="the CPU .tflite (int8/uint8 or float), or an *_edgetpu.tflite alone")
    m.add_argument("--edgetpu", type=Path, help="the same model compiled by edgetpu_compiler")
    m.add_argument("--labels", required=True, type=Path, help="labels file, one per line, index = output index")
    m.add_argument("--validation", type=Path, help=".npz (x uint8 pixels or float, y) or image folder with labels.csv")
    m.add_argument("--calibration", type=Path, help="unlabelled samples for the baseline when there is no validation set")
    m.add_argument("--out", required=True, type=Path, help="bundle directory to create (must not exist)")
    m.add_argument("--scale", type=float, help="float = pixel*scale+offset (default: identity on the "
                   "model's quantized input)")
    m.add_argument("--offset", type=float, help="see --scale")
    m.add_argument("--name", help="bundle name (default: model file stem)")
    m.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    m.add_argument("--sign-key", type=Path, help="Ed25519 PEM key to sign the manifest (standalone use)")
    m.add_argument("--no-onnx", action="store_true", help="skip the ONNX twin (tf2onnx from_tflite) for the "
                   "cloud fallback (default: made from the CPU model, parity checked on the data)")
    m.add_argument("--quiet", action="store_true", help="no progress or table, errors only")

    i = sub.add_parser("inspect", help="print the report of a bundle directory")
    i.add_argument("bundle", type=Path, help="a bundle directory written by this tool")
    i.add_argument("--json", action="store_true", help="print the raw report.json")
    return p


def _common(p: argparse.ArgumentParser, name: str | None) -> None:
    p.add_argument("--name", default=name, help="bundle name" + (f" (default {name})" if name else
                                                                 " (default: model file stem)"))
    p.add_argument("--version", default="1.0.0", help="bundle version (default 1.0.0)")
    p.add_argument("--target", choices=("cpu", "edgetpu"), default="cpu",
                   help="edgetpu: fail unless the model fully maps (default cpu)")
    p.add_argument("--io-type", choices=("int8", "uint8"), default="int8",
                   help="int8 model input/output type (default int8)")
    p.add_argument("--min-runtime", type=int, metavar="N",
                   help="edgetpu_compiler -m: oldest Edge TPU runtime to support (default: the compiler's newest)")
    p.add_argument("--segments", type=int, metavar="N",
                   help="edgetpu_compiler -n: split into N pipelined segments, one Edge TPU each "
                        "(bundle role tflite_edgetpu_segment; default: one model)")
    p.add_argument("--max-accuracy-drop", type=float, default=1.0,
                   help="largest allowed float->int8 top-1 drop in percentage points (default 1.0)")
    p.add_argument("--sign-key", type=Path, help="Ed25519 PEM key to sign the manifest (standalone use; "
                   "normally the hub signs)")
    p.add_argument("--quiet", action="store_true", help="no progress or table, errors only")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if args.command == "digits":
            return _digits(args)
        if args.command == "build":
            from .commands import run_build
            return run_build(args)
        if args.command == "import":
            from .commands import run_import
            return run_import(args)
        if args.command == "inspect":
            return _inspect(args)
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


def load_sign_key(path: Path | None) -> Any:
    if path is None:
        return None
    from protocol.errors import BadPayload
    from protocol.signing import SigningKey

    try:
        return SigningKey.from_pem(path.read_bytes(), str(path))
    except OSError as exc:
        raise BadInput(path, f"cannot read signing key ({exc.strerror})") from None
    except BadPayload as exc:
        raise BadInput(path, exc.problem) from None


def make_progress(quiet: bool) -> Any:
    from .progress import Progress, RichProgress

    return Progress() if quiet else RichProgress()


def _digits(args: argparse.Namespace) -> int:
    from . import digits
    from .config import CompilerConfig
    from .evaluate import GatePolicy
    from .pipeline import BuildRequest, array_sha256, build

    if args.epochs < 1:
        raise BadInput("--epochs", f"must be >= 1, got {args.epochs}")
    cfg = CompilerConfig.from_env()
    key = load_sign_key(args.sign_key)
    split = digits.load_split(args.seed)
    with tempfile.TemporaryDirectory(prefix="edgefleet-digits-") as tmp:
        train_npz = Path(tmp) / "train.npz"
        np.savez(train_npz, x=digits.to_float(split.train_pixels), y=split.train_y)
        cal = digits.calibration(split, args.seed)
        val_x = digits.to_float(split.test_pixels)
        req = BuildRequest(
            out=args.out, name=args.name, version=args.version, calibration=cal,
            validation_x=val_x, validation_y=split.test_y, labels=digits.LABELS,
            preprocess=digits.PREPROCESS,
            train_digits={"data": str(train_npz), "epochs": args.epochs, "seed": args.seed},
            io_type=args.io_type, target=args.target, min_runtime=args.min_runtime, segments=args.segments,
            policy=GatePolicy(max_accuracy_drop=args.max_accuracy_drop), sign_key=key,
            lineage={"recipe": f"digits CNN, sklearn load_digits, seed {args.seed}, {args.epochs} epochs",
                     "train_sha256": array_sha256(split.train_pixels, split.train_y),
                     "calibration_sha256": array_sha256(cal),
                     "validation_sha256": array_sha256(split.test_pixels, split.test_y)},
            description="A small CNN on scikit-learn's bundled 8x8 handwritten digits "
                        "(the edgefleet end-to-end example).")
        progress = make_progress(args.quiet)
        try:
            result = build(req, cfg, progress)
        finally:
            progress.close()
    if args.holdout is not None:
        args.holdout.parent.mkdir(parents=True, exist_ok=True)
        tmp_h = args.holdout.with_name(args.holdout.name + ".tmp.npz")
        np.savez(tmp_h, x=split.test_pixels, y=split.test_y)
        os.replace(tmp_h, args.holdout)
    if not args.quiet:
        from .table import print_summary
        print_summary(result.report, result.out, result.digest)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .bundle import read_bundle
    from .table import print_summary

    b = read_bundle(args.bundle)
    try:
        report = json.loads((args.bundle / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(args.bundle / "report.json", f"cannot read the report ({exc})") from None
    if args.json:
        print(json.dumps(report, indent=1, sort_keys=True))
    else:
        print_summary(report, b.path, b.digest, b.manifest, b.problems)
    return 0 if not b.problems else 2


if __name__ == "__main__":
    sys.exit(main())
