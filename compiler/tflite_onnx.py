"""The ONNX twin of an imported ``.tflite`` (``tf2onnx.convert.from_tflite``, opset 17), made in a
**child process with a timeout** like every other conversion, and its parity with the TFLite
model on the CPU.

``from_tflite`` keeps the model's quantization: a uint8/int8 TFLite model becomes a QDQ ONNX
graph with the same integer input and output (reference §5.2: near bit-parity), so the cloud
must quantize its float input (``preprocess.input_quantization``) and dequantize the output
(``output_quantization`` in the report and ``manifest.model.onnx``).

Parent -> child: ``python -m compiler.tflite_onnx IN.tflite OUT.onnx``. Child -> parent: one JSON
line on stdout, ``{"event": "result", "input": ..., "input_dtype": ..., ...}`` or
``{"event": "error", "problem": ...}``; tf2onnx's log lines go to stderr.
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

from .errors import ToolFailed

OPSET = 17
MIN_AGREEMENT = 0.99  # below this top-1 agreement with the TFLite model the twin is not shipped


@dataclass(frozen=True)
class OnnxTwin:
    data: bytes
    input_name: str
    input_dtype: str  # numpy dtype name: uint8 | int8 | float32
    input_shape: tuple[int, ...]
    output_name: str
    output_dtype: str
    seconds: float
    tf2onnx: str


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
            res["input"],
            res["input_dtype"],
            tuple(res["input_shape"]),
            res["output"],
            res["output_dtype"],
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


@dataclass(frozen=True)
class Parity:
    samples: int
    top1_agreement: float  # fraction of samples with the same argmax
    max_abs_diff: float  # in output units (dequantized scores)
    max_abs_diff_lsb: int | None  # in quantized output steps, for integer outputs
    exact_fraction: float  # fraction of output values exactly equal

    @property
    def ok(self) -> bool:
        return self.top1_agreement >= MIN_AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "top1_agreement": round(self.top1_agreement, 6),
            "max_abs_diff": float(self.max_abs_diff),
            "max_abs_diff_lsb": self.max_abs_diff_lsb,
            "exact_fraction": round(self.exact_fraction, 6),
            "min_agreement": MIN_AGREEMENT,
        }


def parity(twin: OnnxTwin, runner: Any, x: np.ndarray) -> tuple[Parity, np.ndarray]:
    """Run the twin (onnxruntime) and ``runner`` (a :class:`compiler.inference.TfliteRunner`) on the
    float inputs ``x`` one sample at a time and compare their raw and dequantized outputs.
    Returns the comparison and the twin's dequantized scores ``(N, ...)``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(twin.data, sess_options=opts, providers=["CPUExecutionProvider"])
    agree = exact = total = 0
    max_diff = 0.0
    max_lsb = 0
    scores: list[np.ndarray] = []
    for i in range(len(x)):
        raw_in = runner.input.quantize(x[i : i + 1]).reshape(runner.input.shape)
        ref = runner.run_raw(raw_in)
        got = sess.run(None, {twin.input_name: raw_in.astype(twin.input_dtype)})[0].reshape(ref.shape)
        if runner.output.quantized:
            max_lsb = max(max_lsb, int(np.abs(got.astype(np.int64) - ref.astype(np.int64)).max()))
        ref_f, got_f = runner.output.dequantize(ref), runner.output.dequantize(got.astype(ref.dtype))
        scores.append(got_f)
        max_diff = max(max_diff, float(np.abs(got_f - ref_f).max()))
        exact += int((got == ref).sum())
        total += ref.size
        agree += int(ref_f.reshape(-1).argmax() == got_f.reshape(-1).argmax())
    n = len(x)
    par = Parity(
        n,
        agree / n if n else 0.0,
        max_diff,
        max_lsb if runner.output.quantized else None,
        exact / total if total else 0.0,
    )
    return par, (np.concatenate(scores, axis=0) if scores else np.zeros((0,) + runner.output.shape[1:]))


# ----------------------------------------------------------------------------- child side


def _child(src: str, dst: str) -> int:
    try:
        import onnx
        import tf2onnx

        proto, _ = tf2onnx.convert.from_tflite(src, opset=OPSET)
        Path(dst).write_bytes(proto.SerializeToString())

        def io(v: Any) -> tuple[str, str, list[int]]:
            t = v.type.tensor_type
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            return v.name, dtype, [int(d.dim_value) for d in t.shape.dim]

        if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
            raise ValueError(
                f"the ONNX graph has {len(proto.graph.input)} inputs and "
                f"{len(proto.graph.output)} outputs; one of each is supported"
            )
        (iname, idtype, ishape), (oname, odtype, _) = io(proto.graph.input[0]), io(proto.graph.output[0])
    except Exception as exc:  # tf2onnx raises many types; report one line
        sys.stdout.write(json.dumps({"event": "error", "problem": f"{type(exc).__name__}: {str(exc)[:400]}"}) + "\n")
        return 5
    sys.stdout.write(
        json.dumps(
            {
                "event": "result",
                "input": iname,
                "input_dtype": idtype,
                "input_shape": ishape,
                "output": oname,
                "output_dtype": odtype,
                "tf2onnx": getattr(tf2onnx, "__version__", "?"),
            }
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
