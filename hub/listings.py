"""What the CLI's ``ls`` commands print: one API page (``Page[...]`` as the hub answers it) as a
plain-text table for a terminal. Pure: the commands in :mod:`hub.__main__` fetch the page and
print ``--json`` themselves.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

Row = Sequence[str]
RIGHT = {"inferences", "p95 ms", "size", "revisions", "rev", "installed", "id", "confidence"}


def query(**params: Any) -> str:
    """``?k=v&...`` for the parameters given (None left out, booleans as true/false)."""
    given = {k: ("true" if v else "false") if isinstance(v, bool) else v for k, v in params.items() if v is not None}
    return "?" + urlencode(given) if given else ""


def when(ts: int | None) -> str:
    return "-" if not ts else time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def table(columns: Sequence[str], rows: Sequence[Row]) -> str:
    """Columns as wide as their widest cell, two spaces apart; numbers right-aligned."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Row) -> str:
        return "  ".join(
            cell.rjust(w) if col in RIGHT else cell.ljust(w)
            for col, cell, w in zip(columns, cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(columns), *(line(r) for r in rows)])


def footer(page: dict[str, Any]) -> str:
    """``(n of total)``, and how to get the next page when there is one."""
    n, total, offset = len(page["items"]), page["total"], page["offset"]
    more = f"; --offset {offset + n} for the next page" if n and offset + n < total else ""
    return f"({n} of {total}{more})"


def target(t: dict[str, Any]) -> str:
    if t.get("all"):
        return "all"
    if t.get("devices"):
        names = ",".join(t["devices"])
        return f"devices:{names if len(names) <= 30 else names[:27] + '...'}"
    for key in ("group", "tag"):
        if t.get(key):
            return f"{key}:{t[key]}"
    return "-"


def device_row(d: dict[str, Any]) -> Row:
    b = d.get("active_bundle")
    p95 = d["telemetry"]["p95_ms"]
    return (
        d["device_id"],
        "yes" if d["online"] else "no",
        d["state"],
        d.get("group") or "-",
        f"{b['name']}@{b['version']}" if b else "-",
        str(d["telemetry"]["inferences"]),
        "-" if p95 is None else f"{p95:.2f}",
        when(d.get("last_seen")),
    )


def bundle_row(b: dict[str, Any]) -> Row:
    return (b["name"], b["version"], str(b["revision"]), str(b["size"]), when(b["uploaded"]), b["digest"])


def model_row(m: dict[str, Any]) -> Row:
    latest = m.get("latest") or {}
    return (
        m["name"],
        str(m["revisions"]),
        latest.get("version", "-"),
        when(latest.get("uploaded")),
        latest.get("digest", "-"),
    )


def rollout_row(r: dict[str, Any]) -> Row:
    return (
        r["id"],
        r["phase"],
        f"{r['counts'].get('installed', 0)}/{r['total']}",
        r["bundle"][:12],
        target(r["target"]),
        when(r["created"]),
        r.get("reason") or "",
    )


def group_row(g: dict[str, Any]) -> Row:
    w = g.get("window")
    if not w:
        return (g["group"] or "(none)", str(g["devices"]), "-", "", "always open")
    state = f"open until {when(w['closes_at'])}" if w["open"] else f"closed, opens {when(w['opens_at'])}"
    return (g["group"] or "(none)", str(g["devices"]), w["spec"], w["tz"], w.get("error") or state)


def hard_example_row(h: dict[str, Any]) -> Row:
    conf = h.get("confidence")
    return (
        str(h["id"]),
        printable(h["model"]),
        printable(h["version"]),
        printable(h["device"]),
        "-" if conf is None else f"{conf:.3f}",
        h["content_type"],
        str(h["size"]),
        when(h["ts"]),
    )


LISTINGS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], Row]]] = {
    "devices": (("device", "online", "state", "group", "bundle", "inferences", "p95 ms", "last seen"), device_row),
    "bundles": (("name", "version", "rev", "size", "uploaded", "digest"), bundle_row),
    "models": (("name", "revisions", "latest", "uploaded", "digest"), model_row),
    "rollouts": (("rollout", "phase", "installed", "bundle", "target", "created", "reason"), rollout_row),
    "groups": (("group", "devices", "window", "time zone", "now"), group_row),
    "hard-examples": (
        ("id", "model", "version", "device", "confidence", "type", "size", "kept"),
        hard_example_row,
    ),
}


def render(kind: str, page: dict[str, Any]) -> str:
    """A page of ``kind`` (a key of :data:`LISTINGS`) as a table and its footer."""
    columns, row = LISTINGS[kind]
    return table(columns, [row(item) for item in page["items"]]) + "\n" + footer(page)


def printable(text: str) -> str:
    """A device's text for a terminal: control characters (escape sequences that could rewrite
    the operator's screen) shown as ``\\xNN``, never sent raw."""
    return "".join(ch if ch.isprintable() or ch == "\t" else f"\\x{ord(ch):02x}" for ch in str(text))


def command_text(c: dict[str, Any]) -> str:
    """A remote-diagnostics command as ``devices logs|selftest|restart|diagnostics`` print it:
    one status line, then the answer (log lines; failing checks first; the rest as the API has it)."""
    head = f"{c['name']} {c['id']} on {c['device_id']}: {c['status']}"
    if c["reason"] and c["reason"] != "ok":
        head += f" ({c['reason']})"
    lines = [head + (f": {c['detail']}" if c["detail"] else "")]
    body = c.get("body") or {}
    if c["name"] == "logs":
        lines += list(body.get("lines", []))
        if body.get("truncated"):
            lines.append(f"({body['truncated']} older lines left out to fit one result)")
    elif c["name"] == "diagnostics" and body:
        checks = sorted(body.get("checks", []), key=lambda k: bool(k["ok"]))
        lines.append(
            table(("check", "ok", "detail"), [(k["name"], "yes" if k["ok"] else "NO", k["detail"]) for k in checks])
        )
        lines.append(
            f"agent {body.get('agent_version')} pid {body.get('pid')} up {body.get('uptime_s')} s; --json for all"
        )
    elif body:
        lines += [f"  {k}: {v}" for k, v in body.items()]
    if c["status"] == "sent":
        lines.append("no answer yet: it shows on the device page (or GET .../commands/{id}) when it comes")
    return "\n".join(printable(line) for line in "\n".join(lines).split("\n"))
