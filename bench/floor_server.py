"""The transport floor for ``python -m bench agent``: the least any HTTP server can do per request.

``python -m bench.floor_server MODEL.tflite PORT_FILE [THREADS]`` serves one keep-alive
connection at a time: it reads a request (headers up to the blank line, then Content-Length
bytes), runs one ``invoke()`` of the model with its input already set (no parsing, no decoding,
no output handling) and sends a fixed small 200 answer. What the agent's API costs above this
is the agent's own work (HTTP parsing, image decode, pre/post-processing, the JSON answer);
what this costs above a bare ``invoke()`` is the socket round trip and the two wake-ups every
request/response pair pays on this machine.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def content_length(head: bytes) -> int:
    """The Content-Length of an HTTP message head (request or answer); 0 when it has none."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _serve(conn: socket.socket, invoke: object) -> None:
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = content_length(head)
        while len(buf) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        buf = buf[length:]
        invoke()  # type: ignore[operator]
        conn.sendall(ANSWER)


def main(argv: list[str]) -> int:
    from ai_edge_litert.interpreter import Interpreter

    model, port_file = argv[0], Path(argv[1])
    it = Interpreter(model_path=model, num_threads=int(argv[2]) if len(argv) > 2 else None)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(5):
        it.invoke()
    srv = socket.create_server(("127.0.0.1", 0))
    port_file.write_text(str(srv.getsockname()[1]))
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            try:
                _serve(conn, it.invoke)
            except OSError:  # the client went away mid-request (wrk does at the end of a run)
                pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
