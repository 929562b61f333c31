"""``import``: wrap an existing int8 / Edge-TPU-compiled ``.tflite`` (e.g. Coral's model zoo)
into the same kind of bundle a build makes: inspection, Edge TPU pre-check, metrics when
validation data is given, drift baseline, self-test vectors, report, model card.

Rules:

* MODEL compiled for the Edge TPU (has ``edgetpu-custom-op``) and no CPU model: the bundle holds
  only ``model_edgetpu.tflite`` and ``requirements.edgetpu = "required"``; nothing can be run
  here (the op needs the delegate), so metrics, baseline outputs and self-test cases are empty
  and the report says so.
* Self-test vectors (:mod:`compiler.selftest`) from the validation data, else the calibration
  data, else seeded synthetic in-range images (never a constant frame); the drift baseline only
  from real samples (validation or calibration): a baseline of synthetic inputs would make
  every real camera look drifted, so without data the bundle has none and the report says so.
* MODEL a CPU model (int8/uint8, or float) plus ``--edgetpu X``: X must be compiled and have the
  same input/output shapes and types; ``requirements.edgetpu = "optional"``.
* The task and the signature come from the model's real inputs and outputs (LiteRT's shapes,
  the file's ops and quantization) by :mod:`compiler.tasks`, or ``--task``; the signature goes
  into ``manifest.model.signature`` (:mod:`protocol.signature`). An import the task cannot be
  told for, or whose labels do not fit it, is refused with the reason; so is a model LiteRT
  cannot load. Labels are required for a classifier only.
* Preprocess (:func:`compiler.tasks.preprocess`, computed once by the command): a quantized image
  input is fed the identity on pixels (``scale = s_in``, ``offset = -(zp - zp_pixel) * s_in``),
  which is how Coral's models are fed; a uint8 input without quantization parameters takes raw
  pixels; ``--scale/--offset`` are honoured, or refused with the reason, data or no data.
* Metrics (top-1 against the validation labels) and the drift baseline's output features
  (top-1 class and confidence) are a classifier's; a detection, segmentation, keypoints or
  embedding model's baseline holds its task's output features (:mod:`protocol.taskstats`,
  :func:`compiler.baseline.build_task`), ``tensors`` its input features only; their samples
  come as ``--calibration`` (they have no class labels).
* ONNX twin (role ``onnx``, for the cloud fallback): ``tf2onnx.convert.from_tflite`` on the CPU
  model, in a child with the conversion timeout (:mod:`compiler.tflite_onnx`). It ships only
  verified: its parity with LiteRT is always measured, on the validation data, else the
  calibration data, else seeded synthetic inputs over the input's range, and judged by
  :mod:`compiler.parity`; below a limit, or when the conversion fails, it is withheld. The
  verdict is ``report.twin`` and ``manifest.model.twin`` (:mod:`protocol.twin`). A uint8/int8
  ONNX input gets ``preprocess.input_quantization`` (the TFLite input's scale and zero point).
  A TPU-only import has no CPU model to convert: twin status ``none``, and the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.bundle import Requirements
from protocol.labels import parse_labels
from protocol.signing import SigningKey

from . import baseline, evaluate_tasks, selftest, tasks
from .bundle import BundleFile, BundleSpec, refuse_existing, write_bundle
from .config import CompilerConfig
from .dataset import Samples
from .errors import BadInput, GateFailed
from .evaluate import metrics
from .graph import Graph, read_graph
from .inference import TfliteRunner
from .parity import choose_inputs, not_made
from .pipeline import BuildResult, _json, _runtime_versions
from .precheck import predict
from .progress import Progress
from .report import SCHEMA, machine, model_card
from .tflite_onnx import Verified, verify


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
    truth: Path | None = None  # per-task labelled truth (compiler.evaluate_tasks) for truth_images
    truth_images: Path | None = None  # the --calibration image folder
    min_metric: float | None = None  # the floor the per-task metric must reach (--min-metric), else no gate
    onnx: bool = True  # make the ONNX twin (tf2onnx from_tflite) of the CPU model
    task: str | None = None  # --task: forces the task (compiler.tasks)
    preprocess: dict[str, Any] | None = None  # compiler.tasks.preprocess, --scale/--offset applied


def _same_io(a: Graph, b: Graph) -> str | None:
    for what, xs, ys in (("input", a.inputs, b.inputs), ("output", a.outputs, b.outputs)):
        if len(xs) != len(ys):
            return f"has {len(xs)} {what}s, the CPU model {len(ys)}"
        for i, j in zip(xs, ys, strict=True):
            x, y = a.tensor(i), b.tensor(j)
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
    tpu_only = g.edgetpu_compiled
    what = Path(req.model_name).name
    feed = tasks.request_input(g, what)
    # LiteRT first: a model it cannot load is refused for that, and its shapes are the real ones
    runner = None if tpu_only else TfliteRunner(req.model, req.model_name, feed=feed.name)
    shaped = tasks.with_shapes(g, runner.shapes) if runner else g
    sig = tasks.read_signature(shaped, req.labels, req.task, what)
    tasks.check_labels(sig, g, req.labels)
    classifier = sig.task == "classification"
    num_classes = tasks.classes(sig, g)
    quantized = feed.dtype in ("int8", "uint8") and not g.float_ops()
    pre = predict(g)
    progress.done(
        "inspect",
        f"{len(g.ops)} ops; "
        + ("Edge TPU model" if tpu_only else "int8" if quantized else "float")
        + f"; {sig.task}"
        + ("; stateful (reset per request)" if sig.stateful else ""),
    )

    val, cal = req.validation, req.calibration
    if val is not None and not classifier:
        raise BadInput(
            "validation data",
            f"is scored against class labels, and a {sig.task} model has none; give the samples as --calibration",
        )
    if val is not None and val.y is not None and num_classes is not None:
        bad = val.y[(val.y < 0) | (val.y >= num_classes)]
        if len(bad):
            raise BadInput("validation data", f"label {int(bad[0])} is out of range 0..{num_classes - 1}")
    for which, s in (("validation data", val), ("calibration data", cal)):
        if s is not None and tuple(s.x.shape[1:]) != feed.shape[1:]:
            raise BadInput(which, f"samples have shape {list(s.x.shape[1:])}, the model input is {list(feed.shape)}")

    cpu_name = "model_int8.tflite" if quantized else "model_float.tflite"
    artifacts: dict[str, dict[str, Any]] = {}
    scores = None
    data = val or cal
    progress.start("evaluate", "metrics on the validation set")
    if runner is not None:
        m = None
        if data is not None:
            scores = runner.scores(data.x)
            if val is not None and val.y is not None:
                m = metrics(scores, val.y)
        lat = {
            "1": round(
                runner.latency_ms(data.x if data is not None else np.zeros((1, *feed.shape[1:]), np.float32)),
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

    preprocess = req.preprocess if req.preprocess is not None else tasks.preprocess(feed, None, None)
    ver = _onnx_twin(req, cfg, runner, preprocess, sig.task, progress)
    twin = ver.twin
    if twin is not None and runner is not None and runner.input.scale and twin.input_dtype in ("uint8", "int8"):
        # (a uint8 input without quantization parameters takes raw pixels: nothing to add)
        preprocess = dict(
            preprocess, input_quantization={"scale": runner.input.scale, "zero_point": runner.input.zero_point}
        )
    if twin is not None:
        m_onnx = None
        if ver.status.inputs == "user" and val is not None and val.y is not None and ver.scores is not None:
            m_onnx = metrics(ver.scores, val.y).to_dict()
        artifacts["model.onnx"] = {
            "size": len(twin.data),
            "sha256": _sha(twin.data),
            "metrics": m_onnx,
            "latency_ms": None,
        }

    accuracy = None
    accuracy_gate: dict[str, Any] | None = None
    accuracy_note = "none: an import has no float reference to compare against"
    if req.min_metric is not None and (req.truth is None or not 0.0 <= req.min_metric <= 1.0):
        raise BadInput(
            f"--min-metric {req.min_metric}",
            "needs --truth (labelled data to score)" if req.truth is None else "must be a fraction within 0..1",
        )
    if req.truth is not None:
        progress.start("accuracy", f"{sig.task} accuracy against {Path(req.truth).name}")
        if runner is None:
            raise BadInput(req.truth, "the only artifact needs an Edge TPU: nothing can be scored here")
        if req.truth_images is None:
            raise BadInput(req.truth, "names images: give them as --calibration (a folder of images)")
        metric = evaluate_tasks.evaluate_images(
            runner, sig, parse_labels("\n".join(req.labels)), preprocess, req.truth_images, req.truth
        )
        verdict, accuracy_note = evaluate_tasks.gate(metric, None, min_value=req.min_metric)
        accuracy = metric.to_dict()
        accuracy_gate = verdict.to_dict() if verdict.checks else None
        progress.done("accuracy", accuracy_note)
        if not verdict.passed:
            raise GateFailed(accuracy_note, {"accuracy": accuracy, "gate": accuracy_gate})

    progress.start("baseline", "drift baseline and self-test vectors")
    files: list[BundleFile] = []
    if not tpu_only:
        files.append(BundleFile(cpu_name, "tflite_int8" if quantized else "tflite_float", req.model))
    if et_bytes is not None:
        files.append(BundleFile("model_edgetpu.tflite", "tflite_edgetpu", et_bytes))
    if twin is not None:
        files.append(BundleFile("model.onnx", "onnx", twin.data))
    if data is not None and scores is not None and runner is not None:
        if classifier:
            base = baseline.build(data.x, scores, preprocess, num_classes)
        else:
            raw = np.stack(
                [runner.input.quantize(data.x[i : i + 1]).reshape(runner.input.shape) for i in range(len(data.x))]
            )
            docs = baseline.answers(runner, sig, parse_labels("\n".join(req.labels)), raw)
            base = baseline.build_task(data.x, docs, preprocess, sig.task)
        files.append(BundleFile("baseline.json", "baseline", _json(base)))
    if runner is not None:
        # no data: seeded in-range synthetic inputs (never a constant frame); no baseline from
        # them, though: live camera frames would all look drifted against noise
        kind = "validation" if val is not None else "calibration" if cal is not None else "synthetic"
        st_x = (
            data.x
            if data is not None
            else selftest.synthetic(
                tuple(feed.shape[1:]), preprocess, req.selftest_cases, value_range=selftest.tensor_range(runner.input)
            )
        )
        st_y = val.y if val is not None else None
        st = selftest.build(runner, cpu_name, st_x, st_y, req.selftest_cases, inputs=kind)
    else:
        st = {
            "schema": selftest.SCHEMA,
            "artifact": "model_edgetpu.tflite" if tpu_only else cpu_name,
            "tolerance": selftest.DEFAULT_TOLERANCE,
            "max_latency_ms": selftest.DEFAULT_MAX_LATENCY_MS,
            "cases": [],
            "smoke": True,
            "note": "no reference outputs: "
            + "the only artifact needs an Edge TPU"
            + "; agents run a smoke test (the model loads and one invoke gives finite outputs in time)",
        }
    files.append(BundleFile("selftest.json", "selftest", _json(st, compact=True)))
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
        "task": sig.task,
        "num_classes": num_classes,
        "labels": list(req.labels),
        "signature": sig.to_dict(),
        "target": "edgetpu" if et_bytes else "cpu",
        "io_type": feed.dtype,
        "description": f"Imported from {req.model_name}",
        "lineage": dict(req.lineage or {}, **_runtime_versions()),
        "model": {
            "input": shaped.input.to_dict(),
            "output": shaped.output.to_dict(),
            "ops": g.op_counts(),
            "float_ops": [op.name for op in g.float_ops()] if not tpu_only else [],
        },
        "artifacts": artifacts,
        "gate": accuracy_gate,
        "edgetpu": et_doc,
        "onnx": ver.doc,
        "twin": ver.status.to_dict(),
        "gate_note": accuracy_note,
        "accuracy": accuracy,
        "baseline_note": (
            f"drift baseline from {len(data.x)} {'validation' if val is not None else 'calibration'} samples"
            if data is not None and runner is not None
            else "no drift baseline: "
            + ("the only artifact needs an Edge TPU" if tpu_only else "no validation or calibration data given")
        ),
        "validation_samples": len(val.x) if val is not None else 0,
        "machine": machine(),
    }
    files += [
        BundleFile("report.json", "report", _json(report)),
        BundleFile("model_card.md", "model_card", model_card(report).encode()),
    ]
    if req.labels:
        files.append(BundleFile("labels.txt", "labels", ("\n".join(req.labels) + "\n").encode()))
    model_doc: dict[str, Any] = {
        "task": sig.task,
        "signature": sig.to_dict(),
        "preprocess": preprocess,
        "input": {"shape": list(feed.shape), "dtype": "float32"},
        "output": {"shape": list(sig.answer_outputs[0].shape)},
        "imported": True,
        "edgetpu": {k: et_doc.get(k) for k in ("compiled", "ops_on_cpu", "note")},
    }
    if num_classes is not None:
        model_doc["num_classes"] = num_classes
    if req.labels:
        model_doc["labels"] = "labels.txt"
    if twin is not None:
        model_doc["onnx"] = {
            k: ver.doc[k] for k in ("input", "output", "input_dtype", "output_dtype", "output_quantization")
        }
    model_doc["twin"] = ver.status.to_dict()
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
    req: ImportRequest,
    cfg: CompilerConfig,
    runner: TfliteRunner | None,
    preprocess: dict[str, Any],
    task: str,
    progress: Progress,
) -> Verified:
    """The twin, verified or withheld (:func:`compiler.tflite_onnx.verify`), or why none was made."""
    if runner is None:
        return Verified(
            None,
            not_made(
                "the imported model is compiled for the Edge TPU (edgetpu-custom-op has no ONNX form) and no "
                "CPU model was given; import the CPU .tflite with --edgetpu X to get one"
            ),
            {},
        )
    if not req.onnx:
        return Verified(None, not_made("--no-onnx"), {})
    progress.start("onnx", "ONNX twin (tf2onnx from_tflite) and its parity with LiteRT")
    val, cal = req.validation, req.calibration
    inputs = choose_inputs(runner.input, preprocess, val.x if val else None, cal.x if cal else None)
    ver = verify(req.model, Path(req.model_name).name, runner, inputs, cfg.convert_timeout_s, task)
    progress.done("onnx", ver.status.line())
    return ver


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
