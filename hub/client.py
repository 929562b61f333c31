"""The HTTP client the CLI's client commands (``models``, ``rollouts``, ``devices``, ``groups``)
use to talk to a running hub: one call per request, errors as :class:`ClientError` carrying the
CLI's exit code (2 for a 4xx answer, 1 when the hub is unreachable or fails)."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from . import listings
from .config import client_env

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class ClientError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
    url = args.hub.rstrip("/") + path
    headers = {"Authorization": f"Bearer {args.token}"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif raw is not None:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        text = exc.read()[:2000].decode("utf-8", "replace")
        try:
            text = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            pass
        raise ClientError(
            f"hub {method} {path}: HTTP {exc.code}: {text}", EXIT_USAGE if 400 <= exc.code < 500 else EXIT_FAIL
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ClientError(f"hub {url} unreachable: {getattr(exc, 'reason', exc)}", EXIT_FAIL) from None


def page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=int, default=50, help="page size, 1..1000 (default %(default)s)")
    p.add_argument("--offset", type=int, default=0, help="rows to skip (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the API's page as JSON")


def show_page(args: argparse.Namespace, kind: str, path: str, **filters: Any) -> int:
    page = call(args, "GET", path + listings.query(limit=args.limit, offset=args.offset, **filters))
    print(json.dumps(page) if args.json else listings.render(kind, page))
    return EXIT_OK


def client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hub",
        default=client_env("url") or "http://127.0.0.1:8000",
        help="hub base URL (env EDGEFLEET_HUB_URL; default %(default)s)",
    )
    p.add_argument("--token", default=client_env("token"), help="API bearer token (env EDGEFLEET_HUB_TOKEN)")
    p.add_argument("--timeout", type=float, default=120, help="HTTP timeout in seconds (default %(default)s)")
