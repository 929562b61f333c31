"""Jinja templates of the dashboard and the filters its pages use (times, numbers, sizes,
labels, device facts, rollout policies)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from . import markdown

HERE = Path(__file__).resolve().parent
POLL_MS = 3000


def _ago(ts: Any, now: int | None = None) -> str:
    if not ts:
        return "never"
    d = int((now or time.time()) - int(ts))
    if d < 0:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return f"{d // size}{unit} ago"
    return f"{d}s ago"


def _utc(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(ts))) if ts else "-"


def _num(v: Any, nd: int = 2) -> str:
    if v is None or isinstance(v, bool):
        return "–"
    try:
        return f"{float(v):.{nd}f}"
    except (TypeError, ValueError):
        return str(v)


def _pct(v: Any, nd: int = 1) -> str:
    return "–" if v is None or isinstance(v, bool) else f"{float(v) * 100:.{nd}f} %"


def _size(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "–"
    n = float(v)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(v)


def _tojson_attr(v: Any) -> Markup:
    return Markup(
        json.dumps(v, separators=(",", ":"))
        .replace("&", "&amp;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


# inventory / health keys as an operator reads them; units come from the key's suffix
LABELS = {
    "edgetpu": "Edge TPU",
    "free_disk_mb": "free disk",
    "disk_free_mb": "free disk",
    "mem_available_mb": "memory available",
    "mem_total_mb": "memory",
    "ram_mb": "memory",
    "cpu_temp_c": "CPU temperature",
    "load1": "load (1 min)",
    "arch": "architecture",
    "os": "OS",
    "tflite_runtime": "TFLite runtime",
    "pycoral": "PyCoral",
    "python": "Python",
}
UNITS = (("_mb", "MB"), ("_c", "°C"), ("_ms", "ms"), ("_s", "s"))


def _label(key: Any) -> str:
    k = str(key)
    if k in LABELS:
        return LABELS[k]
    for suffix, _unit in UNITS:
        if k.endswith(suffix):
            k = k[: -len(suffix)]
            break
    return k.replace("_", " ")


def _fact(v: Any, key: Any = "") -> str:
    """An inventory or health value in words: yes/no, units from the key, the Edge TPU's
    ``{"present": bool, ...}`` as present/absent plus its details."""
    k = str(key)
    if k == "edgetpu" and isinstance(v, dict):
        rest = {a: b for a, b in v.items() if a != "present"}
        head = "present" if v.get("present") else "absent"
        return head + (" (" + ", ".join(f"{_label(a)} {_fact(b, a)}" for a, b in rest.items()) + ")" if rest else "")
    if isinstance(v, bool):
        return ("present" if v else "absent") if k == "edgetpu" else ("yes" if v else "no")
    if v is None or v == "":
        return "–"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(", ", ": "))
    for suffix, unit in UNITS:
        if k.endswith(suffix) and isinstance(v, (int, float)):
            return f"{v:g} {unit}" if unit != "°C" else f"{v:.1f} °C"
    return str(v)


def _policy_summary(p: Any) -> str:
    """A rollout policy in one line: cohorts, soak, breach action, approval."""
    if not isinstance(p, dict):
        return str(p)
    parts = [f"cohorts {', '.join(str(c) for c in p.get('cohorts') or [])}"]
    if p.get("soak_s") is not None:
        parts.append(f"soak {p['soak_s']} s")
    if p.get("on_breach"):
        parts.append(f"on breach {p['on_breach']}")
    if p.get("approve_each_cohort"):
        parts.append("approval between cohorts")
    return " · ".join(parts)


def make_templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters.update(
        ago=_ago,
        utc=_utc,
        num=_num,
        pct=_pct,
        size=_size,
        jsonattr=_tojson_attr,
        label=_label,
        fact=_fact,
        policy_summary=_policy_summary,
        markdown=markdown.render,
    )
    t.env.globals.update(poll_ms=POLL_MS, urlencode=urlencode)
    return t
