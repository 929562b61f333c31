"""A fake Edge TPU driver (:class:`agent.watchdog.Driver`) for machines without a Coral.

It is injected where the libedgetpu delegate would be (``EDGEFLEET_AGENT_EDGETPU_DRIVER=
tests.agent.faketpu:DRIVER`` in a real agent process, or passed to :class:`GuardedBackend`):
``open`` wraps a real LiteRT CPU interpreter on the bundle's CPU twin (the ``_edgetpu.tflite``
holds a custom op no CPU interpreter runs) and names it ``edgetpu``; every invoke first reads the
control file (``EDGEFLEET_TEST_FAKE_TPU``, or the path given) and behaves as it says:

* ``ok`` (or no file): answers with the CPU interpreter;
* ``hang``: never returns while the file says so, like a USB accelerator locked up until it is
  unplugged (the thread polls the file, so a test's abandoned threads end when it says ``ok``);
* ``error``: raises :class:`ModelError`, like a delegate failing every invoke;
* ``absent``: the delegate does not load (``open`` raises, ``probe`` reports none).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import ModelError
from agent.runtime import EdgeTpuProbe, LiteRTBackend

ENV = "EDGEFLEET_TEST_FAKE_TPU"


class FakeTpu:
    def __init__(self, control: Path | None = None) -> None:
        self.control = control
        self.invokes = 0  # invokes that reached the fake delegate

    def mode(self) -> str:
        path = self.control or (Path(os.environ[ENV]) if os.environ.get(ENV) else None)
        try:
            return path.read_text().strip() if path is not None else "ok"
        except OSError:
            return "ok"

    def open(self, path: Path, cpu_path: Path | None, threads: int | None, feed: str | None) -> Any:
        if self.mode() == "absent" or cpu_path is None:
            raise ModelError(f"{path.name}: the (fake) Edge TPU delegate did not load")
        return _Flaky(self, LiteRTBackend(cpu_path, threads=threads, feed=feed))

    def probe(self) -> EdgeTpuProbe:
        ok = self.mode() == "ok"
        return EdgeTpuProbe(ok, "fake Edge TPU delegate" + ("" if ok else f": {self.mode()}"), 14 if ok else None)


class _Flaky:
    def __init__(self, tpu: FakeTpu, inner: LiteRTBackend) -> None:
        self._tpu, self._inner = tpu, inner
        self.name = "edgetpu"
        for attr in ("input_shape", "input_dtype", "input_quant", "output_quant", "inputs"):
            setattr(self, attr, getattr(inner, attr))
        self.output_names, self.output_shapes = inner.output_names, inner.output_shapes

    def _gate(self) -> None:
        self._tpu.invokes += 1
        mode = self._tpu.mode()
        if mode == "error":
            raise ModelError("invoke failed: Edge TPU (fake): Failed to invoke the delegate")
        while mode == "hang":
            time.sleep(0.05)
            mode = self._tpu.mode()

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        self._gate()
        return self._inner.invoke_raw(x)

    def invoke_all(self, x: np.ndarray, state: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        self._gate()
        return self._inner.invoke_all(x, state)

    def close(self) -> None:
        self._inner.close()


DRIVER = FakeTpu()
