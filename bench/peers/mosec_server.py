"""Mosec peer: a two-stage pipeline per Mosec's documentation (decode in one set of processes,
dynamic batching in the model's): the Rust ingress hands each body to a ``Decode`` worker, then
batches up to ``max_batch_size`` decoded images, waiting at most ``max_wait_time`` ms, for one
``Inference`` run.

Mosec hands workers the raw body and no headers, so ``Decode`` finds the multipart part by the
boundary on its first line (``_common.multipart_file``).

Run (in the peer's venv): ``python mosec_server.py --port N --address 127.0.0.1`` with
PEER_MODEL, PEER_MAX_BATCH, PEER_WORKERS in the environment.
"""

from __future__ import annotations

from typing import Any

import _common
import numpy as np
from mosec import Server, Worker

MAX_WAIT_MS = 10


class Decode(Worker):
    def deserialize(self, data: bytes) -> bytes:
        return data  # the multipart body itself, not JSON

    def forward(self, data: bytes) -> np.ndarray:
        return _common.decode(_common.multipart_file(data))


class Inference(Worker):
    def __init__(self) -> None:
        super().__init__()
        self.session = _common.session()
        self.input = self.session.get_inputs()[0].name

    def forward(self, data: list[np.ndarray]) -> list[dict[str, Any]]:
        logits = self.session.run(None, {self.input: np.stack(data)})[0]
        return [_common.answer(row) for row in logits]


if __name__ == "__main__":
    server = Server()
    server.append_worker(Decode, num=_common.WORKERS, route="/predict")
    server.append_worker(
        Inference, num=_common.WORKERS, max_batch_size=_common.MAX_BATCH, max_wait_time=MAX_WAIT_MS, route="/predict"
    )
    server.run()
