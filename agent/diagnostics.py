"""Remote diagnostics, the I/O half: the in-memory log ring and the four commands' work.

:class:`LogRing` is a logging handler the entry point (``edgefleet-agent run``) attaches to the
root logger: the last :data:`agent.commands.LOG_MAX_LINES` records, at most
:data:`agent.commands.LOG_MAX_BYTES`, each line redacted *when it is recorded* (a secret never
sits in the ring) and cut at :data:`agent.commands.LOG_LINE_MAX_CHARS`.

:func:`execute` runs a verified command (:class:`agent.commands.Run`) on the daemon's thread
and returns its :class:`protocol.commands.Result`:

* ``logs``: the newest ``args.lines`` lines (default 200) that fit the result;
* ``selftest``: the active slot's self-test vectors, run again on a fresh instance of its model
  (the serving one keeps serving);
* ``restart``: answers ``ok`` at once; the daemon then exits cleanly (exit 0) and its
  supervisor starts it again (the shipped systemd unit has ``Restart=always``);
* ``diagnostics``: versions, inventory, runtime and delegate, slots, trust, the config with
  secrets redacted, disk, backlog, the checks below (each ``{"name", "ok", "detail"}``) and the
  doctor's findings (:mod:`agent.doctor`, each ``{"name", "status", "detail", "fix"}``; the Edge
  TPU as the agent probed it at start: loading the delegate again beside the serving model could
  disturb it).
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.commands import MAX_RESULT_BYTES, Command, Result
from protocol.errors import ProtocolError, Reason

from . import AGENT_VERSION, doctor, inventory
from .commands import LOG_LINE_MAX_CHARS, LOG_MAX_BYTES, LOG_MAX_LINES, fit, redact, redact_config, tail
from .install import require_fresh_root
from .updater import selftest_slot

if TYPE_CHECKING:
    from .daemon import Agent

STARTED = time.time()
_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


class LogRing(logging.Handler):
    """The agent's recent log lines, redacted and bounded (lines and bytes)."""

    def __init__(self, secrets: tuple[str | None, ...] = (), level: int = logging.INFO) -> None:
        super().__init__(level)
        self.secrets = secrets
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_MAX_LINES)
        self._bytes = 0
        self._guard = threading.Lock()
        self.setFormatter(_FORMAT)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = redact(self.format(record), self.secrets)[:LOG_LINE_MAX_CHARS]
        except Exception:  # a log call must never fail because of the ring
            return
        size = len(line.encode("utf-8")) + 1
        with self._guard:
            if len(self._lines) == self._lines.maxlen:
                self._bytes -= len(self._lines[0].encode("utf-8")) + 1
            self._lines.append(line)
            self._bytes += size
            while self._bytes > LOG_MAX_BYTES and self._lines:
                self._bytes -= len(self._lines.popleft().encode("utf-8")) + 1

    def lines(self) -> list[str]:
        with self._guard:
            return list(self._lines)


def _result(agent: Agent, cmd: Command, status: str, reason: Reason, detail: str, body: dict[str, Any]) -> Result:
    return Result(cmd.id, agent.cfg.device_id, cmd.name, int(time.time()), status, reason.value, detail[:2000], body)


def execute(agent: Agent, cmd: Command) -> Result:
    """Run ``cmd``; the answer always fits one result message (:func:`agent.commands.fit`)."""
    return fit(_execute(agent, cmd))


def _execute(agent: Agent, cmd: Command) -> Result:
    try:
        if cmd.name == "logs":
            return _logs(agent, cmd)
        if cmd.name == "selftest":
            return _selftest(agent, cmd)
        if cmd.name == "restart":
            return _result(agent, cmd, "ok", Reason.OK, "restarting: clean exit, the supervisor starts the agent", {})
        return _diagnostics(agent, cmd)
    except Exception as exc:  # a command must always get an answer
        logging.getLogger(__name__).exception("command %s %s failed", cmd.name, cmd.id)
        return _result(agent, cmd, "failed", Reason.INTERNAL, f"{cmd.name} failed: {exc}", {})


def _logs(agent: Agent, cmd: Command) -> Result:
    ring = agent.log_ring
    have = ring.lines() if ring is not None else []
    room = MAX_RESULT_BYTES - 4096  # the envelope of the result: ids, names, JSON escapes' margin
    lines, cut = tail(have, cmd.log_lines, min(room // 2, LOG_MAX_BYTES))  # JSON may double a line
    body = {"lines": lines, "truncated": cut, "kept": len(have), "max_lines": LOG_MAX_LINES, "max_bytes": LOG_MAX_BYTES}
    detail = f"{len(lines)} of the last {len(have)} log lines (secrets redacted)"
    if ring is None:
        detail = "no log ring attached (the agent runs inside another program)"
    return _result(agent, cmd, "ok", Reason.OK, detail, body)


def _selftest(agent: Agent, cmd: Command) -> Result:
    st = agent.slots.load()
    if st.active is None:
        return _result(agent, cmd, "failed", Reason.MISSING_ARTIFACT, "no active bundle to self-test", {})
    manifest = agent.slots.check(st.active.digest, agent.root)
    t0 = time.perf_counter()
    model, res = selftest_slot(agent.slots, st.active, manifest, agent.cfg.threads)
    took = round((time.perf_counter() - t0) * 1000, 1)
    served_by = model.served_by if model is not None else None
    if model is not None:
        model.close()
    body = {"bundle": st.active.to_dict(), "served_by": served_by, "took_ms": took, **res.metrics()}
    detail = f"{st.active.name} {st.active.version}: {res.detail}"
    return _result(agent, cmd, "ok" if res.ok else "failed", res.reason, detail, body)


def _check(name: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail}


def checks(agent: Agent, now: int) -> list[dict[str, Any]]:
    """What the device can tell about its own health, one line each."""
    cfg = agent.cfg
    out = []
    try:
        require_fresh_root(agent.root, now)
        out.append(_check("trust_root", True, f"v{agent.root.version}, expires {agent.root.expires}"))
    except ProtocolError as exc:
        out.append(_check("trust_root", False, str(exc)))
    st = agent.slots.load()
    for label, rec in (("active_slot", st.active), ("previous_slot", st.previous)):
        if rec is None:
            out.append(_check(label, label == "previous_slot", "none"))
            continue
        try:
            agent.slots.check(rec.digest, agent.root)
            out.append(_check(label, True, f"{rec.name} {rec.version} verifies ({rec.digest[:12]})"))
        except (ProtocolError, OSError) as exc:
            out.append(_check(label, False, f"{rec.name} {rec.version}: {exc}"))
    model = agent.serving.model
    out.append(
        _check("serving", model is not None, f"{model.info.name} on {model.served_by}" if model else "no model loaded")
    )
    free = inventory.free_disk(cfg)
    out.append(_check("disk", free >= cfg.disk_reserve_bytes, f"{free} bytes free, reserve {cfg.disk_reserve_bytes}"))
    stats = agent.backlog.stats(time.time())
    out.append(_check("backlog", stats["size"] < cfg.backlog_max_rows, f"{stats['size']} of {cfg.backlog_max_rows}"))
    out.append(_check("broker", agent.transport.alive(), f"{cfg.broker} over MQTT {agent.transport.protocol}"))
    if cfg.cloud_url is not None:
        out.append(_check("cloud_fallback", True, f"configured ({redact(cfg.cloud_url)})"))
    return out


def doctor_findings(agent: Agent) -> list[dict[str, str]]:
    """``edgefleet-agent doctor``'s findings, redacted; without the config's path (an agent run
    inside another program) its permission check is left out rather than judged on nothing."""
    tpu = agent.probed.edgetpu
    facts = doctor.gather(agent.cfg, agent.config_path or Path("."), probe=lambda: (tpu.present, tpu.detail))
    secrets = (agent.cfg.password, agent.cfg.cloud_api_key)
    return [
        {k: redact(v, secrets) for k, v in f.items()}
        for f in doctor.to_json(doctor.judge(facts))
        if agent.config_path is not None or f["name"] != "config_permissions"
    ]


def config_doc(agent: Agent) -> dict[str, Any]:
    cfg = agent.cfg
    raw = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    raw["broker"] = str(cfg.broker)
    return redact_config(raw, (cfg.password, cfg.cloud_api_key))


def _diagnostics(agent: Agent, cmd: Command) -> Result:
    now = agent._now()
    st = agent.slots.load()
    model = agent.serving.model
    p = agent.probed
    body = {
        "agent_version": AGENT_VERSION,
        "pid": os.getpid(),
        "started": int(STARTED),
        "uptime_s": round(time.time() - STARTED, 1),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "inventory": agent.status_doc()["inventory"],
        "runtime": {
            "litert": p.litert,
            "onnxruntime": p.onnx,
            "edgetpu": {"present": p.edgetpu.present, "runtime": p.edgetpu.runtime, "detail": p.edgetpu.detail},
            "served_by": model.served_by if model is not None else None,
        },
        "slots": {
            "active": st.active.to_dict() if st.active else None,
            "previous": st.previous.to_dict() if st.previous else None,
            "trial": st.trial,
            "probation": st.probation,
        },
        "trust": {
            "root_version": agent.root.version,
            "root_expires": agent.root.expires,
            "desired_seq": agent.trusted_seq,
        },
        "config": config_doc(agent),
        "disk": {"state_dir": str(agent.cfg.state_dir), "free_bytes": inventory.free_disk(agent.cfg)},
        "backlog": agent.backlog.stats(time.time()),
        "checks": checks(agent, now),
        "doctor": doctor_findings(agent),
    }
    failing = [c["name"] for c in body["checks"] if not c["ok"]]
    failing += [f"doctor {f['name']}" for f in body["doctor"] if f["status"] == "fail"]
    warned = sum(f["status"] == "warn" for f in body["doctor"])
    detail = f"{len(body['checks'])} checks and {len(body['doctor'])} doctor findings; " + (
        f"failing: {', '.join(failing)}" if failing else "none failing"
    )
    detail += f"; {warned} doctor warnings" if warned else ""
    return _result(agent, cmd, "ok", Reason.OK, detail, body)
