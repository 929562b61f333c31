"""Stage 1-2 and 6: float TFLite, full-int8 TFLite and the ONNX twin, made by TensorFlow in a
**child process with a timeout**.

Why a child: TensorFlow's converter can crash the interpreter (an int8 LSTM conversion
segfaults) or hang; the parent must survive both and say which stage died. The parent never
imports TensorFlow.

Parent -> child: ``python -m compiler.convert JOB.json``. Child -> parent: one JSON object per
stdout line (``{"event": "stage", "stage": s, "status": "start"|"done", "seconds": t}``, then
``{"event": "result", ...}`` or ``{"event": "error", "kind": "bad_input"|"tool", ...}``).
TensorFlow's own chatter goes to stderr, whose tail is quoted when the child fails. A failed
ONNX export does not fail the build: the ``onnx`` stage's done event carries ``problem`` and the
result ``onnx_error``, and the twin is withheld with it (:mod:`compiler.parity`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput, NotEdgeTpuReady, ToolFailed

STAGES = ("train", "onnx2tf", "load", "float", "int8", "onnx")
Event = dict[str, Any]


@dataclass(frozen=True)
class ConvertJob:
    calibration: Path  # .npy, float32, (N, *input_shape[1:])
    out_dir: Path
    io_type: str = "int8"  # int8 | uint8
    model: Path | None = None  # .keras file or SavedModel directory
    train_digits: dict[str, Any] | None = None  # {"data": npz, "epochs": n, "seed": s}
    onnx: bool = True
    target: str = "cpu"
    onnx_model: Path | None = None  # an ONNX source: onnx2tf makes the SavedModel (compiler/onnx_import.py)

    def to_json(self) -> str:
        doc = asdict(self)
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in doc.items()})


@dataclass(frozen=True)
class Converted:
    float_tflite: bytes
    int8_tflite: bytes
    onnx: bytes | None
    keras_model: Path | None
    input_shape: tuple[int | None, ...]
    output_shape: tuple[int | None, ...]
    onnx_input: str | None
    onnx_output: str | None
    rewrapped_static_batch: bool
    versions: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)
    onnx_error: str | None = None  # tf2onnx failed: the twin is withheld with this one line


def run(job: ConvertJob, timeout_s: float, on_event: Callable[[Event], None] | None = None) -> Converted:
    """Run the conversion child; raise :class:`BadInput` or :class:`ToolFailed` on failure."""
    if job.onnx_model is not None:
        from .onnx_import import int8_blockers, read_file

        blockers = int8_blockers(read_file(job.onnx_model).ops)
        if blockers:  # before minutes of onnx2tf, and instead of TensorFlow's page of text
            raise BadInput(job.onnx_model.name, "int8 TFLite cannot run " + "; ".join(blockers))
    job.out_dir.mkdir(parents=True, exist_ok=True)
    job_file = job.out_dir / "job.json"
    job_file.write_text(job.to_json())
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    events: list[Event] = []
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "compiler.convert", str(job_file)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue  # stray print from a library
                if isinstance(ev, dict):
                    events.append(ev)
                    if on_event is not None:
                        on_event(ev)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ToolFailed(
                "TensorFlow conversion", f"timed out after {timeout_s:g} s in stage {_last_stage(events)}"
            ) from None
        reader.join(timeout=5)
        err.seek(0)
        stderr_tail = _tail(err.read().decode(errors="replace"))
    for ev in events:
        if ev.get("event") == "error":
            if ev.get("kind") == "bad_input":
                raise BadInput(ev.get("what", "model"), str(ev.get("problem")))
            if ev.get("kind") == "dynamic":
                if job.target == "edgetpu":
                    raise NotEdgeTpuReady(ev.get("what", "model"), str(ev.get("problem")))
                raise BadInput(ev.get("what", "model"), f"{ev.get('problem')}; fixed input shapes are required")
            raise ToolFailed(f"TensorFlow conversion ({ev.get('stage', '?')})", str(ev.get("problem")))
    result = next((ev for ev in events if ev.get("event") == "result"), None)
    if rc != 0 or result is None:
        how = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
        raise ToolFailed("TensorFlow conversion", f"child {how} in stage {_last_stage(events)}; stderr: {stderr_tail}")
    out = job.out_dir
    onnx_path = out / "model.onnx"
    keras_path = out / "model.keras"
    return Converted(
        float_tflite=(out / "model_float.tflite").read_bytes(),
        int8_tflite=(out / "model_int8.tflite").read_bytes(),
        onnx=onnx_path.read_bytes() if job.onnx and onnx_path.exists() else None,
        keras_model=keras_path if keras_path.exists() else job.model,
        input_shape=tuple(result["input_shape"]),
        output_shape=tuple(result["output_shape"]),
        onnx_input=result.get("onnx_input"),
        onnx_output=result.get("onnx_output"),
        onnx_error=result.get("onnx_error"),
        rewrapped_static_batch=bool(result.get("rewrapped")),
        versions=result["versions"],
        seconds={
            ev["stage"]: ev["seconds"] for ev in events if ev.get("event") == "stage" and ev.get("status") == "done"
        },
    )


def _last_stage(events: list[Event]) -> str:
    stages = [ev["stage"] for ev in events if ev.get("event") == "stage"]
    return stages[-1] if stages else "startup"


_NOISE = re.compile(r"^([IW]\d{4} |.*UserWarning|\s*warnings\.warn\(|WARNING: All log messages)")


def _tail(text: str, lines: int = 3) -> str:
    """The last few lines of the child's stderr that are not TensorFlow's routine chatter."""
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not _NOISE.match(ln)][-lines:]
    return " | ".join(kept)[-600:] or "(nothing but TensorFlow's routine log lines)"


# ----------------------------------------------------------------------------- child side


def _emit(**ev: Any) -> None:
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()


class _Stage:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> _Stage:
        self.t0 = time.perf_counter()
        _emit(event="stage", stage=self.name, status="start")
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            _emit(event="stage", stage=self.name, status="done", seconds=round(time.perf_counter() - self.t0, 3))


def _child(job: dict[str, Any]) -> int:
    from . import quantize

    out = Path(job["out_dir"])
    model_path = Path(job["model"]) if job.get("model") else None
    stage = "load"
    try:
        if job.get("train_digits"):
            from .digits import train

            t = job["train_digits"]
            with _Stage("train"):
                model_path = out / "model.keras"
                train(Path(t["data"]), model_path, int(t["epochs"]), int(t["seed"]))
        if job.get("onnx_model"):
            from .onnx_import import ConversionRefused, to_savedmodel

            stage = "onnx2tf"
            with _Stage("onnx2tf"):
                try:
                    model_path = to_savedmodel(Path(job["onnx_model"]), out / "onnx2tf", np.load(job["calibration"]))
                except ConversionRefused as exc:
                    _emit(event="error", kind="bad_input", what=str(job["onnx_model"]), problem=str(exc))
                    return 2
            stage = "load"
        assert model_path is not None
        saved_model = model_path if model_path.is_dir() else None
        with _Stage("load"):
            try:
                if saved_model is not None:
                    model = _load_savedmodel(saved_model)
                else:
                    model = quantize.load_keras(model_path)
            except quantize.LoadError as exc:
                _emit(event="error", kind="bad_input", what=str(model_path), problem=str(exc))
                return 2
            raw_shape = quantize.input_shape(model)
            if any(d is None for d in raw_shape[1:]):
                _emit(
                    event="error",
                    kind="dynamic",
                    what=str(model_path),
                    problem=f"input shape {raw_shape} has dynamic dimensions besides the batch",
                )
                return 2
            model, rewrapped = quantize.static_batch(model)
            in_shape = quantize.input_shape(model)
            cal = np.load(job["calibration"])
            want = tuple(in_shape[1:])
            if tuple(cal.shape[1:]) != want:
                _emit(
                    event="error",
                    kind="bad_input",
                    what="calibration data",
                    problem=f"samples have shape {list(cal.shape[1:])}, the model input needs {list(want)}",
                )
                return 2
        stage = "float"
        with _Stage("float"):
            (out / "model_float.tflite").write_bytes(quantize.to_float(model))
        stage = "int8"
        with _Stage("int8"):
            (out / "model_int8.tflite").write_bytes(quantize.to_int8(model, cal, job["io_type"]))
        onnx_in = onnx_out = onnx_error = None
        if job.get("onnx", True):
            stage = "onnx"
            from .onnx_export import to_onnx

            t0 = time.perf_counter()
            _emit(event="stage", stage="onnx", status="start")
            try:
                data, onnx_in, onnx_out = to_onnx(model)
                (out / "model.onnx").write_bytes(data)
            except Exception as exc:  # no twin: it is withheld with this error, the build goes on
                onnx_error = f"tf2onnx from_keras failed: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
            _emit(
                event="stage",
                stage="onnx",
                status="done",
                seconds=round(time.perf_counter() - t0, 3),
                **({"problem": onnx_error} if onnx_error else {}),
            )
    except Exception as exc:  # report which stage failed, in one line
        _emit(event="error", kind="tool", stage=stage, problem=f"{type(exc).__name__}: {str(exc)[:400]}")
        return 5
    _emit(
        event="result",
        input_shape=in_shape,
        output_shape=quantize.output_shape(model),
        onnx_input=onnx_in,
        onnx_output=onnx_out,
        onnx_error=onnx_error,
        rewrapped=rewrapped,
        versions=_versions(),
    )
    return 0


def _load_savedmodel(path: Path) -> Any:
    """A SavedModel as a Keras model with a static batch of 1 (from its serving signature)."""
    import keras
    import tensorflow as tf

    from .quantize import LoadError

    try:
        layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
        loaded = tf.saved_model.load(str(path))
        sig = loaded.signatures["serving_default"]
    except Exception as exc:  # TF raises many types for a bad SavedModel
        raise LoadError(
            f"cannot load as a SavedModel with a serving_default signature ({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    specs = list(sig.structured_input_signature[1].values())
    if len(specs) != 1:
        raise LoadError(f"has {len(specs)} inputs; one is supported")
    inp = keras.Input(tuple(specs[0].shape[1:]), batch_size=1, name=specs[0].name or "input")
    out = layer(inp)
    if isinstance(out, dict):
        if len(out) != 1:
            raise LoadError(f"has {len(out)} outputs; one is supported")
        out = next(iter(out.values()))
    return keras.Model(inp, out)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnx2tf", "tf-keras"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def save_calibration(x: np.ndarray, path: Path) -> Path:
    np.save(path, np.ascontiguousarray(x, dtype=np.float32))
    return path


if __name__ == "__main__":
    sys.exit(_child(json.loads(Path(sys.argv[1]).read_text())))
