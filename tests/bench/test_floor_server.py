"""The bench's measuring stick: the floor server answers the raw-socket client's requests over
a real keep-alive connection, and the client reads whole answers by their Content-Length."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.agent import RawClient
from bench.floor_server import content_length

REPO = Path(__file__).resolve().parents[2]


def test_content_length_is_read_from_any_header_case_and_defaults_to_zero():
    assert content_length(b"POST / HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 12") == 12
    assert content_length(b"HTTP/1.1 200 OK\r\nContent-Type: application/json") == 0


def test_raw_client_times_round_trips_to_the_floor_server(coral_models, tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.floor_server",
            str(coral_models / "mobilenet_v1_0.25_128_quant.tflite"),
            str(port_file),
        ],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "floor server did not start"
            time.sleep(0.05)
        port = int(port_file.read_text())
        client = RawClient(port, b"\x00" * 1000, "application/octet-stream", {"X-Tensor-Shape": "1,1000"})
        times = [client.once() for _ in range(5)]  # five more on the same connection
        assert all(t > 0 for t in times) and client.last_server_ms is None
        client.close()
    finally:
        proc.kill()
        proc.wait(10)


def test_raw_client_names_a_non_200_answer():
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b'HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 13\r\n\r\n{"error": ""}')

    threading.Thread(target=serve, daemon=True).start()
    client = RawClient(srv.getsockname()[1], b"", "image/jpeg", {}, warmup=0)
    with pytest.raises(RuntimeError, match="422"):
        client.once()
    client.close()
    srv.close()
