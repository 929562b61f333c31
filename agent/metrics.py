"""Every Prometheus metric the agent exports, declared here and nowhere else (issue 17).

Opt-in: ``http_metrics = true`` in ``agent.toml`` serves them on the local API's ``GET /metrics``
(off by default: the local API is for apps; a scraper is one more client). The agent runs on a
Raspberry Pi without ``prometheus_client``, so the text format (0.0.4) is written here; it is
small and ``promtool check metrics`` is clean on it (tests/agent/test_metrics.py).

What is counted is what the serving path records (:class:`agent.telemetry.Recorder`), request by
request, since the agent started:

* ``edgefleet_agent_latency_seconds`` (histogram, the fleet's bucket bounds
  :data:`protocol.sketch.HISTOGRAM_BOUNDS_S`), ``edgefleet_agent_inferences_total``,
  ``edgefleet_agent_errors_total``, by ``model``, ``version`` (the bundle that was active; ``none``
  without one) and ``path`` (``tpu``, ``cpu``, ``onnx``, ``cloud``);
* ``edgefleet_agent_fallbacks_total`` by ``model``, ``version``: requests answered by the cloud;
* ``edgefleet_agent_escalations_total`` by ``outcome`` (``escalated``, ``escalation_failed``,
  ``escalation_breaker_open``, ``escalation_budget``): escalation to the cloud by confidence;
* ``edgefleet_agent_installs_total`` by ``result`` (``installed``, ``failed``, ``rolled_back``)
  and ``reason`` (the report's reason code, a closed set).

Bounded: series are kept for the active bundle and the one before it (a switch drops older
ones), paths and reasons are closed sets. No secrets, no device or key names in labels.
"""

from __future__ import annotations

import bisect
import math
import threading

from protocol.messages import ESCALATION_COUNT_KEYS
from protocol.sketch import HISTOGRAM_BOUNDS_S

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NONE = ("none", "none")
PATHS = ("tpu", "cpu", "onnx", "cloud")
KEEP_BUNDLES = 2  # the active bundle and the one before it


def install_result(stage: str, status: str) -> str | None:
    """What a report says of an install (the hub counts the same): None for progress."""
    if status == "failed":
        return "failed"
    if status == "ok" and stage == "commit":
        return "installed"
    if status == "ok" and stage == "rollback":
        return "rolled_back"
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items()) + "}"


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x))


class _Path:
    __slots__ = ("buckets", "sum", "ok", "errors")

    def __init__(self) -> None:
        self.buckets = [0] * (len(HISTOGRAM_BOUNDS_S) + 1)
        self.sum = 0.0
        self.ok = 0
        self.errors = 0


class AgentMetrics:
    """Thread-safe: HTTP threads observe, the daemon counts installs, a scrape renders."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], dict[str, _Path]] = {}
        self._order: list[tuple[str, str]] = []  # bundles in the order they became active
        self._installs: dict[tuple[str, str], int] = {}
        self._events: dict[str, int] = dict.fromkeys(ESCALATION_COUNT_KEYS, 0)

    def set_active(self, bundle: tuple[str, str] | None) -> None:
        """A new active bundle (name, version); series older than the previous one are dropped."""
        key = bundle or NONE
        with self._lock:
            if key in self._order:
                self._order.remove(key)
            self._order.append(key)
            for old in self._order[:-KEEP_BUNDLES]:
                self._series.pop(old, None)
            del self._order[:-KEEP_BUNDLES]

    def observe(self, bundle: tuple[str, str] | None, path: str, seconds: float, ok: bool) -> None:
        key = bundle or NONE
        p = path if path in PATHS else "cpu"
        with self._lock:
            s = self._series.setdefault(key, {}).get(p)
            if s is None:
                s = self._series[key][p] = _Path()
            if not ok:
                s.errors += 1
                return
            s.ok += 1
            s.sum += seconds
            s.buckets[bisect.bisect_left(HISTOGRAM_BOUNDS_S, seconds)] += 1

    def event(self, key: str) -> None:
        """One escalation outcome (:data:`protocol.messages.ESCALATION_COUNT_KEYS`)."""
        with self._lock:
            self._events[key] = self._events.get(key, 0) + 1

    def install(self, stage: str, status: str, reason: str) -> None:
        result = install_result(stage, status)
        if result is None:
            return
        with self._lock:
            self._installs[(result, reason)] = self._installs.get((result, reason), 0) + 1

    def render(self) -> bytes:
        """The exposition, text format 0.0.4."""
        with self._lock:
            series = {
                k: {p: (list(s.buckets), s.sum, s.ok, s.errors) for p, s in paths.items()}
                for k, paths in self._series.items()
            }
            installs = dict(self._installs)
            events = dict(self._events)
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        head("edgefleet_agent_latency_seconds", "histogram", "Latency of answered requests, by bundle and path")
        for (model, version), paths in sorted(series.items()):
            for path, (buckets, total, ok, _) in sorted(paths.items()):
                running = 0
                for bound, c in zip((*HISTOGRAM_BOUNDS_S, math.inf), buckets, strict=True):
                    running += c
                    lbl = _labels(model=model, version=version, path=path, le=_num(bound))
                    out.append(f"edgefleet_agent_latency_seconds_bucket{lbl} {running}")
                lbl = _labels(model=model, version=version, path=path)
                out.append(f"edgefleet_agent_latency_seconds_sum{lbl} {_num(total)}")
                out.append(f"edgefleet_agent_latency_seconds_count{lbl} {ok}")
        head("edgefleet_agent_inferences_total", "counter", "Requests answered, by bundle and path")
        for (model, version), paths in sorted(series.items()):
            for path, (_, _, ok, _) in sorted(paths.items()):
                out.append(f"edgefleet_agent_inferences_total{_labels(model=model, version=version, path=path)} {ok}")
        head("edgefleet_agent_errors_total", "counter", "Requests that failed, by bundle and path")
        for (model, version), paths in sorted(series.items()):
            for path, (_, _, _, errs) in sorted(paths.items()):
                out.append(f"edgefleet_agent_errors_total{_labels(model=model, version=version, path=path)} {errs}")
        head("edgefleet_agent_fallbacks_total", "counter", "Requests answered by the cloud fallback, by bundle")
        for (model, version), paths in sorted(series.items()):
            n = paths["cloud"][2] if "cloud" in paths else 0
            out.append(f"edgefleet_agent_fallbacks_total{_labels(model=model, version=version)} {n}")
        head("edgefleet_agent_installs_total", "counter", "Install results reported to the hub, by reason code")
        for (result, reason), n in sorted(installs.items()):
            out.append(f"edgefleet_agent_installs_total{_labels(result=result, reason=reason)} {n}")
        head("edgefleet_agent_escalations_total", "counter", "Escalations to the cloud by confidence, by outcome")
        for key, n in sorted(events.items()):
            out.append(f"edgefleet_agent_escalations_total{_labels(outcome=key)} {n}")
        return ("\n".join(out) + "\n").encode()
