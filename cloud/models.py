"""Served models: an onnxruntime session + its spec + its batcher, and the catalog of them.

Catalog rules (mutated only from the event loop; read from request handlers):

* a model version is keyed by bundle digest; the same digest twice is served once;
* a second bundle with the same name *and* version but another digest is refused (two different
  models must not answer to one name);
* several versions of one name are served side by side; the **default** version of a name (what
  ``/predict`` and ``/v1/models/{name}/predict`` use) is the newest by manifest ``created``,
  then by load order;
* removing a version closes its batcher, which drains what is queued before stopping;
* a bundle with no ONNX twin is remembered by its source (a folder file, a hub listing) until
  that source goes away, so asking for its name or version answers why (the compiler withheld
  the twin, and its reason) instead of only "no model named ...".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from protocol.errors import Reason

from .batching import Batcher
from .bundles import VerifiedBundle
from .config import BatchPolicy, SessionTuning
from .errors import BadInput, BundleRefused, CloudError, InferenceFailed, NotFound, NoTwin
from .metrics import Metrics
from .spec import ModelSpec, model_spec

log = logging.getLogger(__name__)

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(t: SessionTuning, intra_threads: int | None = None) -> ort.SessionOptions:
    """``t`` as onnxruntime options; ``intra_threads`` overrides ``t.intra_threads``."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _OPT_LEVELS[t.optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = t.intra_threads if intra_threads is None else intra_threads
    so.inter_op_num_threads = t.inter_threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if t.spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if t.spinning else "0")
    so.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not our logs
    return so


def _ort_error(exc: Exception) -> CloudError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, ort_state.InvalidArgument):
        return BadInput("input", f"the model rejected it: {first[:300]}")
    log.error("onnxruntime failed: %s", first)
    return InferenceFailed(f"inference failed: {first[:300]}")


@dataclass(frozen=True)
class LoadOptions:
    tuning: SessionTuning = SessionTuning()
    policy: BatchPolicy = BatchPolicy()


def _threads(n: int) -> int:
    """An intra-op thread count as onnxruntime resolves it (0: one per core)."""
    return n or max(1, os.cpu_count() or 1)


class ServedModel:
    """A model version: its session(s), spec and batcher. ``solo``, when given, is a second
    session of the same model with more intra-op threads, for a request that runs alone."""

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        policy: BatchPolicy,
        metrics: Metrics | None = None,
        solo: ort.InferenceSession | None = None,
    ) -> None:
        self.spec = spec
        self.session = session
        self.solo = solo
        self._input = spec.input.name
        self._metrics = metrics
        hook = None
        if metrics is not None:
            sizes = metrics.batch_size.labels(spec.name)
            secs = metrics.batch_seconds.labels(spec.name)

            def hook(rows: int, seconds: float) -> None:
                sizes.observe(rows)
                secs.observe(seconds)

        self.batcher = Batcher(
            f"{spec.name}@{spec.version}",
            self._run,
            policy,
            batchable=spec.input.batchable,
            on_batch=hook,
            fail=_ort_error,
            workers=policy.workers,
            run_solo=(lambda x: self._run(x, solo)) if solo is not None else None,
        )
        if metrics is not None:
            metrics.track_queue(spec.name, spec.version, lambda: float(self.batcher.depth), policy.max_queue)

    def _run(self, x: np.ndarray, session: ort.InferenceSession | None = None) -> list[np.ndarray]:
        sess = session or self.session
        if self.spec.input.batch == 1 and x.shape[0] > 1:  # static batch of 1: one row per run
            runs = [sess.run(None, {self._input: x[i : i + 1]}) for i in range(x.shape[0])]
            outs = [np.concatenate(parts) for parts in zip(*runs, strict=True)]
        else:
            outs = list(sess.run(None, {self._input: x}))
        q = self.spec.output_quant
        if q is not None and outs and np.issubdtype(outs[0].dtype, np.integer):
            outs[0] = (q[0] * (outs[0].astype(np.float32) - q[1])).astype(np.float32)
        return outs

    async def predict(self, x: np.ndarray, finish: Callable[[list[np.ndarray]], Any] | None = None) -> Any:
        """The outputs for ``x``, or ``finish(outputs)`` computed in the worker thread."""
        result = await self.batcher.submit(x, finish)
        self._count(int(x.shape[0]))
        return result

    async def predict_lazy(
        self,
        prepare: Callable[[], np.ndarray],
        shape: tuple[int, ...],
        finish: Callable[[list[np.ndarray]], Any] | None = None,
    ) -> Any:
        """Like :meth:`predict`, but a worker thread builds the input and, with ``finish``,
        turns the outputs into the answer (see Batcher.submit_lazy)."""
        result = await self.batcher.submit_lazy(prepare, shape, finish)
        self._count(shape[0])
        return result

    def _count(self, rows: int) -> None:
        if self._metrics is not None:
            self._metrics.predictions.labels(self.spec.name, self.spec.version).inc(rows)

    def close(self) -> None:
        self.batcher.close(wait=True, timeout=30)
        if self._metrics is not None:
            self._metrics.forget_model(self.spec.name, self.spec.version)


def _warmup_input(spec: ModelSpec) -> np.ndarray:
    batch = spec.input.batch or 1
    dims = [d if d is not None else 1 for d in spec.input.sample]
    if spec.image is not None:
        dims = list(spec.image.sample_shape)
    return np.zeros([batch, *dims], dtype=spec.input.dtype)


def load_model(bundle: VerifiedBundle, opts: LoadOptions, metrics: Metrics | None = None) -> ServedModel:
    """Open the bundle's ONNX twin, derive its spec, run one warm-up inference; or BundleRefused."""
    src = bundle.source
    try:
        session = ort.InferenceSession(
            bundle.onnx, sess_options=session_options(opts.tuning), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many unrelated types
        raise BundleRefused(
            src, Reason.UNSUPPORTED_RUNTIME.value, f"onnxruntime cannot load the ONNX artifact: {str(exc)[:300]}"
        ) from None
    m = bundle.manifest
    spec = model_spec(
        m.name,
        m.version,
        bundle.digest,
        m.created,
        m.model,
        [(i.name, i.type, i.shape) for i in session.get_inputs()],
        [o.name for o in session.get_outputs()],
        bundle.labels,
        src,
        [o.shape for o in session.get_outputs()],
    )
    try:
        session.run(None, {spec.input.name: _warmup_input(spec)})
    except Exception as exc:  # noqa: BLE001
        raise BundleRefused(src, Reason.INFERENCE_FAILED.value, f"warm-up inference failed: {str(exc)[:300]}") from None
    solo = None
    t = opts.tuning
    if _threads(t.solo_threads) > _threads(t.intra_threads):
        # the same model again with more intra-op threads (memory: one more copy of the weights),
        # so a lone request uses every core (docs/cloud.md, "adaptive threads")
        solo = ort.InferenceSession(
            bundle.onnx, sess_options=session_options(t, t.solo_threads), providers=["CPUExecutionProvider"]
        )
        solo.run(None, {spec.input.name: _warmup_input(spec)})
    return ServedModel(spec, session, opts.policy, metrics, solo)


class Catalog:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._by_digest: dict[str, ServedModel] = {}
        self._order: dict[str, int] = {}
        self._seq = 0
        self._metrics = metrics
        self._no_twin: dict[str, NoTwin] = {}  # by source: bundles with nothing to serve, and why

    def __len__(self) -> int:
        return len(self._by_digest)

    def has(self, digest: str) -> bool:
        return digest in self._by_digest

    def check_new(self, name: str, version: str, digest: str, source: str) -> None:
        """Raise BundleRefused if a bundle with this identity must not be added."""
        for m in self._by_digest.values():
            if m.spec.name == name and m.spec.version == version and m.spec.digest != digest:
                raise BundleRefused(
                    source,
                    Reason.REPLAYED.value,
                    f"{name} version {version} is already served from digest "
                    f"{m.spec.digest[:12]}; a new model needs a new version",
                )

    def add(self, model: ServedModel) -> None:
        s = model.spec
        self.check_new(s.name, s.version, s.digest, s.name)
        if s.digest in self._by_digest:
            model.close()
            return
        self._seq += 1
        self._by_digest[s.digest] = model
        self._order[s.digest] = self._seq
        self._gauge()

    def remove(self, digest: str) -> ServedModel | None:
        """Take a version out of the catalog; the caller closes it (drains its queue)."""
        model = self._by_digest.pop(digest, None)
        self._order.pop(digest, None)
        self._gauge()
        return model

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.models_loaded.set(len(self._by_digest))

    def models(self) -> list[ServedModel]:
        return sorted(
            self._by_digest.values(), key=lambda m: (m.spec.name, -m.spec.created, -self._order[m.spec.digest])
        )

    def names(self) -> list[str]:
        return sorted({m.spec.name for m in self._by_digest.values()})

    def note_no_twin(self, source: str, refusal: NoTwin) -> None:
        """Remember that ``source`` holds a bundle with no twin (until :meth:`forget_no_twin`)."""
        self._no_twin[source] = refusal

    def forget_no_twin(self, source: str) -> None:
        self._no_twin.pop(source, None)

    def no_twin_sources(self) -> list[str]:
        return sorted(self._no_twin)

    def _not_found(self, problem: str, name: str, version: str | None = None) -> NotFound:
        """``problem``, or why the bundle that has this name (and version) cannot be served."""
        known = [r for r in self._no_twin.values() if r.name == name and version in (None, r.version)]
        if not known:
            return NotFound(problem)
        r = max(known, key=lambda r: (r.version, r.source))
        what = f"model {name!r}" + (f" version {version!r}" if version is not None else "")
        return NotFound(f"{what} is not served: bundle {r.name} {r.version} ({r.source}) has no ONNX twin: {r.why}")

    def default(self, name: str) -> ServedModel:
        versions = [m for m in self._by_digest.values() if m.spec.name == name]
        if not versions:
            raise self._not_found(f"no model named {name!r}; serving {self.names()}", name)
        return max(versions, key=lambda m: (m.spec.created, self._order[m.spec.digest]))

    def get(self, name: str, version: str | None = None) -> ServedModel:
        if version is None:
            return self.default(name)
        for m in self._by_digest.values():
            if m.spec.name == name and m.spec.version == version:
                return m
        have = sorted(m.spec.version for m in self._by_digest.values() if m.spec.name == name)
        if not have:
            raise self._not_found(f"no model named {name!r}; serving {self.names()}", name, version)
        raise self._not_found(f"model {name!r} has no version {version!r}; serving versions {have}", name, version)

    def close(self) -> None:
        for digest in list(self._by_digest):
            model = self.remove(digest)
            if model is not None:
                model.close()


def describe(model: ServedModel, default: bool) -> dict[str, Any]:
    s = model.spec
    out: dict[str, Any] = {
        "name": s.name,
        "version": s.version,
        "digest": s.digest,
        "created": s.created,
        "default": default,
        "task": s.task,
        "input": {
            "name": s.input.name,
            "dtype": s.input.dtype,
            "shape": [s.input.batch] + list(s.input.sample),
            "batchable": s.input.batchable,
        },
        "outputs": list(s.outputs),
        "labels": len(s.labels),
        "queue_depth": model.batcher.depth,
    }
    if s.image is not None:
        i = s.image
        out["image"] = {
            "height": i.height,
            "width": i.width,
            "channels": i.channels,
            "scale": i.scale,
            "offset": i.offset,
            "layout": i.layout,
        }
    return out
