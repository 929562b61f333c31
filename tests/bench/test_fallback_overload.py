"""The fallback bench's overload case on wrk: every status counted, only 200s timed, and a
connection that was shed backs off before its next request."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.fallback import drive_overload_wrk

WRK = shutil.which("wrk")


class _Alternating(BaseHTTPRequestHandler):
    """Answers 200 and 503 in turn on each keep-alive connection."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers["Content-Length"]))
        n = getattr(self, "count", 0)
        self.count = n + 1
        status, body = (200, b'{"ok": true}') if n % 2 == 0 else (503, b'{"code": "overloaded"}')
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the http.server API
        pass


@pytest.fixture
def alternating() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Alternating)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(WRK is None, reason="wrk is not installed (apt-get install wrk)")
def test_overload_counts_every_status_and_times_only_the_200s(alternating: str, tmp_path: Path) -> None:
    assert WRK is not None
    o = drive_overload_wrk(WRK, tmp_path, alternating, b"x" * 100, "application/octet-stream", 4, 0.0, 1.0)
    assert set(o.statuses) == {200, 503} and o.no_answer == 0
    # each connection alternates, so the counts differ by at most one per connection
    assert abs(o.statuses[200] - o.statuses[503]) <= 4
    # a shed connection waits 50 ms before its next request: at most ~20 503s per second each
    assert o.statuses[503] <= 4 * 25
    assert o.accepted_p99_ms > 0
