"""LitServe peer: a ``LitAPI`` with batching, configured per LitServe's batching and production
docs for throughput: ``max_batch_size`` (ours' ``--max-batch``) with a ``batch_timeout`` of
10 ms, ``batch()``/``unbatch()`` stacking rows for one ``session.run``, ``workers_per_device``
inference processes on the CPU, ``fast_queue=True`` (ZeroMQ, its advice above 100 req/s), and
LitServe's default number of API server processes (one per inference worker). No access log.

The multipart form is parsed by LitServe's FastAPI server (``decode_request`` gets the form;
``file`` is the upload) and decoded in the inference worker, as in LitServe's image examples.

Run (in the peer's venv, from this folder): ``python litserve_server.py`` with PEER_MODEL,
PEER_PORT, PEER_MAX_BATCH, PEER_WORKERS in the environment.
"""

# no ``from __future__ import annotations``: LitServe reads decode_request's annotation as a
# class (fastapi.Request: give it the parsed form) to build its endpoint
from typing import Any

import _common
import litserve as ls
import numpy as np
from fastapi import Request

BATCH_TIMEOUT_S = 0.01


class Classifier(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.session = _common.session()
        self.input = self.session.get_inputs()[0].name

    def decode_request(self, request: Request) -> np.ndarray:
        return _common.decode(request["file"].file.read())  # the form, despite the annotation

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return _common.answer(output)


if __name__ == "__main__":
    api = Classifier(max_batch_size=_common.MAX_BATCH, batch_timeout=BATCH_TIMEOUT_S, api_path="/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=_common.WORKERS, fast_queue=True, timeout=120)
    server.run(host="127.0.0.1", port=_common.PORT, log_level="warning", generate_client_file=False, access_log=False)
