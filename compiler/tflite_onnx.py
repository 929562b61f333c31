"""The ONNX twin of an imported ``.tflite`` (``tf2onnx.convert.from_tflite``, opset 17), made in a
**child process with a timeout** like every other conversion, and verified against the TFLite
model on the CPU before it may ship (:func:`verify`; the rules are in :mod:`compiler.parity`).

``from_tflite`` keeps the model's quantization: a uint8/int8 TFLite model becomes a QDQ ONNX
graph with the same integer input and output (reference §5.2: near bit-parity), so the cloud
must quantize its float input (``preprocess.input_quantization``) and dequantize the output
(``output_quantization`` in the report and ``manifest.model.onnx``).

Parent -> child: ``python -m compiler.tflite_onnx IN.tflite OUT.onnx``. Child -> parent: one JSON
line on stdout, ``{"event": "result", "inputs": [...], "outputs": [...], ...}`` (each ``[name,
dtype, shape]``) or ``{"event": "error", "problem": ...}``; tf2onnx's log lines go to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol.twin import Twin

from .errors import ToolFailed
from .parity import Comparison, ParityInputs, choose_metric, conversion_failed, judge

OPSET = 17


@dataclass(frozen=True)
class OnnxTwin:
    data: bytes
    inputs: tuple[tuple[str, str, tuple[int, ...]], ...]  # (name, numpy dtype name, shape)
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    seconds: float
    tf2onnx: str

    @property
    def input_name(self) -> str:
        return self.inputs[0][0]

    @property
    def input_dtype(self) -> str:  # uint8 | int8 | float32
        return self.inputs[0][1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs[0][2]

    @property
    def output_name(self) -> str:
        return self.outputs[0][0]

    @property
    def output_dtype(self) -> str:
        return self.outputs[0][1]

    def unservable(self) -> str | None:
        """Why the cloud could not serve this graph (it serves one input; parity and the
        manifest know one output), or None."""
        if len(self.inputs) == 1 and len(self.outputs) == 1:
            return None
        return (
            f"tf2onnx converted it to {_count(self.inputs, 'input')} and {_count(self.outputs, 'output')}; "
            "a twin must have one input and one output"
        )


def _count(io: tuple[tuple[str, str, tuple[int, ...]], ...], what: str) -> str:
    shown = ", ".join(name for name, _, _ in io[:4]) + (", ..." if len(io) > 4 else "")
    return f"{len(io)} {what}{'' if len(io) == 1 else 's'} ({shown})"


def convert(model: bytes, timeout_s: float, what: str = "model") -> OnnxTwin:
    """Run ``from_tflite`` in a child; :class:`ToolFailed` if it crashes, fails or times out."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-onnx-") as tmp_s:
        src, dst = Path(tmp_s) / "model.tflite", Path(tmp_s) / "model.onnx"
        src.write_bytes(model)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "compiler.tflite_onnx", str(src), str(dst)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                cwd=Path(__file__).resolve().parent.parent,
                env=_child_env(),
            )
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"tf2onnx from_tflite ({what})", f"timed out after {timeout_s:g} s") from None
        seconds = time.perf_counter() - t0
        events = [ev for ev in (_json_line(ln) for ln in proc.stdout.splitlines()) if ev is not None]
        err = next((ev for ev in events if ev.get("event") == "error"), None)
        if err is not None:
            raise ToolFailed(f"tf2onnx from_tflite ({what})", str(err.get("problem")))
        res = next((ev for ev in events if ev.get("event") == "result"), None)
        if proc.returncode != 0 or res is None or not dst.exists():
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            tail = " | ".join(ln.strip() for ln in proc.stderr.strip().splitlines()[-3:])[-400:]
            raise ToolFailed(f"tf2onnx from_tflite ({what})", f"child {how}; stderr: {tail or '(empty)'}")
        return OnnxTwin(
            dst.read_bytes(),
            tuple((str(n), str(d), tuple(int(x) for x in sh)) for n, d, sh in res["inputs"]),
            tuple((str(n), str(d), tuple(int(x) for x in sh)) for n, d, sh in res["outputs"]),
            round(seconds, 3),
            res["tf2onnx"],
        )


def _child_env() -> dict[str, str]:
    import os

    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


def _json_line(line: str) -> dict[str, Any] | None:
    try:
        ev = json.loads(line)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


def measure(twin: OnnxTwin, runner: Any, inputs: ParityInputs, metric: str) -> tuple[dict[str, float], np.ndarray]:
    """Run the twin (onnxruntime) and ``runner`` (a :class:`compiler.inference.TfliteRunner`) on
    each raw input tensor and compare their outputs (:class:`compiler.parity.Comparison`).
    Returns the figures and the twin's dequantized outputs ``(N, ...)``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(twin.data, sess_options=opts, providers=["CPUExecutionProvider"])
    cmp = Comparison(runner.output, metric)
    scores: list[np.ndarray] = []
    for raw in inputs.raw:
        raw_in = raw.reshape(runner.input.shape)
        ref = runner.run_raw(raw_in)
        got = sess.run(None, {twin.input_name: raw_in.astype(twin.input_dtype)})[0].reshape(ref.shape)
        cmp.add(ref, got)
        scores.append(runner.output.dequantize(got.astype(ref.dtype)))
    out = np.concatenate(scores, axis=0) if scores else np.zeros((0,) + runner.output.shape[1:], np.float32)
    return cmp.figures(), out


@dataclass(frozen=True)
class Verified:
    """The twin to ship (None when withheld), its status, the converter's facts for the report
    (empty when it failed) and the twin's dequantized outputs on the parity inputs."""

    twin: OnnxTwin | None
    status: Twin
    doc: dict[str, Any]
    scores: np.ndarray | None = None


def verify(
    model: bytes, what: str, runner: Any, inputs: ParityInputs, timeout_s: float, task: str | None = None
) -> Verified:
    """Convert ``model`` and measure the twin's parity with ``runner`` on ``inputs``; the twin
    comes back only when :func:`compiler.parity.judge` verifies it."""
    try:
        twin = convert(model, timeout_s, what)
    except ToolFailed as exc:
        return Verified(None, conversion_failed(str(exc)), {})
    doc: dict[str, Any] = {
        "from": f"tf2onnx {twin.tf2onnx} convert.from_tflite, opset {OPSET}",
        "inputs": [[n, d, list(sh)] for n, d, sh in twin.inputs],
        "outputs": [[n, d, list(sh)] for n, d, sh in twin.outputs],
        "convert_seconds": twin.seconds,
    }
    why = twin.unservable()
    if why is not None:
        return Verified(None, Twin("withheld", why), doc)
    doc.update(
        input=twin.input_name,
        input_dtype=twin.input_dtype,
        input_shape=list(twin.input_shape),
        output=twin.output_name,
        output_dtype=twin.output_dtype,
        output_quantization=(
            {"scale": runner.output.scale, "zero_point": runner.output.zero_point}
            if twin.output_dtype in ("uint8", "int8")
            else None
        ),
    )
    metric = choose_metric(task, runner.output)
    figures, scores = measure(twin, runner, inputs, metric)
    status = judge(figures, metric, inputs.kind, len(inputs.raw), runner.output.quantized)
    return Verified(twin if status.shipped else None, status, doc, scores)


# ----------------------------------------------------------------------------- child side


def _child(src: str, dst: str) -> int:
    try:
        import onnx
        import tf2onnx

        proto, _ = tf2onnx.convert.from_tflite(src, opset=OPSET)
        Path(dst).write_bytes(proto.SerializeToString())

        def io(v: Any) -> list[Any]:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            return [v.name, dtype, [int(d.dim_value) for d in t.shape.dim]]

        inputs, outputs = [io(v) for v in proto.graph.input], [io(v) for v in proto.graph.output]
    except Exception as exc:  # tf2onnx raises many types; report one line
        one_line = " ".join(str(exc).split())[:400]
        sys.stdout.write(json.dumps({"event": "error", "problem": f"{type(exc).__name__}: {one_line}"}) + "\n")
        return 5
    sys.stdout.write(
        json.dumps(
            {
                "event": "result",
                "inputs": inputs,
                "outputs": outputs,
                "tf2onnx": getattr(tf2onnx, "__version__", "?"),
            }
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
