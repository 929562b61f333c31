"""``import``: wrap an existing int8 / Edge-TPU-compiled ``.tflite`` (e.g. Coral's model zoo)
into the same kind of bundle a build makes: inspection, Edge TPU pre-check, metrics when
validation data is given, drift baseline, self-test vectors, report, model card.

Rules:

* MODEL compiled for the Edge TPU (has ``edgetpu-custom-op``) and no CPU model: the bundle holds
  only ``model_edgetpu.tflite`` and ``requirements.edgetpu = "required"``; nothing can be run
  here (the op needs the delegate), so metrics, baseline outputs and self-test cases are empty
  and the report says so.
* MODEL a CPU model (int8/uint8, or float) plus ``--edgetpu X``: X must be compiled and have the
  same input/output shapes and types; ``requirements.edgetpu = "optional"``.
* Default preprocess for a quantized image input is the identity on pixels
  (``scale = s_in``, ``offset = -(zp - zp_pixel) * s_in``), which is how Coral's models are fed;
  ``--scale/--offset`` override it.
* ONNX twin (role ``onnx``, for the cloud fallback): ``tf2onnx.convert.from_tflite`` on the CPU
  model, in a child with the conversion timeout (:mod:`compiler.tflite_onnx`). Its parity with
  LiteRT (top-1 agreement, max abs diff in output units and in LSB) is measured on the
  validation (else calibration) data and recorded in ``report.onnx``; below 99 % agreement the
  twin is not shipped. A uint8/int8 ONNX input gets ``preprocess.input_quantization`` (the
  TFLite input's scale and zero point). A TPU-only import has no CPU model to convert: no twin,
  and the report says so. A failed conversion is reported and the bundle ships without a twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.bundle import Requirements
from protocol.signing import SigningKey

from . import baseline, selftest
from .bundle import BundleFile, BundleSpec, refuse_existing, write_bundle
from .config import CompilerConfig
from .dataset import Samples
from .errors import BadInput, ToolFailed
from .evaluate import metrics
from .graph import Graph, read_graph
from .inference import TfliteRunner
from .pipeline import BuildResult, _json, _runtime_versions
from .precheck import predict
from .progress import Progress
from .report import SCHEMA, machine, model_card
from .tflite_onnx import MIN_AGREEMENT, OPSET, OnnxTwin, convert, parity


@dataclass(frozen=True)
class ImportRequest:
    out: Path
    name: str
    version: str
    model: bytes
    model_name: str
    labels: tuple[str, ...]
    edgetpu: bytes | None = None
    edgetpu_name: str | None = None
    validation: Samples | None = None
    calibration: Samples | None = None
    sign_key: SigningKey | None = None
    lineage: dict[str, Any] | None = None
    selftest_cases: int = 5
    onnx: bool = True  # make the ONNX twin (tf2onnx from_tflite) of the CPU model


def default_preprocess(g: Graph, scale: float | None, offset: float | None) -> dict[str, Any]:
    t = g.input
    if len(t.shape) == 4 and t.shape[-1] in (1, 3):
        if scale is None:
            if t.dtype in ("UINT8", "INT8") and t.scale:
                s, zp = t.scale[0], t.zero_point[0] if t.zero_point else 0
                pixel_zp = 0 if t.dtype == "UINT8" else -128
                scale, offset = s, -(zp - pixel_zp) * s
            else:
                scale, offset = 1.0 / 255.0, 0.0
        return {
            "kind": "image",
            "height": t.shape[1],
            "width": t.shape[2],
            "channels": t.shape[3],
            "scale": float(scale),
            "offset": float(offset or 0.0),
        }
    return {"kind": "tensor"}


def _same_io(a: Graph, b: Graph) -> str | None:
    for what, x, y in (("input", a.input, b.input), ("output", a.output, b.output)):
        if x.shape != y.shape or x.dtype != y.dtype:
            return f"{what} {x.dtype}{list(x.shape)} differs from the CPU model's {y.dtype}{list(y.shape)}"
    return None


def run_import(req: ImportRequest, cfg: CompilerConfig, progress: Progress | None = None) -> BuildResult:
    progress = progress or Progress()
    refuse_existing(req.out)
    progress.start("inspect", "reading the model")
    g = read_graph(req.model, req.model_name)
    et_graph = read_graph(req.edgetpu, req.edgetpu_name) if req.edgetpu is not None else None
    if et_graph is not None:
        if not et_graph.edgetpu_compiled:
            raise BadInput(req.edgetpu_name, "holds no edgetpu-custom-op: not an edgetpu_compiler output")
        if g.edgetpu_compiled:
            raise BadInput(req.model_name, "is itself compiled for the Edge TPU; pass the CPU model as MODEL")
        if (why := _same_io(et_graph, g)) is not None:
            raise BadInput(req.edgetpu_name, why)
    num_classes = int(np.prod(g.output.shape[1:]))
    if len(req.labels) != num_classes:
        raise BadInput("labels", f"{len(req.labels)} labels but the model has {num_classes} outputs")
    tpu_only = g.edgetpu_compiled
    quantized = g.input.dtype in ("INT8", "UINT8") and not g.float_ops()
    pre = predict(g)
    progress.done(
        "inspect", f"{len(g.ops)} ops; " + ("Edge TPU model" if tpu_only else "int8" if quantized else "float")
    )

    val, cal = req.validation, req.calibration
    if val is not None and val.y is not None:
        bad = val.y[(val.y < 0) | (val.y >= num_classes)]
        if len(bad):
            raise BadInput("validation data", f"label {int(bad[0])} is out of range 0..{num_classes - 1}")
    for what, s in (("validation data", val), ("calibration data", cal)):
        if s is not None and tuple(s.x.shape[1:]) != tuple(g.input.shape[1:]):
            raise BadInput(what, f"samples have shape {list(s.x.shape[1:])}, the model input is {list(g.input.shape)}")

    cpu_name = "model_int8.tflite" if quantized else "model_float.tflite"
    artifacts: dict[str, dict[str, Any]] = {}
    scores = None
    data = val or cal
    runner = None
    progress.start("evaluate", "metrics on the validation set")
    if not tpu_only:
        runner = TfliteRunner(req.model, req.model_name)
        m = None
        if data is not None:
            scores = runner.scores(data.x)
            if val is not None and val.y is not None:
                m = metrics(scores, val.y)
        lat = {
            "1": round(
                runner.latency_ms(
                    data.x if data is not None else np.zeros((1,) + tuple(g.input.shape[1:]), np.float32)
                ),
                4,
            )
        }
        artifacts[cpu_name] = {
            "size": len(req.model),
            "sha256": _sha(req.model),
            "metrics": m.to_dict() if m else None,
            "latency_ms": lat,
        }
    et_bytes = req.model if tpu_only else req.edgetpu
    if et_bytes is not None:
        artifacts["model_edgetpu.tflite"] = {
            "size": len(et_bytes),
            "sha256": _sha(et_bytes),
            "metrics": None,
            "latency_ms": None,
            "note": "needs the Edge TPU delegate; not run on this machine",
        }
    progress.done("evaluate", "no data: metrics skipped" if data is None else f"{len(data.x)} samples")

    preprocess = (
        data.preprocess
        if data is not None and data.preprocess.get("kind") == "image"
        else default_preprocess(g, None, None)
    )
    onnx_doc, twin = _onnx_twin(req, cfg, runner, data, progress)
    if twin is not None and runner is not None and twin.input_dtype in ("uint8", "int8"):
        preprocess = dict(
            preprocess, input_quantization={"scale": runner.input.scale, "zero_point": runner.input.zero_point}
        )
    if twin is not None:
        artifacts["model.onnx"] = {
            "size": len(twin.data),
            "sha256": _sha(twin.data),
            "metrics": onnx_doc.get("metrics"),
            "latency_ms": None,
            "parity": onnx_doc.get("parity"),
        }

    progress.start("baseline", "drift baseline and self-test vectors")
    files: list[BundleFile] = []
    if not tpu_only:
        files.append(BundleFile(cpu_name, "tflite_int8" if quantized else "tflite_float", req.model))
    if et_bytes is not None:
        files.append(BundleFile("model_edgetpu.tflite", "tflite_edgetpu", et_bytes))
    if twin is not None:
        files.append(BundleFile("model.onnx", "onnx", twin.data))
    if data is not None and scores is not None:
        files.append(
            BundleFile("baseline.json", "baseline", _json(baseline.build(data.x, scores, preprocess, num_classes)))
        )
    if runner is not None and data is not None:
        st = selftest.build(runner, cpu_name, data.x, val.y if val is not None else None, req.selftest_cases)
    else:
        st = {
            "schema": selftest.SCHEMA,
            "artifact": "model_edgetpu.tflite" if tpu_only else cpu_name,
            "tolerance": selftest.DEFAULT_TOLERANCE,
            "max_latency_ms": selftest.DEFAULT_MAX_LATENCY_MS,
            "cases": [],
            "smoke": True,
            "note": "no reference outputs: "
            + ("the only artifact needs an Edge TPU" if tpu_only else "no validation or calibration data given")
            + "; agents run a smoke test (the model loads and one invoke gives finite outputs in time)",
        }
    files.append(BundleFile("selftest.json", "selftest", _json(st)))
    progress.done("baseline", f"{len(st['cases'])} self-test cases")

    min_rt = None
    et_doc: dict[str, Any] = {
        "compiled": et_bytes is not None,
        "imported": et_bytes is not None,
        "precheck": pre.to_dict(),
        "ops_on_tpu": None,
        "ops_on_cpu": None,
    }
    if et_bytes is not None:
        eg = et_graph or g
        cpu_ops = [op.name for op in eg.ops if op.custom != "edgetpu-custom-op"]
        et_doc.update(
            ops_on_cpu=len(cpu_ops),
            note="imported Edge TPU model"
            + (f"; CPU ops left: {sorted(set(cpu_ops))}" if cpu_ops else "; every op inside edgetpu-custom-op"),
        )
    else:
        et_doc["note"] = "no Edge TPU artifact imported; " + pre.summary()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "name": req.name,
        "version": req.version,
        "task": "classification",
        "num_classes": num_classes,
        "labels": list(req.labels),
        "target": "edgetpu" if et_bytes else "cpu",
        "io_type": g.input.dtype.lower(),
        "description": f"Imported from {req.model_name}",
        "lineage": dict(req.lineage or {}, **_runtime_versions()),
        "model": {
            "input": g.input.to_dict(),
            "output": g.output.to_dict(),
            "ops": g.op_counts(),
            "float_ops": [op.name for op in g.float_ops()] if not tpu_only else [],
        },
        "artifacts": artifacts,
        "gate": None,
        "edgetpu": et_doc,
        "onnx": onnx_doc,
        "gate_note": "none: an import has no float reference to compare against",
        "validation_samples": len(val.x) if val is not None else 0,
        "machine": machine(),
    }
    files += [
        BundleFile("report.json", "report", _json(report)),
        BundleFile("model_card.md", "model_card", model_card(report).encode()),
        BundleFile("labels.txt", "labels", ("\n".join(req.labels) + "\n").encode()),
    ]
    model_doc = {
        "task": "classification",
        "num_classes": num_classes,
        "preprocess": preprocess,
        "input": {"shape": list(g.input.shape), "dtype": "float32"},
        "output": {"shape": list(g.output.shape)},
        "labels": "labels.txt",
        "imported": True,
        "edgetpu": {k: et_doc.get(k) for k in ("compiled", "ops_on_cpu", "note")},
    }
    if twin is not None:
        model_doc["onnx"] = {
            k: onnx_doc[k] for k in ("input", "output", "input_dtype", "output_dtype", "output_quantization")
        }
    policy = "required" if tpu_only else "optional"
    progress.start("bundle", "writing the bundle")
    digest = write_bundle(
        req.out,
        BundleSpec(
            req.name, req.version, cfg.created, model_doc, Requirements(edgetpu=policy, min_edgetpu_runtime=min_rt)
        ),
        files,
        req.sign_key,
    )
    progress.done("bundle", f"digest {digest[:16]}…")
    return BuildResult(req.out, digest, report)


def _onnx_twin(
    req: ImportRequest, cfg: CompilerConfig, runner: TfliteRunner | None, data: Samples | None, progress: Progress
) -> tuple[dict[str, Any], OnnxTwin | None]:
    """(report section, the twin to ship or None)."""
    if runner is None:
        return {
            "shipped": False,
            "note": "no ONNX twin: the imported model is compiled for the Edge TPU "
            "(edgetpu-custom-op has no ONNX form) and no CPU model was given; import the CPU .tflite "
            "with --edgetpu X to get one",
        }, None
    if not req.onnx:
        return {"shipped": False, "note": "no ONNX twin: --no-onnx"}, None
    progress.start("onnx", "ONNX twin (tf2onnx from_tflite)")
    try:
        twin = convert(req.model, cfg.convert_timeout_s, req.model_name)
    except ToolFailed as exc:
        progress.done("onnx", f"failed: {exc}")
        return {"shipped": False, "note": f"no ONNX twin: {exc}"}, None
    doc: dict[str, Any] = {
        "shipped": True,
        "from": f"tf2onnx {twin.tf2onnx} convert.from_tflite, opset {OPSET}",
        "input": twin.input_name,
        "input_dtype": twin.input_dtype,
        "input_shape": list(twin.input_shape),
        "output": twin.output_name,
        "output_dtype": twin.output_dtype,
        "output_quantization": (
            {"scale": runner.output.scale, "zero_point": runner.output.zero_point}
            if twin.output_dtype in ("uint8", "int8")
            else None
        ),
        "convert_seconds": twin.seconds,
        "parity": None,
    }
    if data is None:
        doc["note"] = "parity not measured: no validation or calibration data given"
        progress.done("onnx", doc["note"])
        return doc, twin
    par, scores = parity(twin, runner, data.x)
    doc["parity"] = par.to_dict()
    if req.validation is not None and req.validation.y is not None and data is req.validation:
        doc["metrics"] = metrics(scores, req.validation.y).to_dict()
    line = f"top-1 agreement {par.top1_agreement:.2%} on {par.samples} samples, max abs diff {par.max_abs_diff:.3g}" + (
        f" ({par.max_abs_diff_lsb} LSB)" if par.max_abs_diff_lsb is not None else ""
    )
    if not par.ok:
        doc.update(shipped=False, note=f"ONNX twin not shipped: {line} < {MIN_AGREEMENT:.0%}")
        progress.done("onnx", doc["note"])
        return doc, None
    doc["note"] = f"parity with LiteRT: {line}"
    progress.done("onnx", doc["note"])
    return doc, twin


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
