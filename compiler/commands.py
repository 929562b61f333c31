"""Handlers of the ``digits``, ``build``, ``import`` and ``inspect`` sub-commands: turn CLI
arguments into a request, run it, print the table; return the exit code or raise a
:class:`compiler.errors.CompilerError`. Parsing, logging and the error -> exit code mapping live
in :mod:`compiler.__main__`, which imports this module (never the other way round). TensorFlow
and the pipeline are imported inside the handlers, so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import dataset
from .config import CompilerConfig
from .errors import BadInput, NotEdgeTpuReady, ToolFailed
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


def _min_accuracy(args: argparse.Namespace) -> float | None:
    value: float | None = getattr(args, "min_accuracy", None)
    if value is not None and not 0.0 <= value <= 1.0:
        raise BadInput(f"--min-accuracy {value}", "must be a fraction within 0..1")
    return value


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


def _finish(args: argparse.Namespace, run: Callable[[Any], Any]) -> int:
    """Run a build or import with the progress display, then print its summary (unless --quiet)."""
    from .table import print_summary

    progress = make_progress(args.quiet)
    try:
        result = run(progress)
    finally:
        progress.close()
    if not args.quiet:
        print_summary(result.report, result.out, result.digest)
    return 0


def run_build(args: argparse.Namespace) -> int:
    from .pipeline import BuildRequest, build

    model: Path = args.model
    if not model.exists():
        raise BadInput(model, "model not found")
    if model.is_file() and model.suffix.lower() in (".onnx", ".pt2", ".tflite"):
        return run_build_onnx(args)
    if model.is_dir() and not (model / "saved_model.pb").exists():
        raise BadInput(model, "directory is not a SavedModel (no saved_model.pb)")
    if model.is_file() and model.suffix != ".keras":
        raise BadInput(
            model,
            f"expected a .keras, .onnx, .pt2 or float .tflite file or a SavedModel directory, "
            f"got {model.suffix or 'no suffix'!r}",
        )
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
    if (args.scale is not None or args.offset) and cal.preprocess.get("kind") != "image":
        raise BadInput(
            "--scale",
            "applies to uint8 pixels or image folders; the calibration x holds float model inputs, used as they are",
        )
    if cal.preprocess != val.preprocess:
        raise BadInput(
            args.validation,
            f"validation data is {val.preprocess.get('kind')} "
            f"{val.preprocess}, calibration is {cal.preprocess}; give both in the same form",
        )
    req = BuildRequest(
        out=args.out,
        name=args.name or model.stem.replace(" ", "_") or "model",
        version=args.version,
        calibration=cal.x,
        validation_x=val.x,
        validation_y=val.y,
        labels=labels,
        preprocess=cal.preprocess,
        model=model,
        io_type=args.io_type,
        target=args.target,
        min_runtime=args.min_runtime,
        segments=args.segments,
        policy=GatePolicy(max_accuracy_drop=args.max_accuracy_drop, min_accuracy=_min_accuracy(args)),
        sign_key=key,
        lineage={
            "model": str(model.name),
            "model_sha256": dataset.sha256_path(model),
            "calibration_sha256": cal.sha256,
            "validation_sha256": val.sha256,
        },
    )
    return _finish(args, lambda progress: build(req, cfg, progress))


def run_build_onnx(args: argparse.Namespace) -> int:
    """``build MODEL.onnx|.pt2|.tflite``: the ONNX route (compiler/onnx_import.py). A .pt2 is
    exported to ONNX first; a float .tflite goes through tf2onnx (NHWC kept) to be quantized."""
    from . import onnx_import
    from .bundle import refuse_existing
    from .pipeline import BuildRequest, build

    model: Path = args.model
    refuse_existing(args.out)
    cfg = CompilerConfig.from_env()
    key = load_sign_key(args.sign_key)
    labels = dataset.read_labels(args.labels) if args.labels else None
    kind = {".onnx": "onnx", ".pt2": "torch.export", ".tflite": "float tflite"}[model.suffix.lower()]
    with tempfile.TemporaryDirectory(prefix="edgefleet-onnx-in-") as tmp:
        if kind == "torch.export":
            from .torch_import import pt2_to_onnx

            data = pt2_to_onnx(model, Path(tmp) / "model.onnx", cfg.convert_timeout_s)
            src = onnx_import.read(data, model)
        elif kind == "float tflite":
            src = _float_tflite_source(model, cfg)
        else:
            src = onnx_import.read_file(model)
    spec = src.image_spec()
    hw = _image_size(args.image_size) or (spec[0] if spec else None)
    channels = args.channels or (spec[1] if spec else None)
    plan = onnx_import.plan_preprocess(args.mean, args.std, args.channel_order, int(channels or 0))
    scale, offset = args.scale, args.offset
    if plan is not None:
        if args.scale is not None or args.offset:
            raise BadInput("--scale", "give either --scale/--offset or --mean/--std/--channel-order, not both")
        scale, offset = plan.scale, plan.offset
        if plan.fold is not None:
            src = onnx_import.fold_preprocess(src, plan.fold)
    cal = dataset.load(args.calibration, "calibration data", False, scale, offset, hw, channels, labels)
    val = dataset.load(args.validation, "validation data", True, scale, offset, hw, channels, labels)
    if cal.preprocess != val.preprocess:
        raise BadInput(
            args.validation,
            f"validation data is {val.preprocess.get('kind')} {val.preprocess}, calibration is "
            f"{cal.preprocess}; give both in the same form",
        )
    if cal.preprocess.get("kind") != "image" and (plan is not None or args.scale is not None or args.offset):
        raise BadInput(
            "--mean/--std/--scale",
            "apply to uint8 pixels or image folders; the calibration x holds float model inputs, used as they are",
        )
    cal_x = onnx_import.to_tflite_layout(cal.x, src, args.calibration)
    val_x = onnx_import.to_tflite_layout(val.x, src, args.validation)
    source = {
        "kind": kind,
        "file": model.name,
        "onnx_input": {"name": src.input_name, "shape": list(src.input_shape), "layout": src.layout},
        "onnx_ops": list(src.ops),
        "opset": src.opset,
        "preprocess": plan.to_dict() if plan is not None else None,
    }
    req = BuildRequest(
        out=args.out,
        name=args.name or model.stem.replace(" ", "_") or "model",
        version=args.version,
        calibration=cal_x,
        validation_x=val_x,
        validation_y=val.y,
        labels=labels,
        preprocess=cal.preprocess,
        onnx_source=src,
        source=source,
        io_type=args.io_type,
        target=args.target,
        min_runtime=args.min_runtime,
        segments=args.segments,
        policy=GatePolicy(max_accuracy_drop=args.max_accuracy_drop, min_accuracy=_min_accuracy(args)),
        sign_key=key,
        lineage={
            "model": str(model.name),
            "model_sha256": dataset.sha256_path(model),
            "calibration_sha256": cal.sha256,
            "validation_sha256": val.sha256,
        },
    )
    return _finish(args, lambda progress: build(req, cfg, progress))


def _float_tflite_source(model: Path, cfg: CompilerConfig) -> Any:
    """A float .tflite as an NHWC ONNX source (tf2onnx), or refused with the reason."""
    from . import onnx_import
    from .graph import read_graph
    from .tflite_onnx import convert

    data = _read(model)
    g = read_graph(data, model)
    quantized = sorted({t.dtype for t in g.tensors if not t.constant and t.dtype in ("INT8", "UINT8", "INT16")})
    if quantized:
        raise BadInput(
            model,
            f"is already quantized ({', '.join(quantized)} tensors): build quantizes float models; "
            "use 'edgefleet-compile import' for an int8 or Edge TPU .tflite",
        )
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise BadInput(model, f"has {len(g.inputs)} inputs and {len(g.outputs)} outputs; build takes one of each")
    try:
        twin = convert(data, cfg.convert_timeout_s, str(model))
    except ToolFailed as exc:
        raise BadInput(model, f"cannot be quantized here: it does not convert to ONNX ({exc})") from None
    src = onnx_import.read(twin.data, model)
    return onnx_import.nchw_front(src) if len(src.input_shape) == 4 else src


def run_import(args: argparse.Namespace) -> int:
    from . import tasks
    from .bundle import refuse_existing
    from .graph import read_graph
    from .importer import ImportRequest, run_import as do_import

    refuse_existing(args.out)
    model = _read(args.model)
    et = _read(args.edgetpu) if args.edgetpu else None
    cfg = CompilerConfig.from_env()
    labels = dataset.read_labels(args.labels) if args.labels else ()
    g = read_graph(model, args.model)
    # the one preprocess, --scale/--offset honoured or refused: the data and the bundle share it
    pre = tasks.preprocess(tasks.request_input(g, args.model.name), args.scale, args.offset)
    hw = (pre["height"], pre["width"]) if pre["kind"] == "image" else None
    ch = pre.get("channels")
    scale, offset = (pre["scale"], pre["offset"]) if pre["kind"] == "image" else (None, 0.0)
    val = (
        dataset.load(args.validation, "validation data", True, scale, offset, hw, ch, labels)
        if args.validation
        else None
    )
    cal = (
        dataset.load(args.calibration, "calibration data", False, scale, offset, hw, ch, labels)
        if args.calibration
        else None
    )
    lineage = {"model": args.model.name, "model_sha256": dataset.sha256_path(args.model)}
    if args.edgetpu:
        lineage.update(edgetpu_model=args.edgetpu.name, edgetpu_sha256=dataset.sha256_path(args.edgetpu))
    if val is not None:
        lineage["validation_sha256"] = val.sha256
    req = ImportRequest(
        out=args.out,
        name=args.name or args.model.stem,
        version=args.version,
        model=model,
        model_name=str(args.model),
        labels=labels,
        edgetpu=et,
        edgetpu_name=str(args.edgetpu) if args.edgetpu else None,
        validation=val,
        calibration=cal,
        sign_key=load_sign_key(args.sign_key),
        lineage=lineage,
        onnx=not args.no_onnx,
        task=args.task,
        preprocess=pre,
        truth=args.truth,
        truth_images=args.calibration if args.calibration and args.calibration.is_dir() else None,
        min_metric=args.min_metric,
    )
    return _finish(args, lambda progress: do_import(req, cfg, progress))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadInput(path, "file not found") from None
    except IsADirectoryError:
        raise BadInput(path, "is a directory, expected a .tflite file") from None
    except OSError as exc:
        raise BadInput(path, f"cannot read ({exc.strerror})") from None


def run_digits(args: argparse.Namespace) -> int:
    from . import digits
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
            out=args.out,
            name=args.name,
            version=args.version,
            calibration=cal,
            validation_x=val_x,
            validation_y=split.test_y,
            labels=digits.LABELS,
            preprocess=digits.PREPROCESS,
            train_digits={"data": str(train_npz), "epochs": args.epochs, "seed": args.seed},
            io_type=args.io_type,
            target=args.target,
            min_runtime=args.min_runtime,
            segments=args.segments,
            policy=GatePolicy(max_accuracy_drop=args.max_accuracy_drop, min_accuracy=_min_accuracy(args)),
            sign_key=key,
            lineage={
                "recipe": f"digits CNN, sklearn load_digits, seed {args.seed}, {args.epochs} epochs",
                "train_sha256": array_sha256(split.train_pixels, split.train_y),
                "calibration_sha256": array_sha256(cal),
                "validation_sha256": array_sha256(split.test_pixels, split.test_y),
            },
            description="A small CNN on scikit-learn's bundled 8x8 handwritten digits "
            "(the edgefleet end-to-end example).",
        )
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


def run_cocompile(args: argparse.Namespace) -> int:
    """``cocompile A.tflite B.tflite --out DIR``: one edgetpu_compiler run over the models, so
    they share one Edge TPU's parameter cache (compiler.edgetpu.run_together); writes
    ``DIR/<stem>_edgetpu.tflite`` per model and ``DIR/cocompile.json``. Each output is then
    bundled with its own CPU model (``import A.tflite --edgetpu DIR/A_edgetpu.tflite``) and rolled
    out on its own channel (docs/lifecycle.md)."""
    from .edgetpu import run_together

    cfg = CompilerConfig.from_env()
    if cfg.edgetpu_compiler is None:
        raise BadInput("edgetpu_compiler", "not found (put it on PATH or set EDGEFLEET_EDGETPU_COMPILER)")
    if args.out.exists():
        raise BadInput(args.out, "already exists; choose a new --out")
    models = [(m.name.removesuffix(".tflite"), _read(m)) for m in args.models]
    res = run_together(cfg.edgetpu_compiler, models, cfg.edgetpu_timeout_s, args.min_runtime)
    if res.problem is not None:
        raise NotEdgeTpuReady("cocompile", f"edgetpu_compiler: {res.problem}")
    args.out.mkdir(parents=True)
    done: list[dict[str, Any]] = []
    doc = {"command": list(res.command), "models": done}
    for (stem, _), part in zip(models, res.outputs, strict=True):
        assert part.output is not None
        (args.out / part.name).write_bytes(part.output)
        done.append({"input": stem, "output": part.name, "report": part.report.to_dict()})
        r = part.report
        print(
            f"{part.name}: {r.ops_on_tpu}/{r.total_ops} ops on the Edge TPU, parameters cached on chip "
            f"{r.on_chip_used} B, off chip {r.off_chip_used} B"
        )
    (args.out / "cocompile.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
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
