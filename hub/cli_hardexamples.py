"""``edgefleet-hub hard-examples ls|export|delete``: the hard examples devices uploaded (:mod:`hub.hardexamples`).

``ls [--model M] [--version V] [--device D]``: one page, newest first (``--json``: the API's page).

``export --model M --version V DIR``: every hard example of that model version as a dataset
folder to relabel::

    DIR/images/{device}-{sample id}.{ext}   the inputs as the devices sent them
    DIR/labels.csv                          file,label,predicted,confidence,... (label empty: yours to fill)
    DIR/metadata.jsonl                      one line per input: everything the hub knows of it

``delete --model M [--version V]``: remove a model's (or one version's) hard examples, rows and
files (operator role; in the audit log). Prints how many.

Each exported file is checked against the sha256 the device sent. ``DIR`` must be empty or absent (an
export never mixes with another). Needs the operator role (the inputs may show people or places).

Exit codes as the other client commands: 0 done · 1 hub unreachable or failing, a file that does
not match its sha256 · 2 bad arguments, a non-empty DIR, no such model version, a 4xx from the hub.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .client import EXIT_FAIL, EXIT_OK, EXIT_USAGE, ClientError, call, client_args, page_args, show_page
from .hardexamples import export_name, export_rows

PAGE = 1000


def add_commands(sub: Any) -> None:
    """Register ``hard-examples`` (``sub``: the top-level subparsers)."""
    he = sub.add_parser("hard-examples", help="low-confidence inputs devices uploaded").add_subparsers(
        dest="sub", required=True
    )
    p = he.add_parser("ls", help="list hard examples, newest first")
    p.add_argument("--model")
    p.add_argument("--version")
    p.add_argument("--device")
    page_args(p)
    client_args(p)
    p.set_defaults(func=cmd_ls)
    p = he.add_parser("export", help="a model version's hard examples as a dataset folder to relabel")
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("dir", help="output folder (absent or empty)")
    client_args(p)
    p.set_defaults(func=cmd_export)
    p = he.add_parser("delete", help="delete a model's (or one version's) hard examples, rows and files")
    p.add_argument("--model", required=True)
    p.add_argument("--version")
    client_args(p)
    p.set_defaults(func=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    q = urllib.parse.urlencode({k: v for k, v in (("model", args.model), ("version", args.version)) if v})
    print(json.dumps(call(args, "DELETE", f"/api/v1/hard-examples?{q}")))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    return show_page(
        args, "hard-examples", "/api/v1/hard-examples", model=args.model, version=args.version, device=args.device
    )


def _get_bytes(args: argparse.Namespace, path: str) -> bytes:
    req = urllib.request.Request(args.hub.rstrip("/") + path, headers={"Authorization": f"Bearer {args.token}"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()[:2000].decode("utf-8", "replace")
        code = EXIT_USAGE if 400 <= exc.code < 500 else EXIT_FAIL
        raise ClientError(f"hub GET {path}: HTTP {exc.code}: {text}", code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"hub unreachable: {getattr(exc, 'reason', exc)}", EXIT_FAIL) from None


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ClientError(f"{out} is not an empty folder: an export never mixes with other files", EXIT_USAGE)
    items: list[dict[str, Any]] = []
    while True:
        q = urllib.parse.urlencode({"model": args.model, "version": args.version, "limit": PAGE, "offset": len(items)})
        page = call(args, "GET", f"/api/v1/hard-examples?{q}")
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            break
    if not items:
        raise ClientError(f"no hard examples of {args.model} {args.version} on this hub", EXIT_USAGE)
    items.sort(key=lambda it: it["id"])  # oldest first: the order they arrived
    (out / "images").mkdir(parents=True, exist_ok=True)
    for it in items:
        data = _get_bytes(args, f"/api/v1/hard-examples/{it['id']}/content")
        if hashlib.sha256(data).hexdigest() != it["sha256"]:
            raise ClientError(f"hard example {it['id']}: the bytes do not match sha256 {it['sha256']}", EXIT_FAIL)
        (out / export_name(it)).write_bytes(data)
    labels, meta = export_rows(items)
    (out / "labels.csv").write_bytes(labels)
    (out / "metadata.jsonl").write_bytes(meta)
    print(json.dumps({"dir": str(out), "model": args.model, "version": args.version, "files": len(items)}))
    return EXIT_OK
