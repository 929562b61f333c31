"""Handlers of the ``build`` and ``import`` sub-commands: turn CLI arguments into a request,
run it, print the table. Parsing lives in :mod:`compiler.__main__`."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import dataset
from .config import CompilerConfig
from .errors import BadInput
from .evaluate import GatePolicy


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise BadInput("--image-size", f"expected HxW like 224x224, got {text!r}") from None
    if h < 1 or w < 1:
        raise BadInput("--image-size", f"sizes must be >= 1, got {text!r}")
    return h, w


def run_build(args: argparse.Namespace) -> int:
    from .__main__ import load_sign_key, make_progress
    from .pipeline import BuildRequest, build
    from .table import print_summary

    model: Path = args.model
    if not model.exists():
        raise BadInput(model, "model not found")
    if model.is_dir() and not (model / "saved_model.pb").exists():
        raise BadInput(model, "directory is not a SavedModel (no saved_model.pb)")
    if model.is_file() and model.suffix != ".keras":
        raise BadInput(model, f"expected a .keras file or a SavedModel directory, got {model.suffix or 'no suffix'!r}"
                       " (use 'import' for .tflite files)")
    from .bundle import refuse_existing
    refuse_existing(args.out)
    cfg = CompilerConfig.from_env()
    key = load_sign_key(args.sign_key)
    labels = dataset.read_labels(args.labels) if args.labels else None
    spec = dataset.keras_input_spec(model)
    hw = _image_size(args.image_size) or (spec[0] if spec else None)
    channels = args.channels or (spec[1] if spec else None)
    cal = dataset.load(args.calibration, "calibration data", False, args.scale, args.offset, hw, channels, labels)
    val = dataset.load(args.validation, "validation data", True, args.scale, args.offset, hw, channels, labels)
    if cal.preprocess != val.preprocess:
        raise BadInput(args.validation, f"validation data is {val.preprocess.get('kind')} "
                       f"{val.preprocess}, calibration is {cal.preprocess}; give both in the same form")
    req = BuildRequest(
        out=args.out, name=args.name or model.stem.replace(" ", "_") or "model", version=args.version,
        calibration=cal.x, validation_x=val.x, validation_y=val.y, labels=labels,
        preprocess=cal.preprocess, model=model, io_type=args.io_type, target=args.target,
        min_runtime=args.min_runtime, segments=args.segments,
        policy=GatePolicy(max_accuracy_drop=args.max_accuracy_drop), sign_key=key,
        lineage={"model": str(model.name), "model_sha256": dataset.sha256_path(model),
                 "calibration_sha256": cal.sha256, "validation_sha256": val.sha256})
    progress = make_progress(args.quiet)
    try:
        result = build(req, cfg, progress)
    finally:
        progress.close()
    if not args.quiet:
        print_summary(result.report, result.out, result.digest)
    return 0


def run_import(args: argparse.Namespace) -> int:
    from .__main__ import load_sign_key, make_progress
    from .graph import read_graph
    from .importer import ImportRequest, default_preprocess, run_import as do_import
    from .table import print_summary
    from .bundle import refuse_existing

    refuse_existing(args.out)
    model = _read(args.model)
    et = _read(args.edgetpu) if args.edgetpu else None
    cfg = CompilerConfig.from_env()
    labels = dataset.read_labels(args.labels)
    g = read_graph(model, args.model)
    pre = default_preprocess(g, args.scale, args.offset)
    hw = (pre["height"], pre["width"]) if pre["kind"] == "image" else None
    ch = pre.get("channels")
    scale, offset = (pre["scale"], pre["offset"]) if pre["kind"] == "image" else (args.scale, args.offset or 0.0)
    val = (dataset.load(args.validation, "validation data", True, scale, offset, hw, ch, labels)
           if args.validation else None)
    cal = (dataset.load(args.calibration, "calibration data", False, scale, offset, hw, ch, labels)
           if args.calibration else None)
    lineage = {"model": args.model.name, "model_sha256": dataset.sha256_path(args.model)}
    if args.edgetpu:
        lineage.update(edgetpu_model=args.edgetpu.name, edgetpu_sha256=dataset.sha256_path(args.edgetpu))
    if val is not None:
        lineage["validation_sha256"] = val.sha256
    req = ImportRequest(out=args.out, name=args.name or args.model.stem, version=args.version,
                        model=model, model_name=str(args.model), labels=labels, edgetpu=et,
                        edgetpu_name=str(args.edgetpu) if args.edgetpu else None, validation=val,
                        calibration=cal, sign_key=load_sign_key(args.sign_key), lineage=lineage,
                        onnx=not args.no_onnx)
    progress = make_progress(args.quiet)
    try:
        result = do_import(req, cfg, progress)
    finally:
        progress.close()
    if not args.quiet:
        print_summary(result.report, result.out, result.digest)
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInput(path, "file not found") from None
    except IsADirectoryError:
        raise BadInput(path, "is a directory, expected a .tflite file") from None
    except OSError as exc:
        raise BadInput(path, f"cannot read ({exc.strerror})") from None
