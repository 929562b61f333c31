"""The Edge TPU watchdog: a stuck or failing delegate moves serving to the bundle's CPU model.

Coral accelerators fail in ways a process cannot repair: a USB accelerator that locks up until
it is unplugged (``invoke()`` never returns), a delegate that errors on every invoke after a
cold start, an M.2 module whose temperature reads -87.9 °C once it has failed. An Edge TPU
bundle ships a CPU model beside the Edge TPU one (``tflite_int8``/``tflite_float``), so the
agent keeps serving on the CPU while the TPU is broken, and tries the TPU again with backoff.

Rules (the pure core, :func:`step`; ``now`` is the shell's monotonic clock)::

    state   event          -> state, action
    tpu     ok             -> tpu, keep          errors = 0 (and the backoff level too once the
                                                 TPU has served ``stable_s`` since it came back)
    tpu     error          -> tpu, keep          errors + 1, while errors < max_errors
    tpu     error          -> cpu, failover      the max_errors-th error in a row; reason "errors"
    tpu     timeout        -> cpu, failover      reason "timeout" (one hung invoke is enough)
    tpu     load_failed    -> cpu, failover      reason "load_failed" (the delegate did not load)
    cpu     tick           -> cpu, retry         now >= retry_at and no probe running
    cpu     probe_ok       -> tpu, restore       reason cleared
    cpu     probe_failed   -> cpu, keep          retry_at = now + the next backoff
    any     other          -> unchanged, keep

Failover sets ``retry_at = now + min(backoff_s * 2**level, backoff_max_s)`` and raises ``level``.

The I/O shell, :class:`GuardedBackend`, is a :class:`~agent.runtime.Backend`: every TPU invoke
runs on a worker thread and the request waits at most ``timeout_s`` for it. A hung invoke cannot
be killed inside the process (the delegate is native code holding the USB transfer), so its
thread is abandoned (a daemon thread, it never blocks the exit) and the TPU interpreter with it;
the request that hit the hang, and any request whose TPU invoke raised, is run again on the CPU
model, so the app gets an answer either way (``served_by: "cpu"``). The retry first probes the
delegate in a child process (:func:`agent.runtime.probe_edgetpu`: a wedged library cannot take
the agent down), then opens a fresh TPU interpreter in-process. A bundle without a CPU model
has nothing to fail over to: its TPU errors and timeouts fail the request as before (the local
API's cloud fallback, if configured, answers).

Telemetry (:class:`protocol.messages.Accelerator`): the runtime serving (``tpu``/``cpu``), the
failover reason code, failovers so far, and the Edge TPU's temperature from the apex driver's
sysfs file (millidegrees), or ``"invalid"`` for a reading no working chip gives (-87.9 °C after
a failure, anything outside :data:`TEMP_RANGE_C`), or none when there is no such file.

The Edge TPU *driver* (how an interpreter with the delegate is opened and probed) is injectable
for tests (``EDGEFLEET_AGENT_EDGETPU_DRIVER=module:attr``, :mod:`agent.config`): the sandbox has
no Coral, so the tests wrap a real LiteRT CPU interpreter in a driver whose invoke hangs or
raises on demand, exactly where the libedgetpu delegate would be.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protocol.messages import Accelerator

from .config import AgentConfig
from .errors import ConfigError, InvokeHung, ModelError
from .runtime import Backend, EdgeTpuProbe, LiteRTBackend, probe_edgetpu

log = logging.getLogger(__name__)

REASONS = ("timeout", "errors", "load_failed")
TEMP_RANGE_C = (-40.0, 150.0)  # the Edge TPU's rated range is -20..85 °C; past this the sensor lies
APEX_TEMP = Path("/sys/class/apex/apex_0/temp")


# the pure core ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    timeout_s: float = 2.0  # one TPU invoke (MobileNet takes ~3 ms; a cold first invoke ~100s of ms)
    max_errors: int = 3  # TPU invoke errors in a row that move serving to the CPU
    backoff_s: float = 30.0  # first retry of the TPU after a failover; doubles per failed retry
    backoff_max_s: float = 1800.0
    stable_s: float = 600.0  # the TPU served this long after coming back: the backoff starts over


@dataclass(frozen=True)
class Watch:
    on: str = "tpu"  # tpu | cpu
    reason: str | None = None  # why serving left the TPU (REASONS), None while on the TPU
    errors: int = 0  # TPU invoke errors in a row
    level: int = 0  # failed tries so far (the backoff exponent)
    retry_at: float | None = None
    probing: bool = False
    since: float = 0.0  # when serving moved to ``on``
    failovers: int = 0


def backoff(level: int, p: Policy) -> float:
    return float(min(p.backoff_s * 2 ** min(level, 30), p.backoff_max_s))


def _failover(w: Watch, reason: str, now: float, p: Policy) -> Watch:
    return Watch("cpu", reason, 0, w.level + 1, now + backoff(w.level, p), False, now, w.failovers + 1)


def step(w: Watch, event: str, now: float, p: Policy) -> tuple[Watch, str]:
    """One event -> (the next watch state, ``keep`` | ``failover`` | ``retry`` | ``restore``)."""
    if w.on == "tpu":
        if event == "ok":
            level = 0 if w.level and now - w.since >= p.stable_s else w.level
            return replace(w, errors=0, level=level), "keep"
        if event == "error":
            if w.errors + 1 >= p.max_errors:
                return _failover(w, "errors", now, p), "failover"
            return replace(w, errors=w.errors + 1), "keep"
        if event in ("timeout", "load_failed"):
            return _failover(w, event, now, p), "failover"
        return w, "keep"
    if event == "tick" and not w.probing and w.retry_at is not None and now >= w.retry_at:
        return replace(w, probing=True), "retry"
    if event == "probe_ok" and w.probing:
        return Watch("tpu", None, 0, w.level, None, False, now, w.failovers), "restore"
    if event == "probe_failed" and w.probing:
        return replace(w, probing=False, level=w.level + 1, retry_at=now + backoff(w.level, p)), "keep"
    return w, "keep"


def temperature(text: str | None) -> float | str | None:
    """The apex driver's ``temp`` file (millidegrees C) -> °C, ``"invalid"`` for a reading no
    working chip gives (a failed M.2 module reads -87.9 °C), None when there is no reading."""
    if text is None:
        return None
    try:
        c = int(text.strip()) / 1000
    except ValueError:
        return "invalid"
    return round(c, 1) if TEMP_RANGE_C[0] <= c <= TEMP_RANGE_C[1] else "invalid"


def read_temperature(path: Path = APEX_TEMP) -> float | str | None:
    try:
        return temperature(path.read_text())
    except OSError:
        return None


# the driver: how an Edge TPU interpreter is opened and probed ------------------------------------


class Driver(Protocol):
    def open(self, path: Path, cpu_path: Path | None, threads: int | None, feed: str | None) -> Backend: ...

    def probe(self) -> EdgeTpuProbe: ...


class LibEdgeTpu:
    """The real one: LiteRT with ``libedgetpu.so.1``; probed in a child process."""

    def open(self, path: Path, cpu_path: Path | None, threads: int | None, feed: str | None) -> Backend:
        try:
            return LiteRTBackend(path, edgetpu=True, threads=threads, feed=feed)
        except (OSError, ValueError) as exc:  # load_delegate: OSError (no library), ValueError (no device)
            raise ModelError(f"{path.name}: the Edge TPU delegate did not load ({str(exc).splitlines()[0]})") from None

    def probe(self) -> EdgeTpuProbe:
        return probe_edgetpu()


def load_driver(spec: str | None) -> Driver:
    """``module:attr`` (tests only, :mod:`agent.config`) or the real libedgetpu driver."""
    if not spec:
        return LibEdgeTpu()
    mod_name, _, attr = spec.partition(":")
    try:
        driver: Driver = getattr(importlib.import_module(mod_name), attr or "DRIVER")
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"EDGEFLEET_AGENT_EDGETPU_DRIVER: cannot load {spec!r} ({exc})") from None
    return driver


@dataclass(frozen=True)
class Settings:
    policy: Policy = Policy()
    driver: Driver = LibEdgeTpu()
    temp_path: Path = APEX_TEMP


_settings = Settings()


def settings_for(cfg: AgentConfig) -> Settings:
    policy = Policy(
        cfg.tpu_invoke_timeout_s, cfg.tpu_max_errors, cfg.tpu_retry_s, max(cfg.tpu_retry_s, cfg.tpu_retry_max_s)
    )
    return Settings(policy, load_driver(cfg.edgetpu_driver), cfg.apex_temp_path)


def configure(settings: Settings) -> None:
    """Set once by the daemon from its config, before any model opens."""
    global _settings
    _settings = settings


def settings() -> Settings:
    return _settings


# the I/O shell -----------------------------------------------------------------------------------


class _Worker:
    """One daemon thread that runs a TPU interpreter's invokes, so a request can stop waiting."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], list[Any], threading.Event]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="edgetpu-invoke", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self._q.get()
            try:
                box.append(fn())
            except BaseException as exc:  # handed to the waiting request
                box.append(exc)
            done.set()

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        box: list[Any] = []
        done = threading.Event()
        self._q.put((fn, box, done))
        if not done.wait(timeout):
            raise InvokeHung(f"Edge TPU invoke did not return within {timeout} s")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self) -> None:
        self._q.put((lambda: None, [], threading.Event()))


class GuardedBackend:
    """An Edge TPU backend that fails over to the bundle's CPU model (see the module docstring)."""

    def __init__(
        self,
        tpu_path: Path,
        cpu_path: Path | None,
        threads: int | None = None,
        feed: str | None = None,
        conf: Settings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conf = conf or settings()
        self._paths = (tpu_path, cpu_path, threads, feed)
        self._clock = clock
        self._lock = threading.Lock()  # guards the watch state and the backends, never held during an invoke
        self._cpu: Backend | None = None
        self._tpu: Backend | None = None
        self._worker: _Worker | None = None
        self._closed = threading.Event()
        self._w = Watch(since=clock())
        self.name = "edgetpu"  # what serves now: "cpu" while failed over (answers' served_by)
        try:
            self._tpu = self._conf.driver.open(tpu_path, cpu_path, threads, feed)
            self._worker = _Worker()
        except ModelError as exc:
            if cpu_path is None:
                raise
            log.warning("Edge TPU model did not load (%s); serving %s on the CPU", exc, cpu_path.name)
            self._event("load_failed")
        ref = self._tpu if self._tpu is not None else self._cpu_backend()
        self.input_shape = ref.input_shape
        self.input_dtype = ref.input_dtype
        self.input_quant = ref.input_quant
        self.output_quant = ref.output_quant
        self.inputs = ref.inputs
        self.output_names = ref.output_names
        self.output_shapes = ref.output_shapes

    def accelerator(self) -> Accelerator:
        w = self._w
        return Accelerator(
            "tpu" if w.on == "tpu" else "cpu", w.reason, w.failovers, read_temperature(self._conf.temp_path)
        )

    # events ---------------------------------------------------------------------------------
    def _event(self, event: str) -> str:
        with self._lock:
            before = self._w
            self._w, action = step(before, event, self._clock(), self._conf.policy)
            self.name = "edgetpu" if self._w.on == "tpu" else "cpu"
            if action == "failover":
                self._tpu, self._worker = None, None  # abandoned: a hung invoke may still hold them
        if action == "failover":
            log.error(
                "Edge TPU %s: serving on the CPU model; retrying the TPU in %.0f s",
                {"timeout": "invoke hung", "errors": "invoke failed repeatedly", "load_failed": "did not load"}[
                    self._w.reason or "errors"
                ],
                (self._w.retry_at or 0) - self._clock(),
            )
            threading.Thread(target=self._retry_loop, name="edgetpu-retry", daemon=True).start()
        return action

    def _retry_loop(self) -> None:
        while not self._closed.is_set():
            w = self._w
            if w.on == "tpu":
                return
            wait = (w.retry_at or 0) - self._clock()
            if wait > 0:
                self._closed.wait(min(wait, 5.0))
                continue
            if self._event("tick") != "retry":
                continue
            probe = self._conf.driver.probe()
            backend = None
            if probe.present:
                tpu_path, cpu_path, threads, feed = self._paths
                try:
                    backend = self._conf.driver.open(tpu_path, cpu_path, threads, feed)
                except ModelError as exc:
                    probe = EdgeTpuProbe(False, str(exc))
            if backend is None or self._closed.is_set():
                log.warning("Edge TPU retry failed: %s", probe.detail)
                self._event("probe_failed")
                continue
            with self._lock:
                self._tpu, self._worker = backend, _Worker()
            self._event("probe_ok")
            log.info("Edge TPU back: serving on the TPU again")
            return

    # the Backend interface ------------------------------------------------------------------
    def _cpu_backend(self) -> Backend:
        with self._lock:
            if self._cpu is not None:
                return self._cpu
            _, cpu_path, threads, feed = self._paths
            if cpu_path is None:
                raise ModelError("the Edge TPU failed and this bundle has no CPU model to fall back to")
            cpu = LiteRTBackend(cpu_path, edgetpu=False, threads=threads, feed=feed)
            ref = self._tpu
            if ref is not None and (
                cpu.input_shape != ref.input_shape
                or np.dtype(cpu.input_dtype) != np.dtype(ref.input_dtype)
                or cpu.output_shapes != ref.output_shapes
                or cpu.input_quant != ref.input_quant
                or cpu.output_quant != ref.output_quant
            ):
                cpu.close()
                raise ModelError(
                    f"{cpu_path.name} takes {list(cpu.input_shape)} {cpu.input_quant} and gives {cpu.output_shapes} "
                    f"{cpu.output_quant}, the Edge TPU model {list(ref.input_shape)} {ref.input_quant} and "
                    f"{ref.output_shapes} {ref.output_quant}: not a CPU twin to fall back to"
                )
            self._cpu = cpu
            return cpu

    def _run(self, call: Callable[[Backend], Any]) -> Any:
        with self._lock:
            tpu, worker = self._tpu, self._worker
        if self._w.on == "tpu" and tpu is not None and worker is not None:
            try:
                out = worker.call(lambda: call(tpu), self._conf.policy.timeout_s)
            except InvokeHung:
                self._event("timeout")
            except ModelError as exc:
                log.warning("Edge TPU invoke failed: %s; answering on the CPU", exc)
                self._event("error")
            else:
                if self._w.errors or self._w.level:  # nothing to reset otherwise: skip the lock
                    self._event("ok")
                return out
            if self._paths[1] is None:
                raise ModelError("Edge TPU invoke failed or hung and this bundle has no CPU model to fall back to")
        return call(self._cpu_backend())

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._run(lambda b: b.invoke_raw(x))
        return out

    def invoke_all(self, x: np.ndarray, state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        out: list[np.ndarray] = self._run(lambda b: b.invoke_all(x, state))
        return out

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            tpu, worker, cpu = self._tpu, self._worker, self._cpu
            self._tpu = self._worker = self._cpu = None
        if worker is not None:
            worker.stop()
        for b in (tpu, cpu):
            if b is not None:
                b.close()


def guarded(
    tpu_path: Path, cpu_path: Path | None, threads: int | None = None, feed: str | None = None
) -> GuardedBackend:
    return GuardedBackend(tpu_path, cpu_path, threads, feed)
