"""Per-window telemetry recorded by the serving path, rotated by the daemon every interval.

A window holds a :class:`protocol.sketch.LatencySketch`, counts (inferences, errors, tpu, cpu,
cloud), drift bin counts of the input and output features (:mod:`protocol.features`; a
non-classifier's output features are :mod:`protocol.taskstats`'s, on its answer and the
baseline's ``task`` section) on the active bundle's baseline edges, and shadow stats (the
agreement per task, :func:`protocol.taskstats.agreement`, summed over the compared answers).
Thread-safe: HTTP handler threads record, the daemon rotates.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from protocol.baseline import SIDES, Baseline, TaskSection
from protocol.device import Health, Shadow
from protocol.features import input_features, output_features
from protocol.messages import COUNT_KEYS
from protocol.sketch import LatencySketch, bin_index
from protocol.taskstats import features as task_features

from .metrics import AgentMetrics

DRIFT_WAIT_S = 0.02


def raw_image_features(raw: Any, affine: tuple[float, float], preprocess: dict[str, Any]) -> dict[str, float] | None:
    """:func:`protocol.features.input_features` of ``raw * scale + offset`` for an image of
    8-bit raw pixels, from one histogram per channel instead of float arrays; None when ``raw``
    is not 8-bit or the preprocess is not an image (the caller then goes the float way).

    Same features, same formulas (means, population standard deviations, overall mean), with
    exact integer sums where the float32 path rounds (they agree to ~1e-5; a test compares).
    Measured on a 224x224x3 image: 0.9 ms instead of 4.7 ms, on the drift thread that shares
    the CPU with the next request; one ``bincount`` per channel column then took it to ~0.4 ms
    (adding per-channel offsets first, a uint16 pass over every pixel, cost as much as the
    counting). It runs while the next request's model runs (:meth:`Recorder._drift_worker`),
    where the paired rounds measured it at ~0.5 ms of that request's latency (issue 20 part 3)."""
    if preprocess.get("kind") != "image" or raw.dtype not in (np.uint8, np.int8):
        return None
    channels = int(preprocess.get("channels", raw.shape[-1]))
    flat = raw.reshape(-1, channels).view(np.uint8)
    hist = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(channels)])
    levels = np.arange(256, dtype=np.uint8).view(raw.dtype).astype(np.float64)  # the value of each byte
    n = flat.shape[0]
    mean = hist @ levels / n
    var = np.maximum(hist @ (levels * levels) / n - mean * mean, 0.0)
    scale, offset = affine
    out = {f"mean_c{i}": float(scale * mean[i] + offset) for i in range(channels)}
    out.update({f"std_c{i}": float(abs(scale) * np.sqrt(var[i])) for i in range(channels)})
    out["brightness"] = float(scale * mean.mean() + offset)
    return out


class Recorder:
    def __init__(self, metrics: AgentMetrics | None = None) -> None:
        self._lock = threading.Lock()
        self.metrics = metrics  # also counts every request for /metrics when enabled
        self._bundle: str | None = None
        self._label: tuple[str, str] | None = None  # the bundle's (name, version), for metrics
        self._edges: dict[str, dict[str, list[float]]] = {"inputs": {}, "outputs": {}}
        self._preprocess: dict[str, Any] = {}
        self._task: TaskSection | None = None  # the baseline's per-task context
        self._drift_q: queue.Queue[tuple[float, Any, Any, Any, Any, Any]] = queue.Queue(maxsize=256)
        self._drift_skipped = 0  # samples not binned because the worker fell behind
        self._closed: list[dict[str, Any]] = []  # windows closed early by a model switch
        self.invoking = threading.Event()  # set by the serving path while a model runs: see _drift_worker
        self._reset()
        threading.Thread(target=self._drift_worker, name="drift", daemon=True).start()

    def _reset(self) -> None:
        self._sketch = LatencySketch()
        self._counts = {k: 0 for k in COUNT_KEYS}
        self._drift = {side: {n: [0] * (len(e) + 1) for n, e in feats.items()} for side, feats in self._edges.items()}
        self._shadow: dict[str, Any] = {"n": 0, "agree": 0, "errors": 0, "delta_sum_s": 0.0, "bundle": None}

    def set_bundle(
        self,
        digest: str | None,
        baseline: Baseline | None,
        preprocess: dict[str, Any],
        label: tuple[str, str] | None = None,
    ) -> None:
        """Start recording for a new active bundle (``label``: its name and version). A window
        with data for the previous bundle is closed here (kept until the next :meth:`rotate`), so
        no window mixes two models."""
        if self.metrics is not None:
            self.metrics.set_active(label)
        with self._lock:
            self._label = label
            if digest != self._bundle and self._has_data():
                self._closed.append({**self._fields(), "end": int(time.time())})
                self._reset()
            self._bundle = digest
            self._edges = {side: baseline.edges(side) if baseline else {} for side in SIDES}
            self._task = baseline.task if baseline else None
            self._preprocess = preprocess
            self._drift = {
                side: {n: [0] * (len(e) + 1) for n, e in feats.items()} for side, feats in self._edges.items()
            }

    def record(
        self,
        path: str,
        seconds: float,
        ok: bool,
        x: Any = None,
        scores: Any = None,
        affine: tuple[float, float] | None = None,
        answer: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        """Count one request now; its drift features are computed off the request path.

        ``affine`` = (scale, offset) when ``x`` is raw pixels still to be mapped to floats;
        ``answer`` builds a non-classifier's answer (:data:`protocol.taskstats.PARAMS`) for its
        output features, on the drift thread."""
        wanted = x is not None or scores is not None or answer is not None
        if ok and wanted and (self._edges["inputs"] or self._edges["outputs"]):
            try:
                self._drift_q.put_nowait((time.monotonic(), self._bundle, x, scores, affine, answer))
            except queue.Full:
                self._drift_skipped += 1
        key = {"edgetpu": "tpu"}.get(path, path)
        if self.metrics is not None:
            self.metrics.observe(self._label, key, max(0.0, seconds), ok)
        with self._lock:
            self._counts["inferences"] += 1
            if not ok:
                self._counts["errors"] += 1
                return
            if key in self._counts:
                self._counts[key] += 1
            self._sketch.add(max(0.0, seconds))

    def _drift_worker(self) -> None:
        while True:
            queued, bundle, x, scores, affine, answer = self._drift_q.get()
            # Bin while a model runs: invoke() lets go of the GIL, so this thread's numpy work
            # then costs the request threads nothing, whereas right after an answer it would
            # hold the GIL while the next request is read and decoded. A sample waits for that
            # at most DRIFT_WAIT_S after it was queued (an idle agent bins it then).
            wait = queued + DRIFT_WAIT_S - time.monotonic()
            if wait > 0:
                self.invoking.wait(wait)
            try:
                self._bin(bundle, x, scores, affine, answer)
            finally:
                self._drift_q.task_done()

    def _bin(
        self,
        bundle: str | None,
        x: Any,
        scores: Any,
        affine: tuple[float, float] | None,
        answer: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        try:
            feats_in = self._input_features(x, affine) if (x is not None and self._edges["inputs"]) else {}
            feats_out = output_features(scores) if (scores is not None and self._edges["outputs"]) else {}
            task = self._task
            if answer is not None and task is not None and self._edges["outputs"]:
                feats_out = task_features(answer(), task.classes, task.centroid)
        except (ValueError, TypeError, IndexError, KeyError):
            self._drift_skipped += 1
            return
        with self._lock:
            if bundle != self._bundle:
                return  # the bundle changed: these edges no longer apply
            for side, feats in (("inputs", feats_in), ("outputs", feats_out)):
                for name, value in feats.items():
                    edges = self._edges[side].get(name)
                    if edges is not None:
                        self._drift[side][name][bin_index(edges, value)] += 1

    def _input_features(self, x: Any, affine: tuple[float, float] | None) -> dict[str, float]:
        """Drift features of the model's float input; ``x`` is raw pixels when ``affine`` is given."""
        if affine is None:
            return input_features(x, self._preprocess)
        fast = raw_image_features(x, affine, self._preprocess)
        if fast is not None:
            return fast
        return input_features(x.astype("float32") * affine[0] + affine[1], self._preprocess)

    def drain(self, timeout: float = 2.0) -> None:
        """Wait until queued drift samples are binned (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._drift_q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def record_shadow(self, agree: bool | float | None, delta_s: float, candidate: str | None = None) -> None:
        """One shadow comparison of ``candidate`` (its digest): ``agree`` top-1 (bool) or a task's
        agreement 0..1 (:func:`protocol.taskstats.agreement`); None: the shadow run failed. A
        window holds one candidate's figures: another candidate's first comparison closes the
        window (kept until the next :meth:`rotate`, as a model switch does), so the hub never
        sums two candidates' agreement."""
        with self._lock:
            held = self._shadow["bundle"]
            if candidate is not None and held is not None and candidate != held and self._has_data():
                self._closed.append({**self._fields(), "end": int(time.time())})
                self._reset()
            if candidate is not None:
                self._shadow["bundle"] = candidate
            if agree is None:
                self._shadow["errors"] += 1
                return
            self._shadow["n"] += 1
            self._shadow["agree"] += float(agree)
            self._shadow["delta_sum_s"] += delta_s

    def count(self, key: str) -> None:
        """One more of an event that is not an inference (:data:`protocol.messages.ESCALATION_COUNT_KEYS`);
        in the window's counts only once it happened, and on /metrics."""
        if self.metrics is not None:
            self.metrics.event(key)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def _has_data(self) -> bool:
        return any(self._counts.values()) or bool(self._shadow["n"] or self._shadow["errors"])

    def _fields(self) -> dict[str, Any]:
        sh = self._shadow
        shadow = None
        if sh["n"] or sh["errors"]:
            shadow = Shadow(
                sh["n"],
                sh["errors"],
                sh["agree"] / sh["n"] if sh["n"] else None,
                1000 * sh["delta_sum_s"] / sh["n"] if sh["n"] else None,
                sh["bundle"],
            )
        counts = dict(self._counts)
        if self._drift_skipped:
            counts["drift_skipped"], self._drift_skipped = self._drift_skipped, 0
        return {
            "bundle": self._bundle,
            "counts": counts,
            "latency": self._sketch.to_dict(),
            "drift": {s: {n: list(c) for n, c in f.items()} for s, f in self._drift.items() if f},
            "shadow": shadow,
        }

    def rotate(self) -> list[dict[str, Any]]:
        """Return the finished windows' fields, oldest first, and start a new window.

        Usually one window; more when the model switched during the interval (each closed
        window carries its ``end`` time, the last one ends now)."""
        with self._lock:
            out = self._closed + [self._fields()]
            self._closed = []
            self._reset()
            return out


def health(state_dir: Path) -> Health:
    """CPU temperature where readable, load, memory and disk. Never raises."""
    out: dict[str, Any] = {}
    try:
        out["load1"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*/temp"))[:1]:
        try:
            out["cpu_temp_c"] = int(zone.read_text().strip()) / 1000
        except (OSError, ValueError):
            pass
    mem = meminfo()
    if mem:
        out["mem_available_mb"] = mem.get("MemAvailable", 0) // 1024
        out["mem_total_mb"] = mem.get("MemTotal", 0) // 1024
    try:
        out["rss_mb"] = round(_rss_bytes() / 2**20, 1)
    except OSError:
        pass
    try:
        du = shutil.disk_usage(state_dir)
        out["disk_free_mb"] = du.free // 2**20
    except OSError:
        pass
    return Health(**out)


def meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0].rstrip(":")] = int(parts[1])  # kB
    return out


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
