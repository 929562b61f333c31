"""BentoML peer: one service, ``workers`` processes, adaptive batching on the one API.

Configured per BentoML's adaptive batching guide for throughput: ``batchable=True`` with
``max_batch_size`` (the bench passes ours' ``--max-batch``) and a ``max_latency_ms`` budget the
dispatcher adapts its window within; one worker process per core (BentoML's ``workers`` are
processes, each with its own model copy and dispatcher). The multipart field ``file`` is a
``list[PIL.Image]``: a batchable API takes a batch per request, and the seed's body carries one.

Run (in the peer's venv, from this folder): ``bentoml serve bentoml_server:Classifier --port N``
with PEER_MODEL, PEER_MAX_BATCH, PEER_WORKERS in the environment.
"""

from __future__ import annotations

from typing import Any

import _common
import bentoml
import numpy as np
from PIL.Image import Image

MAX_LATENCY_MS = 1000


# no access log line per request: ours and the seed run without one too
@bentoml.service(workers=_common.WORKERS, traffic={"timeout": 120}, logging={"access": {"enabled": False}})
class Classifier:
    def __init__(self) -> None:
        self.session = _common.session()
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(route="/predict", batchable=True, max_batch_size=_common.MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, file: list[Image]) -> list[dict[str, Any]]:
        x = np.stack([_common.pixels(im) for im in file])
        logits = self.session.run(None, {self.input: x})[0]
        return [_common.answer(row) for row in logits]
