"""The build: stages in order, from a trained model (or the digits recipe) to a bundle.

``build(request, config, progress) -> BuildResult``. Stages: convert (child process: train?,
load, float, int8, onnx) -> inspect (ops, float ops, static shapes) -> evaluate (metrics, gate)
-> twin (the ONNX twin's parity with the float TFLite on the validation inputs: verified, or
withheld from the bundle, :mod:`compiler.parity`) -> edgetpu (pre-check, compiler if present)
-> baseline -> selftest -> report -> bundle. A failed gate raises :class:`GateFailed` carrying
the report, and nothing is written to ``out``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from protocol.bundle import Requirements
from protocol.signing import SigningKey
from protocol.twin import Twin

from . import baseline, convert, selftest, tasks
from .bundle import BundleFile, BundleSpec, refuse_existing, write_bundle
from .config import CompilerConfig
from .errors import BadInput, GateFailed, NotEdgeTpuReady, ToolFailed
from .evaluate import GatePolicy, gate, metrics
from .graph import Graph, read_graph
from .inference import OnnxRunner, TfliteRunner
from .onnx_import import OnnxSource, tflite_input_shape
from .parity import Comparison, choose_metric, conversion_failed, judge, not_made
from .progress import Progress
from .report import SCHEMA, machine, model_card


@dataclass(frozen=True)
class BuildRequest:
    out: Path
    name: str
    version: str
    calibration: np.ndarray  # float model inputs (N, ...)
    validation_x: np.ndarray  # float model inputs (N, ...)
    validation_y: np.ndarray | None
    labels: tuple[str, ...] | None  # None: class ids "0".."K-1"
    preprocess: dict[str, Any]
    model: Path | None = None  # .keras or SavedModel dir
    # an ONNX source (torch.onnx.export, or a .pt2 exported to ONNX): onnx2tf converts it and the
    # file itself is the twin; x arrays are in the TFLite (NHWC) layout (compiler/onnx_import.py)
    onnx_source: OnnxSource | None = None
    source: dict[str, Any] | None = None  # report["source"]: kind, file, layout, preprocess fold
    train_digits: dict[str, Any] | None = None
    io_type: str = "int8"
    target: str = "cpu"  # cpu | edgetpu
    min_runtime: int | None = None  # edgetpu_compiler -m
    segments: int | None = None  # edgetpu_compiler -n (pipelined segments, N Edge TPUs)
    policy: GatePolicy = GatePolicy()
    sign_key: SigningKey | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    selftest_cases: int = 5


@dataclass(frozen=True)
class BuildResult:
    out: Path
    digest: str
    report: dict[str, Any]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_sha256(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is not None:
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def check_request(req: BuildRequest) -> None:
    """Bad-input checks that need no model: run before any expensive work."""
    refuse_existing(req.out)
    if len(req.calibration) == 0:
        raise BadInput("calibration data", "is empty")
    if len(req.validation_x) == 0:
        raise BadInput("validation data", "is empty")
    for what, arr in (("calibration data", req.calibration), ("validation data", req.validation_x)):
        if not np.issubdtype(arr.dtype, np.floating):
            raise BadInput(what, f"x must be float model inputs here, got dtype {arr.dtype}")
        if not np.isfinite(arr).all():
            raise BadInput(what, "x contains NaN or infinite values")
    if req.calibration.shape[1:] != req.validation_x.shape[1:]:
        raise BadInput(
            "validation data",
            f"samples have shape {list(req.validation_x.shape[1:])}, calibration has {list(req.calibration.shape[1:])}",
        )
    y = req.validation_y
    if y is not None:
        if len(y) != len(req.validation_x):
            raise BadInput("validation data", f"{len(req.validation_x)} samples but {len(y)} labels")
        if not np.issubdtype(y.dtype, np.integer):
            raise BadInput("validation data", f"y must be integer class ids, got dtype {y.dtype}")
        if req.labels is not None:
            _check_y_range(y, len(req.labels), f"{len(req.labels)} labels")
    if req.io_type not in ("int8", "uint8"):
        raise BadInput("--io-type", f"must be int8 or uint8, got {req.io_type!r}")
    if req.min_runtime is not None and not 10 <= req.min_runtime <= 99:
        raise BadInput("--min-runtime", f"Edge TPU runtime versions are 10 and up, got {req.min_runtime}")
    if req.target not in ("cpu", "edgetpu"):
        raise BadInput("--target", f"must be cpu or edgetpu, got {req.target!r}")
    if req.segments is not None and not 1 <= req.segments <= 64:
        raise BadInput("--segments", f"must be 1..64 (one Edge TPU per segment), got {req.segments}")


def _check_y_range(y: np.ndarray, n: int, why: str) -> None:
    bad = y[(y < 0) | (y >= n)]
    if len(bad):
        raise BadInput("validation data", f"label {int(bad[0])} is out of range 0..{n - 1} ({why})")


def build(req: BuildRequest, cfg: CompilerConfig, progress: Progress | None = None) -> BuildResult:
    progress = progress or Progress()
    check_request(req)
    with tempfile.TemporaryDirectory(prefix="edgefleet-build-") as work_s:
        work = Path(work_s)
        converted = _convert(req, cfg, work, progress)
        return _finish(req, cfg, converted, progress)


def _convert(req: BuildRequest, cfg: CompilerConfig, work: Path, progress: Progress) -> convert.Converted:
    cal = convert.save_calibration(req.calibration, work / "calibration.npy")
    src = req.onnx_source
    onnx_path = None
    if src is not None:
        onnx_path = work / f"{req.name}.onnx"
        onnx_path.write_bytes(src.data)
    job = convert.ConvertJob(
        calibration=cal,
        out_dir=work / "convert",
        io_type=req.io_type,
        model=req.model,
        train_digits=req.train_digits,
        target=req.target,
        onnx=src is None,  # an ONNX source is its own twin: no tf2onnx round trip
        onnx_model=onnx_path,
    )

    def on_event(ev: dict[str, Any]) -> None:
        if ev.get("event") != "stage":
            return
        if ev["status"] == "start":
            progress.start(ev["stage"], _STAGE_TEXT.get(ev["stage"], ""))
        elif ev.get("problem"):
            progress.done(ev["stage"], f"failed ({ev['seconds']:.1f} s): {ev['problem']}")
        else:
            progress.done(ev["stage"], f"{_STAGE_TEXT.get(ev['stage'], '')} ({ev['seconds']:.1f} s)")

    c = convert.run(job, cfg.convert_timeout_s, on_event)
    if src is None:
        return c
    want = tflite_input_shape(src)
    if tuple(c.input_shape) != want:
        raise ToolFailed(
            "onnx2tf",
            f"converted input has shape {list(c.input_shape)}, expected {list(want)} from ONNX input "
            f"{src.input_name!r} {list(src.input_shape)}; refusing a model whose layout we cannot vouch for",
        )
    return dataclasses.replace(c, onnx=src.data, onnx_input=src.input_name, onnx_output=src.output_name)


_STAGE_TEXT = {
    "onnx2tf": "ONNX -> SavedModel (onnx2tf, NCHW -> NHWC)",
    "train": "training the digits CNN",
    "load": "loading the model",
    "float": "float TFLite",
    "int8": "full-int8 TFLite (calibrating)",
    "onnx": "ONNX twin (tf2onnx, opset 17)",
}


def _finish(req: BuildRequest, cfg: CompilerConfig, c: convert.Converted, progress: Progress) -> BuildResult:
    progress.start("inspect", "reading the int8 graph")
    g = read_graph(c.int8_tflite, "model_int8.tflite")
    float_ops = [op.name for op in g.float_ops()]
    if req.target == "edgetpu":
        if float_ops:
            raise NotEdgeTpuReady("model_int8.tflite", f"ops left in float: {sorted(set(float_ops))}")
        dyn = [t.name for t in g.tensors if t.dynamic]
        if dyn:
            raise NotEdgeTpuReady("model_int8.tflite", f"dynamic shapes in tensors {dyn[:3]}")
    progress.done("inspect", f"{len(g.ops)} ops, {len(float_ops)} in float")

    progress.start("evaluate", "float / int8 / ONNX on the validation set")
    x, y = req.validation_x, req.validation_y
    float_run = TfliteRunner(c.float_tflite, "model_float.tflite")
    int8_run = TfliteRunner(c.int8_tflite, "model_int8.tflite")
    f_scores = float_run.scores(x)
    q_scores = int8_run.scores(x)
    num_classes = int(np.prod(f_scores.shape[1:]))
    labels = req.labels if req.labels is not None else tuple(str(i) for i in range(num_classes))
    if num_classes != len(labels):
        raise BadInput("labels", f"{len(labels)} labels but the model has {num_classes} outputs")
    # a build makes classifiers (its gate scores class labels): the signature must say so
    sig = tasks.read_signature(tasks.with_shapes(g, int8_run.shapes), labels, None, "model_int8.tflite")
    if sig.task != "classification":
        raise BadInput(
            "model",
            f"its outputs look like a {sig.task} model's; build makes classifiers (the gate scores class "
            "labels): convert it yourself and use 'import'",
        )
    if y is not None:
        _check_y_range(y, num_classes, f"the model has {num_classes} outputs")
    src = req.onnx_source
    onnx_run = OnnxRunner(c.onnx, nchw=src is not None and src.layout == "nchw") if c.onnx is not None else None
    o_scores = onnx_run.scores(x) if onnx_run is not None else None
    artifacts: dict[str, dict[str, Any]] = {}
    gate_doc = None
    if y is not None:
        mf = metrics(f_scores, y)
        mq = metrics(q_scores, y, f_scores)
        mo = metrics(o_scores, y, f_scores) if o_scores is not None else None
        # an ONNX source: the float original is the model the user trained; the gate holds the
        # int8 model to it (not to our float conversion of it)
        original = metrics(o_scores, y) if src is not None and o_scores is not None else None
        result = gate(original or mf, mq if original is None else metrics(q_scores, y, o_scores), req.policy)
        gate_doc = result.to_dict()
        per = {"model_float.tflite": mf, "model_int8.tflite": mq, "model.onnx": mo}
    else:
        result = None
        per = {}
    for name, data, runner in (
        ("model_int8.tflite", c.int8_tflite, int8_run),
        ("model_float.tflite", c.float_tflite, float_run),
        ("model.onnx", c.onnx, onnx_run),
    ):
        if data is None or runner is None:
            continue
        m = per.get(name)
        artifacts[name] = {
            "size": len(data),
            "sha256": _sha(data),
            "metrics": m.to_dict() if m is not None else None,
            "latency_ms": {"1": round(runner.latency_ms(x), 4)},
        }
    progress.done("evaluate", _gate_line(gate_doc))

    progress.start("twin", "ONNX twin vs float TFLite on the validation inputs")
    twin = _twin(c, float_run, f_scores, o_scores)
    onnx = c.onnx if twin.shipped else None
    if onnx is None:
        artifacts.pop("model.onnx", None)
    progress.done("twin", twin.line())

    progress.start("edgetpu", "Edge TPU pre-check / compiler")
    et_doc, et_files, edgetpu_policy, min_rt = _edgetpu(req, cfg, g, c.int8_tflite)
    progress.done("edgetpu", et_doc.get("note", ""))

    progress.start("baseline", "drift baseline")
    base = baseline.build(x, q_scores, req.preprocess, num_classes)
    progress.done("baseline", f"{len(base['inputs']) + len(base['outputs'])} features, {base['samples']} samples")
    progress.start("selftest", "self-test vectors")
    st = selftest.build(int8_run, "model_int8.tflite", x, y, req.selftest_cases)
    progress.done("selftest", f"{len(st['cases'])} cases")

    report: dict[str, Any] = {
        "schema": SCHEMA,
        "name": req.name,
        "version": req.version,
        "task": "classification",
        "num_classes": num_classes,
        "labels": list(labels),
        "target": req.target,
        "io_type": req.io_type,
        "description": req.description,
        "lineage": dict(req.lineage, **{f"tool:{k}": v for k, v in sorted(c.versions.items())}, **_runtime_versions()),
        "model": {
            "input": g.input.to_dict(),
            "output": g.output.to_dict(),
            "float_input_shape": list(c.input_shape),
            "ops": g.op_counts(),
            "float_ops": float_ops,
            "rewrapped_static_batch": c.rewrapped_static_batch,
            "onnx": {"input": c.onnx_input, "output": c.onnx_output},
        },
        "artifacts": artifacts,
        "gate": gate_doc,
        "twin": twin.to_dict(),
        "edgetpu": et_doc,
        "source": _source_doc(req, o_scores, q_scores, y),
        "validation_samples": len(x),
        "calibration_samples": len(req.calibration),
        "machine": machine(),
        "stage_seconds": dict(c.seconds, **progress.seconds),
    }
    if result is not None and not result.passed:
        raise GateFailed(
            "; ".join(
                f"{ch.name} {ch.value} {'is below the floor' if ch.name == 'int8_accuracy' else 'exceeds limit'} "
                f"{ch.limit} ({ch.detail})"
                for ch in result.failures()
            ),
            report,
        )

    progress.start("bundle", "writing the bundle")
    et_summary = {k: et_doc.get(k) for k in ("compiled", "ops_on_tpu", "ops_on_cpu", "note")}
    if et_doc.get("segments"):
        et_summary["segments"] = et_doc["segments"]  # N tflite_edgetpu_segment artifacts, in order
    model_doc = {
        "task": "classification",
        "signature": sig.to_dict(),
        "num_classes": num_classes,
        "preprocess": req.preprocess,
        "input": {"shape": list(g.input.shape), "dtype": "float32"},
        "output": {"shape": list(g.output.shape)},
        "labels": "labels.txt",
        "quality": _quality(gate_doc, artifacts),
        "edgetpu": et_summary,
        "twin": twin.to_dict(),
    }
    if onnx is not None:
        model_doc["onnx"] = {"input": c.onnx_input, "output": c.onnx_output}
    files = [
        BundleFile("model_int8.tflite", "tflite_int8", c.int8_tflite),
        BundleFile("model_float.tflite", "tflite_float", c.float_tflite),
    ]
    files += et_files
    if onnx is not None:
        files.append(BundleFile("model.onnx", "onnx", onnx))
    files += [
        BundleFile("baseline.json", "baseline", _json(base)),
        BundleFile("selftest.json", "selftest", _json(st, compact=True)),
        BundleFile("report.json", "report", _json(report)),
        BundleFile("model_card.md", "model_card", model_card(report).encode()),
        BundleFile("labels.txt", "labels", ("\n".join(labels) + "\n").encode()),
    ]
    spec = BundleSpec(
        req.name, req.version, cfg.created, model_doc, Requirements(edgetpu=edgetpu_policy, min_edgetpu_runtime=min_rt)
    )
    digest = write_bundle(req.out, spec, files, req.sign_key)
    progress.done("bundle", f"digest {digest[:16]}…")
    return BuildResult(req.out, digest, report)


def _source_doc(
    req: BuildRequest, o_scores: np.ndarray | None, q_scores: np.ndarray, y: np.ndarray | None
) -> dict[str, Any] | None:
    """What the build started from and, for an ONNX source, the int8 model's parity with the
    original (the twin the cloud serves): top-1 agreement and the largest score difference."""
    if req.source is None:
        return None
    doc = dict(req.source)
    if o_scores is not None and req.onnx_source is not None:
        m = metrics(q_scores, y if y is not None else o_scores.argmax(axis=1), o_scores)
        doc["int8_vs_original"] = {
            "samples": len(q_scores),
            "top1_agreement": m.agreement,
            "max_abs_score_diff": float(np.abs(q_scores - o_scores).max()),
            "original_accuracy": metrics(o_scores, y).accuracy if y is not None else None,
            "int8_accuracy": m.accuracy if y is not None else None,
        }
    return doc


def _twin(c: convert.Converted, float_run: TfliteRunner, ref: np.ndarray, got: np.ndarray | None) -> Twin:
    """The twin's verdict: its scores against the float TFLite's on every validation input."""
    if c.onnx is None or got is None:
        return conversion_failed(c.onnx_error) if c.onnx_error else not_made("the conversion made no ONNX twin")
    metric = choose_metric(None, float_run.output)
    cmp = Comparison(float_run.output, metric)
    for r, g in zip(ref, got, strict=True):
        cmp.add(r, g)
    return judge(cmp.figures(), metric, "user", len(ref), quantized=False)


def _edgetpu(
    req: BuildRequest, cfg: CompilerConfig, g: Graph, int8: bytes
) -> tuple[dict[str, Any], list[BundleFile], str, int | None]:
    """Edge TPU stage: (report section, extra bundle files, requirements.edgetpu, min runtime)."""
    if cfg.edgetpu_compiler is None:
        from .precheck import predict

        pre = predict(g)
        if req.target == "edgetpu" and not pre.fully_mapped:
            raise NotEdgeTpuReady("model_int8.tflite", f"pre-check: {pre.summary()}")
        note = (
            "edgetpu_compiler not found on PATH; bundle carries the CPU int8 artifact only"
            + (f" (--segments {req.segments} not applied)" if req.segments and req.segments > 1 else "")
            + f"; pre-check: {pre.summary()}"
        )
        return (
            {"compiled": False, "note": note, "precheck": pre.to_dict(), "ops_on_tpu": None, "ops_on_cpu": None},
            [],
            "optional",
            None,
        )
    from . import edgetpu

    return edgetpu.stage(cfg, g, int8, req.target, req.min_runtime, req.segments)


def _quality(gate_doc: dict[str, Any] | None, artifacts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"gate_passed": None if gate_doc is None else gate_doc["passed"]}
    for name, a in artifacts.items():
        m = a.get("metrics")
        if m:
            out[name] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    return out


def _gate_line(gate_doc: dict[str, Any] | None) -> str:
    if gate_doc is None:
        return "no labels: metrics and gate skipped"
    return "gate " + ("passed" if gate_doc["passed"] else "FAILED")


def _json(doc: dict[str, Any], compact: bool = False) -> bytes:
    """``compact`` for tensor data (selftest.json): indented, deeplab's five 513x513 cases took 79 MB
    (each number on its own line, nine levels deep), the archive grew 100-fold and the desired
    document, one hash per archive chunk, past the agent's 256 KiB message limit."""
    if compact:
        return (json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False) + "\n").encode()
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def _runtime_versions() -> dict[str, str]:
    out = {}
    for dist in ("ai-edge-litert", "onnxruntime", "numpy", "edgefleet"):
        try:
            out[f"tool:{dist}"] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out
