"""Per-session recurrent state for stateful models (docs/models.md, "Sessions").

A model whose signature has ``state`` inputs and outputs (the traffic detector's LSTM ``c``/``h``)
reads a state and writes the next one. The agent keeps that state per *session*, an id the app
sends in the ``X-Session-Id`` header, so an app's answers depend on its own earlier requests and
never on another app's.

Rules, per (loaded model, session id):

* **no session id**: the request is answered from the initial state (zeros) and nothing is kept:
  state is reset per request; the answer says ``"state": "reset"``.
* **start**: ``X-Session-Id: ID`` with ``X-Session-Reset: true`` (re)starts ``ID`` from the
  initial state; the state the request leaves is kept. Answer: ``"state": "session"``,
  ``"session": {"id": ID, "step": 1}``.
* **continue**: ``X-Session-Id: ID`` alone continues from the state ``ID``'s last request left;
  ``step`` counts the requests since the start.
* **unknown**: continuing an ``ID`` the agent does not hold (never started, unused for
  ``idle_s``, evicted, begun on a model since replaced, or the agent restarted) is refused
  (:class:`UnknownSession`, HTTP 422) rather than silently restarted: the app decides to reset.
* **bounded**: at most ``max_sessions`` are held; starting one more evicts the least recently
  used (its next request is refused as unknown). Evicting rather than refusing the newcomer
  means an abandoned session cannot lock new apps out until it times out.
* **one at a time**: requests of one session are serialised (each takes the session's lock from
  checkout to checkin), so no step is lost to a race; different sessions run independently.
* A model swap drops every session (:meth:`Sessions.clear`): a state is meaningless to another model.

A stateful model whose state is not in its inputs and outputs (a fused LSTM's variable tensors,
``keras_lstm_mnist_ptq``) cannot be carried per session: a session id for it is refused, and
without one it is reset per request like every stateful model.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol.signature import Signature, TensorSpec

from .errors import InputError, UnknownSession

MAX_ID = 128


@dataclass
class Session:
    id: str
    state: tuple[np.ndarray, ...]
    step: int = 0
    used: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def state_pairs(signature: Signature | None) -> tuple[tuple[TensorSpec, TensorSpec], ...]:
    """(state input, state output) pairs in the model's order; empty when the model carries no
    state through its inputs and outputs. Raises ``ValueError`` when the counts
    or shapes of the two sides differ (the pairing would be a guess)."""
    if signature is None:
        return ()
    ins = [t for t in signature.inputs if t.role == "state"]
    outs = [t for t in signature.outputs if t.role == "state"]
    if len(ins) != len(outs):
        raise ValueError(f"{len(ins)} state inputs but {len(outs)} state outputs")
    for i, o in zip(ins, outs, strict=True):
        if i.shape != o.shape:
            raise ValueError(f"state input {i.describe()} does not match state output {o.describe()}")
    return tuple(zip(ins, outs, strict=True))


def carry(out: TensorSpec, into: TensorSpec, value: np.ndarray) -> np.ndarray:
    """A state output as the matching state input takes it: the same array when the two share
    dtype and quantization, else dequantized with the output's and quantized with the input's."""
    dtype = np.dtype(into.dtype)
    if out.dtype == into.dtype and out.quantization == into.quantization:
        return value.reshape(into.shape)
    real = value.astype(np.float32)
    if out.quantization is not None and value.dtype.kind in "iu":
        real = (real - out.quantization.zero_point) * np.float32(out.quantization.scale)
    if dtype.kind == "f":
        return real.astype(dtype).reshape(into.shape)
    q = into.quantization
    info = np.iinfo(dtype)
    ints = np.round(real / q.scale) + q.zero_point if q is not None else np.round(real)
    state: np.ndarray = np.clip(ints, info.min, info.max).astype(dtype).reshape(into.shape)
    return state


def initial(pairs: Sequence[tuple[TensorSpec, TensorSpec]]) -> tuple[np.ndarray, ...]:
    """The initial state: 0.0 in each state input's representation (its zero point)."""
    return tuple(
        np.full(i.shape, i.quantization.zero_point if i.quantization is not None else 0, dtype=np.dtype(i.dtype))
        for i, _ in pairs
    )


def check_id(sid: str) -> str:
    if not sid or len(sid) > MAX_ID or not sid.isprintable() or sid != sid.strip():
        raise InputError(f"X-Session-Id {sid!r:.60} must be 1..{MAX_ID} printable characters without edge spaces")
    return sid


class Sessions:
    """The held sessions of the loaded model, least recently used first."""

    def __init__(self, max_sessions: int = 64, idle_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        if max_sessions < 1 or idle_s <= 0:
            raise ValueError(f"max_sessions must be >= 1 and idle_s > 0, got {max_sessions} and {idle_s}")
        self.max_sessions, self.idle_s, self.clock = max_sessions, idle_s, clock
        self._held: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._held)

    def checkout(self, sid: str, reset: bool, start: tuple[np.ndarray, ...]) -> Session:
        """The session ``sid`` with its lock taken (give it back with :meth:`checkin` or
        :meth:`abandon`): restarted from ``start`` when ``reset``; else as its last request left
        it, or :class:`UnknownSession`."""
        with self._lock:
            self._expire()
            s = self._held.get(sid)
            if s is None:
                if not reset:
                    raise UnknownSession(
                        f"session {sid!r:.60} is not held here (never started, unused for {self.idle_s:g} s, "
                        f"evicted as the least recently used of {self.max_sessions}, or begun on another model); "
                        "send X-Session-Reset: true to start it from the initial state"
                    )
                while len(self._held) >= self.max_sessions:
                    self._held.popitem(last=False)
                    self.evicted += 1
                s = self._held[sid] = Session(sid, start, 0, self.clock())
            self._held.move_to_end(sid)
        s.lock.acquire()
        if reset:
            s.state, s.step = start, 0
        return s

    def checkin(self, s: Session, state: tuple[np.ndarray, ...]) -> int:
        """Keep the state the request left; the session's step count after it."""
        s.state, s.step, s.used = state, s.step + 1, self.clock()
        s.lock.release()
        return s.step

    def abandon(self, s: Session) -> None:
        """The request failed: the session keeps the state it had."""
        s.used = self.clock()
        s.lock.release()

    def clear(self) -> None:
        with self._lock:
            self._held.clear()

    def _expire(self) -> None:
        now = self.clock()  # a scan: at most max_sessions, and "used" is set at checkin, not in LRU order
        for sid in [sid for sid, s in self._held.items() if now - s.used >= self.idle_s and not s.lock.locked()]:
            del self._held[sid]
            self.expired += 1
