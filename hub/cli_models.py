"""``edgefleet-hub models show ID``: one bundle's task, every input and output (name, dtype,
shape, quantization, role), its cloud twin's status with the reason, and the per-task
evaluation of its build report: what the dashboard's model page shows, as text (``--json``:
the same summary as one object). ``ID`` is a bundle digest or a model name (its newest bundle).

Exit codes as the other client commands: 0 shown · 1 hub unreachable or failing · 2 no such
bundle or model (the hub's 404), bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse
from typing import Any

from .client import EXIT_OK, EXIT_USAGE, ClientError, call, client_args
from .web.catalog import signature_summary, task_evaluation, twin_summary

DIGEST = re.compile(r"^[0-9a-f]{64}$")


def add_show(models: Any) -> None:
    """Register ``show`` under the ``models`` subcommands (``models``: argparse's subparsers)."""
    p = models.add_parser("show", help="one bundle: task, inputs/outputs, twin status, per-task evaluation")
    p.add_argument("id", help="bundle digest, or a model name (its newest bundle)")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    client_args(p)
    p.set_defaults(func=cmd_models_show)


def summary(bundle: dict[str, Any]) -> dict[str, Any]:
    """``GET /api/v1/bundles/{digest}`` -> what ``show`` prints."""
    model = _dict(bundle.get("model"))
    report = _dict(bundle.get("report"))
    has_onnx = any(isinstance(a, dict) and a.get("role") == "onnx" for a in bundle.get("artifacts") or [])
    twin = twin_summary(model, report, has_onnx)
    return {
        "digest": bundle.get("digest"),
        "name": bundle.get("name"),
        "version": bundle.get("version"),
        "revision": bundle.get("revision"),
        "signature": signature_summary(model),
        "twin": {"status": twin.get("status"), "reason": twin.get("reason")},
        "evaluation": task_evaluation(report),
    }


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def render(s: dict[str, Any]) -> str:
    sig, twin, ev = s["signature"], s["twin"], s["evaluation"]
    lines = [f"{s['name']} {s['version']} r{s['revision']}  {s['digest']}"]
    lines.append(f"task: {sig['task'] or 'unknown'}" + (" (stateful)" if sig.get("stateful") else ""))
    if sig["note"]:
        lines.append(f"  {sig['note']}")
    for direction in ("input", "output"):
        rows = [t for t in sig["tensors"] if t["direction"] == direction]
        if rows:
            lines.append(f"{direction}s:")
        for t in rows:
            lines.append(
                f"  {t['role']:<10} {t['dtype']}{t['shape']}  {t['name']!r}  quantization: {t['quantization']}"
            )
    lines.append(f"twin: {twin['status']}: {twin['reason']}")
    if ev["metric"]:
        images = f" on {ev['images']} image{'s' if ev['images'] != 1 else ''}" if ev["images"] else ""
        verdict = "gate passed" if ev["passed"] is True else "gate failed" if ev["passed"] is False else "not gated"
        lines.append(f"evaluation: {ev['task']} {ev['metric']} {ev['value']:.2%}{images}; {verdict}")
        if ev["note"]:
            lines.append(f"  {ev['note']}")
    else:
        lines.append(f"evaluation: none: {ev['note']}")
    return "\n".join(lines)


def cmd_models_show(args: argparse.Namespace) -> int:
    ident = args.id.strip()
    if not DIGEST.match(ident):
        page = call(args, "GET", "/api/v1/bundles?" + urllib.parse.urlencode({"name": ident, "limit": 1}))
        items = page.get("items") if isinstance(page, dict) else None
        if not items:
            raise ClientError(f"no bundle with digest or model name {ident!r}", EXIT_USAGE)
        ident = items[0]["digest"]
    s = summary(call(args, "GET", f"/api/v1/bundles/{ident}"))
    print(json.dumps(s, indent=2) if args.json else render(s))
    return EXIT_OK
