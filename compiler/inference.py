"""Run artifacts on this machine: TFLite (ai_edge_litert) and ONNX (onnxruntime).

Batch-1 TFLite models are run one sample at a time. Quantized I/O follows the protocol's rule
(``protocol.features``): ``q = round(f / scale) + zero_point`` clipped to the dtype's range;
scores are dequantized as ``scale * (q - zero_point)``. An integer tensor without quantization
parameters (scale 0, e.g. MoveNet's uint8 input: raw pixels) takes and gives its values as they are.

Every invoke starts from the model's initial state, as the agent serves it (docs/models.md):
variable tensors (a fused LSTM's state) are reset first, and ``state`` inputs other than the
request's (an LSTM detector's ``init_lstm_c``/``init_lstm_h``) hold zero.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadInput


@dataclass(frozen=True)
class IoSpec:
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.dtype(np.int8), np.dtype(np.uint8))

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return x.astype(self.dtype)
        info = np.iinfo(self.dtype)
        q = np.round(x / self.scale) + self.zero_point if self.scale else np.round(x)
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        if not self.quantized or not self.scale:
            return q.astype(np.float32)
        return (self.scale * (q.astype(np.float32) - self.zero_point)).astype(np.float32)

    @classmethod
    def of(cls, detail: dict[str, Any]) -> IoSpec:
        """From one of LiteRT's ``get_input_details()`` / ``get_output_details()`` entries."""
        return cls(
            tuple(int(d) for d in detail["shape"]),
            np.dtype(detail["dtype"]),
            float(detail["quantization"][0]),
            int(detail["quantization"][1]),
        )

    def zero(self) -> np.ndarray:
        """0.0 in this tensor's representation (a recurrent state's initial value)."""
        return self.quantize(np.zeros(self.shape, np.float32))


class TfliteRunner:
    """One TFLite model on the CPU. Raises :class:`BadInput` if LiteRT cannot load it."""

    def __init__(self, data: bytes, what: object = "model", threads: int = 1, feed: str | None = None) -> None:
        """``feed``: the name of the input a request fills (default the first); the others are
        recurrent state and hold zero."""
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_content=data, num_threads=threads)
            self.interp.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInput(what, f"LiteRT cannot load it ({first})") from None
        ins = self.interp.get_input_details()
        outs = self.interp.get_output_details()
        i = next((d for d in ins if d["name"] == feed), ins[0])
        self.input = IoSpec.of(i)
        self.output = IoSpec.of(outs[0])
        self.outputs = tuple(IoSpec.of(o) for o in outs)
        self._in = int(i["index"])
        self._out = int(outs[0]["index"])
        self._outs = tuple(int(o["index"]) for o in outs)
        self._state = tuple((int(d["index"]), IoSpec.of(d).zero()) for d in ins if d is not i)
        self.shapes = {int(d["index"]): tuple(int(x) for x in d["shape"]) for d in (*ins, *outs)}

    def _invoke(self, raw: np.ndarray) -> None:
        it = self.interp
        it.reset_all_variables()
        for index, zero in self._state:
            it.set_tensor(index, zero)
        it.set_tensor(self._in, raw.reshape(self.input.shape).astype(self.input.dtype))
        it.invoke()

    def run_raw(self, raw: np.ndarray) -> np.ndarray:
        """One raw input tensor (already in the model's dtype and shape) -> raw output tensor."""
        self._invoke(raw)
        return np.array(self.interp.get_tensor(self._out))

    def run_all(self, raw: np.ndarray) -> list[np.ndarray]:
        """One raw input tensor -> every raw output tensor, in the model's order."""
        self._invoke(raw)
        return [np.array(self.interp.get_tensor(o)) for o in self._outs]

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Float inputs (N, ...) -> dequantized float outputs (N, ...)."""
        outs = [self.output.dequantize(self.run_raw(self.input.quantize(x[i : i + 1]))) for i in range(len(x))]
        return np.concatenate(outs, axis=0) if outs else np.zeros((0,) + self.output.shape[1:])

    def latency_ms(self, x: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
        """Median wall time of one invoke, in ms, on the first sample of ``x``."""
        raw = self.input.quantize(x[:1]).reshape(self.input.shape)
        for _ in range(warmup):
            self.run_raw(raw)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.run_raw(raw)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3


class OnnxRunner:
    """An ONNX model on onnxruntime. ``nchw``: the model takes NCHW (a PyTorch export) and is
    given NHWC samples, the TFLite layout the rest of the build uses: they are transposed."""

    def __init__(self, data: bytes, what: object = "model.onnx", threads: int = 1, nchw: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception classes
            raise BadInput(what, f"onnxruntime cannot load it ({str(exc)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.nchw = nchw
        shape = self.session.get_inputs()[0].shape
        self.max_batch = 1 if shape and shape[0] == 1 else 64  # torch.onnx.export without dynamic_axes: batch 1

    def _feed(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.nchw and x.ndim == 4 else x

    def scores(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        batch = min(batch, self.max_batch)
        outs = [
            self.session.run(None, {self.input_name: self._feed(x[i : i + batch])})[0] for i in range(0, len(x), batch)
        ]
        return np.concatenate(outs, axis=0)

    def latency_ms(self, x: np.ndarray, runs: int = 50, warmup: int = 5) -> float:
        one = self._feed(x[:1])
        for _ in range(warmup):
            self.session.run(None, {self.input_name: one})
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.session.run(None, {self.input_name: one})
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3
