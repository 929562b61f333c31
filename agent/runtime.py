"""Inference backends behind one small interface, and the loaded model around them.

Backends (all take and return *raw* tensors, i.e. quantized where the model is quantized):

* ``edgetpu``: LiteRT with the libedgetpu delegate, for ``*_edgetpu.tflite`` artifacts only;
* ``cpu``: LiteRT (``ai_edge_litert``, ``tflite_runtime`` as a fallback import) on the CPU;
* ``onnx``: ONNX Runtime, optional (only when ``onnxruntime`` is importable).

The Edge TPU delegate is probed in a *child process* first (:func:`probe_edgetpu`): a
libedgetpu built for another TFLite version can segfault the whole process, and a missing
library raises ``OSError`` rather than the documented ``ValueError``.

:class:`Model` adds what the manifest says: preprocess (image -> float tensor), quantize with
the input tensor's own (scale, zero_point), dequantize the output, labels, and the signature
(:mod:`protocol.signature`) that says which input a request fills and what the answer is
(:mod:`protocol.answers`).

State is reset per request unless the request belongs to a session: before every invoke the
LiteRT backend resets the model's variable tensors (a fused LSTM keeps its state there) and sets
every input but the request's (a recurrent ``state`` input) to zero, or to the session's state
(:mod:`agent.sessions`), so an answer never depends on another app's requests (docs/models.md).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocol import answers
from protocol.baseline import Baseline, parse as parse_baseline
from protocol.errors import BadPayload
from protocol.features import resize_filter
from protocol.labels import LabelMap, parse_labels
from protocol.messages import BundleInfo
from protocol.signature import Signature, TensorSpec, of_model

from .errors import ImageTooLarge, InputError, ModelError, TooLarge
from .image import decode
from .sessions import state_pairs

log = logging.getLogger(__name__)

EDGETPU_LIB = "libedgetpu.so.1"
EDGETPU_OP = b"edgetpu-custom-op"


def _interpreter_module() -> Any:
    try:
        from ai_edge_litert import interpreter as mod
    except ImportError:  # pragma: no cover - exercised only on devices without ai-edge-litert
        from tflite_runtime import interpreter as mod
    return mod


def litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("ai-edge-litert", "tflite-runtime"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "none"


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


@dataclass(frozen=True)
class EdgeTpuProbe:
    present: bool
    detail: str
    runtime: int | None = None


_PROBE = (
    "import sys\n"
    "try:\n"
    "    from ai_edge_litert.interpreter import load_delegate\n"
    "except ImportError:\n"
    "    from tflite_runtime.interpreter import load_delegate\n"
    "try:\n"
    f"    load_delegate({EDGETPU_LIB!r})\n"
    "except (OSError, ValueError, RuntimeError) as exc:\n"
    "    print(type(exc).__name__ + ': ' + str(exc).splitlines()[0]); sys.exit(3)\n"
    "rt = None\n"
    "try:\n"
    "    from pycoral.utils.edgetpu import get_runtime_version\n"
    "    v = get_runtime_version(); rt = int(v.split('RuntimeVersion(')[1].split(')')[0])\n"
    "except Exception:\n"
    "    pass\n"
    "print('ok', rt if rt is not None else '')\n"
)


def probe_edgetpu(timeout: float = 20.0) -> EdgeTpuProbe:
    """Try to load the Edge TPU delegate in a child process; never crashes this process."""
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return EdgeTpuProbe(False, f"delegate probe timed out after {timeout}s")
    out = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode == 0 and out.startswith("ok"):
        rest = out[2:].strip()
        return EdgeTpuProbe(True, "libedgetpu delegate loaded", int(rest) if rest.isdigit() else None)
    if proc.returncode < 0:
        return EdgeTpuProbe(False, f"delegate probe crashed with signal {-proc.returncode}")
    return EdgeTpuProbe(False, out or (proc.stderr.strip().splitlines() or ["unknown error"])[-1])


def is_edgetpu_model(data: bytes) -> bool:
    """True if a .tflite holds the Edge TPU custom op (it must never go to a CPU interpreter)."""
    return EDGETPU_OP in data


class Backend(Protocol):
    name: str
    input_shape: tuple[int, ...]
    input_dtype: Any
    input_quant: tuple[float, int]  # (scale, zero_point); (0.0, 0) when not quantized
    output_quant: tuple[float, int]
    inputs: int  # how many inputs the model has (the request's and its state)
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]

    def invoke_raw(self, x: np.ndarray) -> np.ndarray: ...

    def invoke_all(self, x: np.ndarray, state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class LiteRTBackend:
    """``feed``: the name of the input a request fills (default the first); every other input
    is recurrent state and is set to zero (its quantized 0.0) before each invoke."""

    def __init__(self, path: Path, edgetpu: bool = False, threads: int | None = None, feed: str | None = None) -> None:
        mod = _interpreter_module()
        data = path.read_bytes()
        if is_edgetpu_model(data) and not edgetpu:
            raise ModelError(f"{path.name} is compiled for the Edge TPU; refusing to run it on the CPU")
        self.name = "edgetpu" if edgetpu else "cpu"
        delegates = [mod.load_delegate(EDGETPU_LIB)] if edgetpu else None
        try:
            self._it = mod.Interpreter(model_content=data, experimental_delegates=delegates, num_threads=threads)
            self._it.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"{path.name}: cannot load ({str(exc).splitlines()[0]})") from None
        ins = self._it.get_input_details()
        outs = self._it.get_output_details()
        inp = next((d for d in ins if d["name"] == feed), ins[0])
        out = outs[0]
        self._in, self._out = inp["index"], out["index"]
        self._outs = tuple(int(o["index"]) for o in outs)
        self._state = tuple((int(d["index"]), _zero(d)) for d in ins if d is not inp)
        self.inputs = len(ins)
        self.output_names = tuple(str(o["name"]) for o in outs)
        self.output_shapes = tuple(tuple(int(d) for d in o["shape"]) for o in outs)
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.input_dtype = inp["dtype"]
        self.input_quant = (float(inp["quantization"][0]), int(inp["quantization"][1]))
        self.output_quant = (float(out["quantization"][0]), int(out["quantization"][1]))

    def _invoke(self, x: np.ndarray, state: Sequence[np.ndarray] | None = None) -> Any:
        it = self._it
        if it is None:
            raise ModelError("invoke failed: the interpreter is closed")
        if state is not None and len(state) != len(self._state):
            raise ModelError(f"invoke failed: {len(state)} state tensors for {len(self._state)} state inputs")
        try:
            it.reset_all_variables()  # ~0.2 us: state is reset per request (a session's comes in ``state``)
            for i, (index, zero) in enumerate(self._state):
                it.set_tensor(index, zero if state is None else state[i])
            it.set_tensor(self._in, x)
            it.invoke()
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"invoke failed: {str(exc).splitlines()[0]}") from None
        return it

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        """The first output."""
        return np.array(self._invoke(x).get_tensor(self._out))

    def invoke_all(self, x: np.ndarray, state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Every output, in the model's order; ``state``: the state inputs' values (else zeros)."""
        it = self._invoke(x, state)
        return [np.array(it.get_tensor(o)) for o in self._outs]

    def close(self) -> None:
        self._it = None


class OnnxBackend:
    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort  # optional dependency

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self._s = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{path.name}: cannot load ({str(exc).splitlines()[0]})") from None
        i = self._s.get_inputs()[0]
        self.name = "onnx"
        self._in_name = i.name
        self.inputs = len(self._s.get_inputs())
        self.output_names = tuple(o.name for o in self._s.get_outputs())
        self.output_shapes = tuple(
            tuple(d if isinstance(d, int) else 1 for d in o.shape) for o in self._s.get_outputs()
        )
        self.input_shape = tuple(int(d) if isinstance(d, int) else 1 for d in i.shape)
        self.input_dtype = np.float32
        self.input_quant = (0.0, 0)
        self.output_quant = (0.0, 0)

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        return self.invoke_all(x)[0]

    def invoke_all(self, x: np.ndarray, state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        session = self._s
        if session is None:
            raise ModelError("invoke failed: the session is closed")
        if state:
            raise ModelError("invoke failed: an ONNX model here takes no state inputs")
        try:
            return [np.asarray(o) for o in session.run(None, {self._in_name: x.astype(np.float32)})]
        except Exception as exc:
            raise ModelError(f"invoke failed: {str(exc).splitlines()[0]}") from None

    def close(self) -> None:
        self._s = None


def _zero(detail: dict[str, Any]) -> np.ndarray:
    """0.0 in an input's representation: its quantized zero point, or 0 (a state's start)."""
    dtype = np.dtype(detail["dtype"])
    zp = int(detail["quantization"][1]) if dtype.kind in "iu" else 0
    return np.full([int(d) for d in detail["shape"]], zp, dtype=dtype)


EdgeTpuOpener = Callable[[Path, Path | None, int | None, str | None], Backend]


def load_backend(path: Path, runtime: str, threads: int | None = None, feed: str | None = None) -> Backend:
    if runtime == "onnx":
        return OnnxBackend(path, threads)
    return LiteRTBackend(path, edgetpu=(runtime == "edgetpu"), threads=threads, feed=feed)


@dataclass
class Model:
    """A loaded bundle: one backend plus the manifest's preprocess spec, labels and baseline.

    Lifetime (what makes a model switch lose no request): a request takes the model with
    :meth:`hold` and gives it back with :meth:`release`; :meth:`close` only retires it, and
    the backend is closed when the last holder releases it (at once if nobody holds it). So
    the updater can swap a new model in and close the old one while requests are still
    running on the old one: they finish on it, then it goes. Invokes are serialized on
    ``_lock`` (one interpreter is not thread-safe), and closing the backend takes it too."""

    backend: Backend
    info: BundleInfo
    preprocess: dict[str, Any]
    labels: list[str] = field(default_factory=list)
    baseline: Baseline | None = None
    selftest: dict[str, Any] | None = None
    signature: Signature | None = None  # None: a bundle made before signatures, a classifier
    label_map: LabelMap = field(default_factory=LabelMap)  # class id -> name (protocol.labels)
    state_pairs: tuple[tuple[TensorSpec, TensorSpec], ...] = ()  # (state input, state output)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _direct: bool | None = None
    _score_levels: Any = None  # (dtype, float per 8-bit value): see _levels
    _users: int = 0  # holders (requests running on this model): see hold/release
    _retired: bool = False  # close() was called; the backend closes with the last holder
    _users_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(
        cls,
        slot_dir: Path,
        artifact: str,
        runtime: str,
        info: BundleInfo,
        model_spec: dict[str, Any],
        roles: dict[str, str],
        threads: int | None = None,
        edgetpu: EdgeTpuOpener | None = None,
    ) -> Model:
        """``edgetpu``: how an Edge TPU artifact is opened, given its path, its CPU twin's (the
        bundle's ``tflite_int8``/``tflite_float``, or None), threads and the request's input name
        (the agent passes :func:`agent.watchdog.guarded`); else a plain LiteRT delegate backend."""
        try:
            signature = of_model(model_spec)
        except BadPayload as exc:
            raise ModelError(str(exc)) from None
        feed = signature.request_inputs[0].name if signature is not None and signature.request_inputs else None
        if runtime == "edgetpu" and edgetpu is not None:  # agent.watchdog: fails over to the CPU twin
            twin = roles.get("tflite_int8") or roles.get("tflite_float")
            backend: Backend = edgetpu(slot_dir / artifact, slot_dir / twin if twin else None, threads, feed)
        else:
            backend = load_backend(slot_dir / artifact, runtime, threads, feed)
        problem = signature_problem(signature, backend)
        if problem is not None:
            backend.close()
            raise ModelError(f"{artifact}: {problem}")
        label_map = LabelMap()
        try:
            if "labels" in roles:
                label_map = parse_labels((slot_dir / roles["labels"]).read_text(errors="replace"))
            pairs = state_pairs(signature) if backend.name != "onnx" else ()
        except (BadPayload, ValueError) as exc:
            backend.close()
            raise ModelError(f"{artifact}: {exc}") from None
        baseline = _baseline_or_none(slot_dir / roles["baseline"]) if "baseline" in roles else None
        selftest = _json_or_none(slot_dir / roles["selftest"]) if "selftest" in roles else None
        pre = model_spec.get("preprocess") if isinstance(model_spec.get("preprocess"), dict) else None
        return cls(
            backend,
            info,
            pre or default_preprocess(backend),
            label_map.as_list(),
            baseline,
            selftest,
            signature,
            label_map,
            pairs,
        )

    @property
    def served_by(self) -> str:
        return self.backend.name

    @property
    def form(self) -> str:
        """How this model answers (:func:`protocol.answers.form`): ``classification`` or ``tensors``."""
        return answers.form(self.signature)

    def _decode(self, data: bytes) -> np.ndarray:
        """Image bytes -> uint8 array (1, H, W, C) at the preprocess size (:mod:`agent.image`)."""
        p = self.preprocess
        if p.get("kind") != "image":
            raise InputError('this model takes tensors, not images; send JSON {"inputs": [...]}')
        try:
            return decode(data, int(p["height"]), int(p["width"]), int(p.get("channels", 3)), resize_filter(p))
        except ImageTooLarge as exc:
            raise TooLarge(str(exc)) from None
        except ValueError as exc:
            raise InputError(str(exc)) from None

    @property
    def direct(self) -> bool:
        """True when preprocess + input quantization map each pixel to itself (uint8 models
        such as Coral's): the decoded image is the input tensor, no float round trip."""
        if self._direct is None:
            p, (scale, zp) = self.preprocess, self.backend.input_quant
            scale = scale or 1.0  # a uint8 input without quantization takes raw pixels
            self._direct = bool(
                p.get("kind") == "image"
                and np.dtype(self.backend.input_dtype) == np.uint8
                and abs(float(p.get("scale", 1.0)) / scale - 1) < 1e-6
                and abs(float(p.get("offset", 0.0)) / scale + zp) < 1e-3
            )
        return self._direct

    def image_to_input(self, data: bytes) -> np.ndarray:
        """Image bytes -> the float input tensor (preprocess scale/offset applied)."""
        p = self.preprocess
        px = self._decode(data).astype(np.float32)
        return px * float(p.get("scale", 1.0)) + float(p.get("offset", 0.0))

    def image_to_raw(self, data: bytes) -> np.ndarray:
        """Image bytes -> the raw input tensor, skipping floats when :attr:`direct`."""
        if self.direct:
            return self._decode(data).reshape(self.backend.input_shape)
        return self.quantize(self.image_to_input(data))

    def binary_to_raw(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
        """A binary tensor -> (x for drift, raw input, affine to make x float or None).

        A tensor in the model's own quantized dtype is taken as the raw input (no float round
        trip); a float32 tensor is the float input and is quantized."""
        want = self.backend.input_shape
        if t.size != int(np.prod(want)):
            raise InputError(f"tensor has {t.size} values, model input {list(want)} needs {int(np.prod(want))}")
        dtype = np.dtype(self.backend.input_dtype)
        if t.dtype == dtype and dtype.kind in "iu":
            scale, zp = self.backend.input_quant
            return t, t.reshape(want), ((scale, -zp * scale) if scale else None)
        if t.dtype.kind != "f":
            raise InputError(f"tensor dtype {t.dtype} does not match the model input {dtype}; send float32 or {dtype}")
        x = t.astype(np.float32).reshape(want)
        return x, self.quantize(x), None

    def predict_raw(self, raw: np.ndarray) -> np.ndarray:
        with self._lock:
            out = self.backend.invoke_raw(raw)
        return self.dequantize(out).reshape(-1)

    def tensor_to_input(self, inputs: Any) -> np.ndarray:
        try:
            with np.errstate(over="raise", invalid="raise"):
                arr = np.asarray(inputs, dtype=np.float32)
        except FloatingPointError:
            raise InputError("inputs holds a number beyond the float32 range (about 3.4e38)") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"inputs is not a nested list of numbers ({exc})") from None
        want = self.backend.input_shape
        if arr.size != int(np.prod(want)):
            raise InputError(f"inputs has {arr.size} values, model input {list(want)} needs {int(np.prod(want))}")
        if not np.all(np.isfinite(arr)):
            raise InputError("inputs holds NaN or infinite values")
        return arr.reshape(want)

    def preprocess_problem(self) -> str | None:
        """Why the manifest's preprocess cannot feed this model's input, or None."""
        p = self.preprocess
        if p.get("kind") != "image":
            return None
        try:
            n = int(p["height"]) * int(p["width"]) * int(p.get("channels", 3))
        except (KeyError, TypeError, ValueError):
            return f"preprocess {p!r:.120} needs integer height, width and channels"
        want = int(np.prod(self.backend.input_shape))
        if n != want:
            return (
                f"preprocess {p.get('height')}x{p.get('width')}x{p.get('channels', 3)} gives {n} values, "
                f"model input {list(self.backend.input_shape)} needs {want}"
            )
        return None

    def quantize(self, x: np.ndarray) -> np.ndarray:
        if x.size != int(np.prod(self.backend.input_shape)):
            raise ModelError(
                f"input has {x.size} values, model input {list(self.backend.input_shape)} "
                f"needs {int(np.prod(self.backend.input_shape))}"
            )
        dtype = np.dtype(self.backend.input_dtype)
        scale, zp = self.backend.input_quant
        if dtype.kind == "f":
            return x.astype(dtype).reshape(self.backend.input_shape)
        info = np.iinfo(dtype)
        q = np.round(x / scale) + zp if scale else np.round(x)
        return np.clip(q, info.min, info.max).astype(dtype).reshape(self.backend.input_shape)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        levels = self._levels(raw.dtype)
        if levels is not None:  # one table lookup instead of three array passes (same float32 values)
            return levels[raw.view(np.uint8)]
        return self._dequantize(raw)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        scale, zp = self.backend.output_quant
        if np.dtype(raw.dtype).kind in "iu" and scale:
            return (raw.astype(np.float32) - zp) * scale
        return raw.astype(np.float32)

    def _levels(self, dtype: np.dtype[Any]) -> np.ndarray | None:
        """For an 8-bit output: each of its 256 values (indexed by byte) dequantized."""
        if dtype not in (np.uint8, np.int8):
            return None
        if self._score_levels is None or self._score_levels[0] != dtype:
            self._score_levels = (np.dtype(dtype), self._dequantize(np.arange(256, dtype=np.uint8).view(dtype)))
        levels: np.ndarray = self._score_levels[1]
        return levels

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float input tensor -> float scores (1-D). Raises ModelError."""
        raw = self.quantize(x)
        with self._lock:
            out = self.backend.invoke_raw(raw)
        return self.dequantize(out).reshape(-1)

    def invoke_raw(self, raw: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.backend.invoke_raw(raw)

    def invoke_all(self, raw: np.ndarray, state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        with self._lock:
            return self.backend.invoke_all(raw, state)

    def top(self, scores: np.ndarray, k: int = answers.TOP_K) -> list[dict[str, Any]]:
        return answers.top(scores, self.labels, k)

    def hold(self) -> None:
        """One more user; the backend stays open until the matching :meth:`release`."""
        with self._users_lock:
            self._users += 1

    def release(self) -> None:
        with self._users_lock:
            self._users -= 1
            last = self._retired and self._users == 0
        if last:
            self._close_backend()

    def close(self) -> None:
        """Retire the model: its backend closes now if nobody holds it, else when the last
        holder releases it."""
        with self._users_lock:
            if self._retired:
                return
            self._retired = True
            last = self._users == 0
        if last:
            self._close_backend()

    def _close_backend(self) -> None:
        with self._lock:  # after an invoke in progress by a caller that did not hold the model
            self.backend.close()


def signature_problem(signature: Signature | None, backend: Backend) -> str | None:
    """Why the bundle's signature does not describe the model it serves, or None."""
    if signature is None:
        if backend.inputs > 1:
            return f"takes {backend.inputs} inputs and the bundle has no signature saying which a request fills"
        return answers.unsigned_problem(backend.output_shapes)
    if len(signature.request_inputs) != 1:
        return f"its signature asks for {len(signature.request_inputs)} inputs per request; the local API feeds one"
    want = signature.request_inputs[0]
    if tuple(backend.input_shape) != want.shape and backend.name != "onnx":
        return f"input {list(backend.input_shape)} is not the signature's {want.describe()}"
    if len(backend.output_names) not in (len(signature.outputs), len(signature.answer_outputs)):
        return (
            f"has {len(backend.output_names)} outputs, its signature lists {len(signature.outputs)} "
            f"({', '.join(t.name for t in signature.outputs[:4])})"
        )
    return None


def default_preprocess(backend: Backend) -> dict[str, Any]:
    """Preprocess for a bundle that does not say: image of the input's H×W×C so that the
    quantized tensor equals the pixel values (scale/offset undo the input quantization; a uint8
    input without quantization takes raw pixels)."""
    shape = backend.input_shape
    if len(shape) != 4 or shape[-1] not in (1, 3):
        return {"kind": "tensor"}
    scale, zp = backend.input_quant
    if np.dtype(backend.input_dtype) == np.uint8 and not scale:
        return {
            "kind": "image",
            "height": shape[1],
            "width": shape[2],
            "channels": shape[3],
            "scale": 1.0,
            "offset": 0.0,
        }
    if np.dtype(backend.input_dtype).kind == "f" or not scale:
        return {
            "kind": "image",
            "height": shape[1],
            "width": shape[2],
            "channels": shape[3],
            "scale": 1 / 255.0,
            "offset": 0.0,
        }
    return {
        "kind": "image",
        "height": shape[1],
        "width": shape[2],
        "channels": shape[3],
        "scale": scale,
        "offset": -zp * scale,
    }


def _baseline_or_none(path: Path) -> Baseline | None:
    """The drift baseline, or None (no drift bins are recorded) when it cannot be read."""
    try:
        return parse_baseline(path.read_bytes())
    except (OSError, BadPayload) as exc:
        log.warning("cannot read %s (%s); recording no drift", path.name, exc)
        return None


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        log.warning("cannot read %s; ignoring it", path.name)
        return None


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0
