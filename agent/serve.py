"""Serving apps on the device: routing (Edge TPU -> CPU -> cloud) and request bodies.

The HTTP server is :mod:`agent.localapi`. ``POST /v1/predict`` (alias ``/predict``, the seed's
route) takes a multipart field ``file`` = image, JSON ``{"inputs": nested floats}``, a raw image
body (Content-Type image/*) or a binary tensor (:func:`parse_request`).

Answer (built by :mod:`protocol.answers`, the cloud's builder too): one form per task, all with
``task``: a classifier's (or a bundle without a signature) ``{"task": "classification",
"predictions": [[scores]], "top": [{"index","label","score"}]}`` (``[N, K]``, one row: the
cloud's shape too); ``detection``, ``segmentation``,
``keypoints``, ``embedding`` their own; anything else ``{"task", "tensors": [...]}``; never a
non-classifier's outputs ranked as class scores. Query parameters shape it (``top_k``,
``score_threshold``, ``max_detections``, ``mask=png``, ``raw=true``: :mod:`protocol.answers.params`);
every answer has ``"served_by": "edgetpu"|"cpu"|"onnx"|"cloud", "bundle": {"digest","name","version"},
"latency_ms"``, a stateful model's ``"state": "reset"|"session"`` too (:mod:`agent.sessions`:
``X-Session-Id`` / ``X-Session-Reset`` headers). A cloud answer in another task's form than the
local model's is refused, not passed on; a session request never goes to the cloud (it keeps no
state).

Routing: the active model serves unless it is missing, raises, or its recent latency is over
``latency_budget_ms``; then the cloud fallback (configured URL + API key) serves, and the answer
says so. While a freshly switched model is on probation, its errors are counted and the daemon
is told when they reach the limit (it rolls back). Shadow mode runs a candidate on a sample of
requests after the answer is computed and records agreement and latency delta, never serving it.

A model switch fails no request: the old model serves until the new one is loaded and swapped
in; requests already running on the old one finish on it, and it is closed after the last of
them (:class:`agent.runtime.Model` counts its holders).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from protocol import answers, taskstats
from protocol.answers import tasks as answer_tasks
from protocol.channels import DEFAULT
from protocol.errors import BadParameter
from protocol.signature import Signature

from . import escalation
from .errors import ConfigError, InputError, ModelError, Unavailable
from .image import size_of
from .install import probation_verdict
from .request import Request, parse_request
from .runtime import Model
from .sessions import Session, Sessions, carry, check_id, initial
from .telemetry import Recorder

log = logging.getLogger(__name__)

__all__ = ["MAX_BODY", "Answer", "CloudClient", "Request", "Serving", "parse_request"]

MAX_BODY = 32 * 1024 * 1024


@dataclass(frozen=True)
class Answer:
    """One prediction answer: a classifier's scores, flat (None for any other task), for the
    request's bookkeeping (escalation, shadow, telemetry), and the JSON document's fields (a
    classifier's ``predictions`` among them, ``[1, K]`` from :func:`protocol.answers.classification`).

    ``after`` is the request's bookkeeping (telemetry, probation, shadow sampling): the HTTP
    handler runs it with :meth:`settle` once the answer is sent, so the app does not wait for
    it; :meth:`Serving.answer` runs it before returning."""

    scores: np.ndarray | None
    fields: dict[str, Any]  # predictions+task+top | task's own, served_by, bundle, latency_ms[, cloud_model]
    after: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def settle(self) -> None:
        if self.after is not None:
            self.after()

    def doc(self) -> dict[str, Any]:
        return _plain_tree(self.fields)  # type: ignore[no-any-return]

    def body(self) -> bytes:
        """The JSON answer in one orjson call, scores straight from the float32 array: each
        score is the shortest text that reads back to the same float32 (``0.5``, ``0.1``; the
        standard library writes float32 values widened, ``0.10000000149011612``); NaN is null.
        Measured on MobileNetV2-224 (1001 scores), it takes ~0.2-0.3 ms off each answer."""
        return orjson.dumps(self.fields, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(obj: Any) -> Any:
    """What orjson does not write itself: non-contiguous arrays, numpy scalars."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def _plain_tree(obj: Any) -> Any:
    """``obj`` with every array a nested list of Python numbers (floats widened exactly)."""
    if isinstance(obj, dict):
        return {k: _plain_tree(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_tree(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return (obj.astype(float) if obj.dtype.kind == "f" else obj).tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


class CloudClient:
    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url, self.api_key, self.timeout = url, api_key, timeout

    def predict(self, req: Request, model_name: str | None) -> dict[str, Any]:
        """Ask the cloud fallback (edgefleet-cloud): images to ``POST /predict?model=NAME``
        (the seed's route), tensors to ``POST /v1/models/NAME/predict``."""
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        params = {**req.query, **({"model": model_name} if model_name else {})}
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        if req.image is not None:
            boundary = uuid.uuid4().hex
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{req.filename}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + req.image
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
            url = f"{self.url}/predict{query}"
        else:
            if not model_name:
                raise Unavailable("cloud fallback: a tensor request needs a model name and no bundle is known")
            inputs = req.tensor.tolist() if req.tensor is not None else req.inputs
            body = json.dumps({"inputs": inputs}).encode()
            headers["Content-Type"] = "application/json"
            url = f"{self.url}/v1/models/{urllib.parse.quote(model_name)}/predict{query}"
        r = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(r, timeout=self.timeout) as resp:
                doc = json.loads(resp.read(MAX_BODY))
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", "replace")
            raise Unavailable(f"cloud fallback {url}: HTTP {exc.code} {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unavailable(f"cloud fallback {url}: {exc}") from None
        if (
            isinstance(doc, dict)
            and "predictions" not in doc
            and "tensors" not in doc
            and isinstance(doc.get("outputs"), dict)
            and doc["outputs"]
        ):
            doc["predictions"] = next(iter(doc["outputs"].values()))
        if not isinstance(doc, dict) or not ("predictions" in doc or isinstance(doc.get("task"), str)):
            raise Unavailable(f"cloud fallback {url}: answer has neither 'predictions' nor 'task'")
        return doc


class Serving:
    """Holds the active (and shadow) model; thread-safe swap; routes each request."""

    def __init__(
        self,
        recorder: Recorder,
        cloud: CloudClient | None,
        latency_budget_ms: float | None,
        on_probation_failed: Callable[[str, str], None],
        on_probation_passed: Callable[[str], None] = lambda digest: None,
        sessions: Sessions | None = None,
        escalate: escalation.Policy | None = None,
        channel: str = DEFAULT,
    ) -> None:
        self.channel = channel
        self.recorder = recorder
        self.cloud = cloud
        self.budget_s = latency_budget_ms / 1000 if latency_budget_ms else None
        self.on_probation_failed = on_probation_failed
        self.on_probation_passed = on_probation_passed
        self.sessions = sessions if sessions is not None else Sessions()
        self._lock = threading.Lock()
        self.model: Model | None = None
        self.shadow: Model | None = None
        self.shadow_sample = 0.0
        self._probation: dict[str, int] | None = None
        self._ewma_s: float | None = None
        self._since_local = 0
        self.last_name: str | None = None  # bundle name last served, for cloud routing
        self._shadow_pool = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._shadow_busy = threading.Lock()
        # escalation by confidence (agent.escalation): the config's policy, else the active bundle's
        # (its signature's "escalation" field, read at each swap); one (state, short-timeout client) pair
        self._config_policy = escalate
        self._escalation: tuple[escalation.Escalator, CloudClient | None] | None = None
        self._set_policy(escalate)
        # told of every local answer after it is sent (the daemon's hard examples, agent.hardexamples)
        self.on_local: Callable[[Request, Answer, Model], object] | None = None

    # model management (daemon thread) ---------------------------------------------------
    def swap(self, model: Model | None, probation: tuple[int, int] | None = None) -> Model | None:
        """Make ``model`` active; return the one it replaces (the caller closes it: requests
        already running on it finish first, see :class:`~agent.runtime.Model`)."""
        with self._lock:
            old, self.model = self.model, model
            self._probation = (
                {"window": probation[0], "max": probation[1], "n": 0, "errors": 0}
                if probation and probation[0] > 0 and model is not None
                else None
            )
            self._ewma_s = None
        self.sessions.clear()  # a state means nothing to another model
        if model is not None:
            self.last_name = model.info.name
            if self._config_policy is None:
                self._set_policy(self._bundle_policy(model))
            self.recorder.set_bundle(
                model.info.digest, model.baseline, model.preprocess, (model.info.name, model.info.version)
            )
        else:
            self.recorder.set_bundle(None, None, {})
        return old

    @property
    def escalator(self) -> escalation.Escalator | None:
        return self._escalation[0] if self._escalation is not None else None

    def _set_policy(self, policy: escalation.Policy | None) -> None:
        cloud = self.cloud
        self._escalation = (
            None
            if policy is None
            else (
                escalation.Escalator(policy, time.monotonic(), time.time()),
                CloudClient(cloud.url, cloud.api_key, policy.timeout_ms / 1000) if cloud is not None else None,
            )
        )

    def _bundle_policy(self, model: Model) -> escalation.Policy | None:
        """The bundle's escalation policy (``signature.escalation``, kept by protocol as an unknown
        field); a bad one is logged with the reason and not applied (the agent config can replace it)."""
        table = model.signature.extra.get("escalation") if model.signature is not None else None
        if table is None:
            return None
        try:
            if not isinstance(table, dict):
                raise ConfigError(f"signature.escalation: expected an object, got {table!r:.60}")
            return escalation.Policy.from_dict(table, "signature.escalation")
        except ConfigError as exc:
            log.error("bundle %s %s: escalation policy not applied: %s", model.info.name, model.info.version, exc)
            return None

    def set_shadow(self, model: Model | None, sample: float) -> Model | None:
        with self._lock:
            old, self.shadow, self.shadow_sample = self.shadow, model, sample
        return old

    @property
    def ready(self) -> bool:
        return self.model is not None or self.cloud is not None

    # request path (HTTP threads) --------------------------------------------------------
    def predict(self, req: Request) -> dict[str, Any]:
        return self.answer(req).doc()

    def answer(self, req: Request) -> Answer:
        """:meth:`respond` with the bookkeeping done before returning."""
        out = self.respond(req)
        out.settle()
        return Answer(out.scores, out.fields)  # settled: nothing left to run

    def respond(self, req: Request) -> Answer:
        """Serve one request; a successful local answer leaves its bookkeeping in ``after``.

        The active model is taken and held under the swap lock, so a switch in the meantime
        cannot close it under this request: it runs to the end on the model it started with."""
        t0 = time.perf_counter()
        with self._lock:
            model = self.model
            if model is not None:
                model.hold()
        errors: list[str] = []
        local: Answer | None = None
        esc = self._escalation  # one policy for the whole request, even if a swap replaces it
        if model is None:
            errors.append("no local model installed")
        else:
            try:
                if self._use_local():
                    local = self._local(req, model, t0, errors)
                    if local is not None and self.on_local is not None:
                        local = self._hooked(req, local, model)
                    if local is not None and (esc is None or req.session is not None):
                        return local
                else:
                    try:  # the client's mistake wherever the answer would come from: a 4xx, not the cloud's 503
                        answers.check_params(model.signature, req.params)
                    except BadParameter as exc:
                        raise InputError(str(exc)) from None
                    errors.append("local latency over budget")
            finally:
                model.release()  # the answer and its bookkeeping need no interpreter
        if local is not None:
            assert esc is not None
            return self._escalate(req, local, model, t0, *esc)
        if self.cloud is None:
            raise Unavailable("; ".join(errors + ["no cloud fallback configured"]))
        if req.session is not None:
            raise Unavailable(
                "; ".join(errors + ["a session's request is not sent to the cloud fallback: it keeps no state"])
            )
        name = model.info.name if model is not None else self.last_name
        if name is None and self.channel != DEFAULT:
            # without a name the cloud answers with its default model: the default channel's, not this one's
            raise Unavailable(
                "; ".join(errors + [f"channel {self.channel!r} has no model yet, so none to ask the cloud for"])
            )
        try:
            doc = self.cloud.predict(req, name)
            out = self._cloud_answer(doc, model, t0)
        except Unavailable as exc:
            self.recorder.record("cloud", 0.0, False)
            raise Unavailable("; ".join(errors + [str(exc)])) from None
        self.recorder.record("cloud", time.perf_counter() - t0, True)
        return out

    def _hooked(self, req: Request, local: Answer, model: Model) -> Answer:
        """``local`` with :attr:`on_local` run after its bookkeeping (so after the answer is sent)."""
        hook, before = self.on_local, local.after
        assert hook is not None

        def after() -> None:
            if before is not None:
                before()
            try:
                hook(req, local, model)
            except Exception:  # a hard example is never worth a failed request
                log.exception("on_local hook failed")

        return Answer(local.scores, local.fields, after)

    def _escalate(
        self,
        req: Request,
        local: Answer,
        model: Model | None,
        t0: float,
        esc: escalation.Escalator,
        client: CloudClient | None,
    ) -> Answer:
        """A local answer, or the cloud's bigger model's when the local one is unsure and the
        budget and breaker let it go (rules: :mod:`agent.escalation`). The cloud's answer says
        ``"escalated": true``; a local one that was not escalated says why in ``"escalation"``."""
        try:
            conf = escalation.confidence(esc.policy, local.fields, local.scores)
        except ConfigError as exc:  # the policy's measure does not fit this model: say so, answer locally
            local.fields.update(escalation="not_applicable", escalation_error=str(exc))
            return local
        local.fields["confidence"] = round(conf, 6)
        if conf >= esc.policy.threshold:
            return local
        if client is None:
            local.fields["escalation"] = "no_cloud"
            return local
        decision = esc.ask(conf, _request_bytes(req), time.monotonic(), time.time())
        if decision != "escalate":
            self.recorder.count(f"escalation_{decision}")
            local.fields["escalation"] = decision
            return local
        try:
            doc = client.predict(req, esc.policy.escalate_to)
            out = self._cloud_answer(doc, model, t0)
        except Unavailable as exc:
            esc.done(False, time.monotonic())
            self.recorder.count("escalation_failed")
            timed_out = "timed out" in str(exc)
            local.fields.update(escalation="timeout" if timed_out else "failed", escalation_error=str(exc))
            return local
        esc.done(True, time.monotonic())
        self.recorder.count("escalated")
        out.fields.update(escalated=True, confidence=round(conf, 6))
        return Answer(out.scores, out.fields, local.after)  # the local run's telemetry and drift still count

    def _cloud_answer(self, doc: dict[str, Any], model: Model | None, t0: float) -> Answer:
        """The cloud's answer when it has the local model's form (the same builder made it):
        its class scores for a classifier, its task's document otherwise; an answer in another
        form (class scores for a detector, from an old cloud) is refused (Unavailable)."""
        cloud_fields = {"cloud_model": doc["model"]} if isinstance(doc.get("model"), dict) else {}
        got = answers.CLASSIFICATION if "predictions" in doc else answers.TENSORS if "tensors" in doc else doc["task"]
        want = model.form if model is not None else got
        if got != want:
            task = model.signature.task if model is not None and model.signature is not None else want
            what = "class scores" if got == answers.CLASSIFICATION else f"a {got} answer"
            raise Unavailable(
                f"the cloud fallback answered {what} for {model.info.name if model else '?'}, a {task} model"
                + (": its outputs are not class scores" if got == answers.CLASSIFICATION else "")
            )
        if got != answers.CLASSIFICATION:
            fields = {k: v for k, v in doc.items() if k not in ("model", "served_by", "bundle", "latency_ms")}
            return Answer(None, {**fields, **self._about(model, "cloud", t0), **cloud_fields})
        scores = np.asarray(doc["predictions"], dtype=np.float32).reshape(-1)
        out = self._answer(scores, model, "cloud", t0)
        if isinstance(doc.get("top"), list):
            cloud_fields["top"] = doc["top"]
        return Answer(out.scores, {**out.fields, **cloud_fields})

    def _local(self, req: Request, model: Model, t0: float, errors: list[str]) -> Answer | None:
        """The answer of the (held) local model, or None with the reason added to ``errors``.
        A bad parameter or an unknown session raises InputError before the model runs."""
        try:
            answers.check_params(model.signature, req.params)
        except BadParameter as exc:
            raise InputError(str(exc)) from None
        state = self._state_rule(req, model)
        x = None
        affine = None
        session: Session | None = None
        try:
            if req.image is not None and model.direct:
                x = raw = model.image_to_raw(req.image)  # drift floats are made off the request path
                affine = (float(model.preprocess.get("scale", 1.0)), float(model.preprocess.get("offset", 0.0)))
            elif req.tensor is not None:
                x, raw, affine = model.binary_to_raw(req.tensor)
            else:
                x = model.image_to_input(req.image) if req.image is not None else model.tensor_to_input(req.inputs)
                raw = model.quantize(x)  # ModelError if the bundle's preprocess cannot feed its model
            classifier = model.form == answers.CLASSIFICATION
            if state == "session":
                assert req.session is not None
                session = self.sessions.checkout(check_id(req.session), req.reset, initial(model.state_pairs))
            t1 = time.perf_counter()
            self.recorder.invoking.set()
            try:  # a classifier's first output is its scores; any other model answers them all
                if session is not None:
                    ys = model.invoke_all(raw, session.state)
                else:
                    ys = [model.invoke_raw(raw)] if classifier else model.invoke_all(raw)
            finally:
                self.recorder.invoking.clear()
            took = time.perf_counter() - t1
        except ModelError as exc:
            if session is not None:
                self.sessions.abandon(session)
            errors.append(f"{model.served_by}: {exc}")
            self.recorder.record(model.served_by, 0.0, False)
            self._probation_tick(model, ok=False)
            return None
        except BaseException:  # whatever else goes wrong, the session is not left locked
            if session is not None:
                self.sessions.abandon(session)
            raise
        # before the answer is sent, not in its bookkeeping: the app's next request is routed
        # knowing this one's latency (it could arrive before the bookkeeping runs)
        self._observe_local(took)
        about: dict[str, Any] = {}
        if session is not None:
            try:
                kept = self._next_state(model, ys)
            except BaseException:
                self.sessions.abandon(session)
                raise
            step = self.sessions.checkin(session, kept)
            about = {"state": "session", "session": {"id": session.id, "step": step}}
        elif state is not None:
            about = {"state": state}
        scores = model.dequantize(ys[0]).reshape(-1) if classifier else None
        seconds = time.perf_counter() - t0

        sig = model.signature
        task_answer = None
        if scores is None and sig is not None:
            # a non-classifier's drift features come from its answer (protocol.taskstats),
            # built on the drift thread with the same parameters the baseline used
            def task_answer() -> dict[str, Any]:
                assert sig is not None
                return answers.build(sig, ys, model.label_map, taskstats.PARAMS, None)

        def after() -> None:
            # drift: input features always; output features: a classifier's top-1 class and
            # confidence, any other task's protocol.taskstats features
            self.recorder.record(model.served_by, seconds, True, x, scores, affine, task_answer)
            self._probation_tick(model, ok=True)
            if session is None and (scores is not None or task_answer is not None):
                self._offer_shadow(req, scores, took, ys if scores is None else None, model)

        if scores is None and model.signature is not None:
            size = None
            if req.image is not None:
                try:
                    size = size_of(req.image)
                except ValueError as exc:
                    raise InputError(str(exc)) from None
            try:
                doc = answers.build(model.signature, ys, model.label_map, req.params, size)
            except BadParameter as exc:
                raise InputError(str(exc)) from None
            return Answer(None, {**doc, **about, **self._about(model, model.served_by, t0)}, after)
        assert scores is not None
        out = self._answer(scores, model, model.served_by, t0, after, req.params)
        if req.params.raw and model.signature is not None:
            out.fields["raw"] = answers.raw(model.signature, ys)
        out.fields.update(about)
        return out

    def _state_rule(self, req: Request, model: Model) -> str | None:
        """How the request treats the model's state: ``session`` (kept per X-Session-Id),
        ``reset`` (a stateful model answered from its initial state), None (no state)."""
        stateful = model.signature is not None and model.signature.stateful
        if req.session is None:
            if req.reset:
                raise InputError("X-Session-Reset without X-Session-Id: name the session to reset")
            return "reset" if stateful else None
        if model.state_pairs:
            return "session"
        if stateful:
            raise InputError(
                f"{model.info.name} keeps its state inside the model (variable tensors), which the agent cannot "
                "keep per session; send the request without X-Session-Id (it is answered from the initial state)"
            )
        return None  # a stateless model: every request is its own; the session changes nothing

    def _next_state(self, model: Model, ys: list[np.ndarray]) -> tuple[np.ndarray, ...]:
        assert model.signature is not None
        names = [t.name for t in model.signature.outputs]
        return tuple(np.array(carry(o, i, ys[names.index(o.name)])) for i, o in model.state_pairs)

    def _about(self, model: Model | None, path: str, t0: float) -> dict[str, Any]:
        """The fields every answer carries besides the model's own."""
        return {
            "served_by": path,
            "bundle": model.info.to_dict() if model is not None else None,
            "latency_ms": round((time.perf_counter() - t0) * 1000, 3),
        }

    def _answer(
        self,
        scores: np.ndarray,
        model: Model | None,
        path: str,
        t0: float,
        after: Callable[[], None] | None = None,
        params: answers.Params | None = None,
    ) -> Answer:
        p = params or answers.Params()
        try:
            doc = answers.classification(
                scores, model.labels if model is not None else [], k=p.top_k, given="top_k" in p.given
            )
        except BadParameter as exc:
            raise InputError(str(exc)) from None
        fields = {"predictions": doc["predictions"], "task": doc["task"], "top": doc["top"]}
        return Answer(scores, {**fields, **self._about(model, path, t0)}, after)

    def _use_local(self) -> bool:
        if self.budget_s is None or self.cloud is None or self._ewma_s is None:
            return True
        if self._ewma_s <= self.budget_s:
            return True
        self._since_local += 1
        if self._since_local >= 20:  # probe the local path now and then so it can recover
            self._since_local = 0
            return True
        return False

    def _observe_local(self, seconds: float) -> None:
        self._ewma_s = seconds if self._ewma_s is None else 0.8 * self._ewma_s + 0.2 * seconds

    def _probation_tick(self, model: Model, ok: bool) -> None:
        with self._lock:
            p = self._probation
            if p is None or self.model is not model:
                return
            p["n"] += 1
            p["errors"] += 0 if ok else 1
            verdict = probation_verdict(p["n"], p["errors"], p["window"], p["max"])
            if verdict != "watch":
                self._probation = None
        if verdict == "rollback":
            self.on_probation_failed(model.info.digest, f"{p['errors']} of the first {p['n']} inferences failed")
        elif verdict == "pass":
            self.on_probation_passed(model.info.digest)

    def _offer_shadow(
        self,
        req: Request,
        scores: np.ndarray | None,
        took: float,
        ys: list[np.ndarray] | None = None,
        served: Model | None = None,
    ) -> None:
        """Sampled requests also go to the shadow candidate, off the request path; one at a
        time (a request arriving while the candidate is busy is simply not sampled)."""
        if self.shadow is None or random.random() >= self.shadow_sample:
            return
        if not self._shadow_busy.acquire(blocking=False):
            return
        with self._lock:  # held like the active model: replacing the candidate waits for this run
            # classifiers by top-1; other tasks by protocol.taskstats.agreement on their answers
            # (a candidate of another form answers something else: it is not compared)
            form = answers.CLASSIFICATION if scores is not None else served.form if served is not None else None
            shadow = self.shadow if self.shadow is not None and self.shadow.form == form else None
            if shadow is not None:
                shadow.hold()
        if shadow is None:
            self._shadow_busy.release()
            return
        self._shadow_pool.submit(self._run_shadow, shadow, req, scores, took, ys, served)

    def _run_shadow(
        self,
        shadow: Model,
        req: Request,
        scores: np.ndarray | None,
        took: float,
        ys: list[np.ndarray] | None = None,
        served: Model | None = None,
    ) -> None:
        try:
            if scores is None:
                assert ys is not None and served is not None
                self._shadow_task(shadow, req, ys, served, took)
            else:
                self._shadow_once(shadow, req, scores, took)
        finally:
            shadow.release()
            self._shadow_busy.release()

    def _shadow_once(self, shadow: Model, req: Request, scores: np.ndarray, took: float) -> None:
        try:
            t1 = time.perf_counter()
            if req.image is not None:
                s2 = shadow.predict_raw(shadow.image_to_raw(req.image))
            elif req.tensor is not None:
                s2 = shadow.predict_raw(shadow.binary_to_raw(req.tensor)[1])
            else:
                s2 = shadow.predict(shadow.tensor_to_input(req.inputs))
            delta = (time.perf_counter() - t1) - took
        except Exception:  # a candidate that breaks is an error, not a crash
            self.recorder.record_shadow(None, 0.0, shadow.info.digest)
            return
        if s2.shape != scores.shape:
            self.recorder.record_shadow(None, 0.0, shadow.info.digest)
            return
        self.recorder.record_shadow(int(np.argmax(s2)) == int(np.argmax(scores)), delta, shadow.info.digest)

    def _shadow_task(self, shadow: Model, req: Request, ys: list[np.ndarray], served: Model, took: float) -> None:
        """A non-classifier's shadow run: both answers (:data:`protocol.taskstats.PARAMS`)
        compared by :func:`protocol.taskstats.agreement` (IoU-matched F1, pixel agreement...)."""
        try:
            t1 = time.perf_counter()
            if req.image is not None:
                raw = shadow.image_to_raw(req.image)
            elif req.tensor is not None:
                raw = shadow.binary_to_raw(req.tensor)[1]
            else:
                raw = shadow.quantize(shadow.tensor_to_input(req.inputs))
            ys2 = shadow.invoke_all(raw)
            delta = (time.perf_counter() - t1) - took
            assert served.signature is not None and shadow.signature is not None
            a = answers.build(served.signature, ys, served.label_map, taskstats.PARAMS, None)
            b = answers.build(shadow.signature, ys2, shadow.label_map, taskstats.PARAMS, None)
            maps = None
            if a["task"] == "segmentation":
                maps = (_class_map(served.signature, ys), _class_map(shadow.signature, ys2))
            agree = taskstats.agreement(a, b, maps)
        except Exception:  # a candidate that breaks, or answers another shape: an error, not a crash
            self.recorder.record_shadow(None, 0.0, shadow.info.digest)
            return
        self.recorder.record_shadow(agree, delta, shadow.info.digest)


def _request_bytes(req: Request) -> int:
    """What an escalation uploads, for the byte budget (the body as the cloud client sends it, roughly)."""
    if req.image is not None:
        return len(req.image)
    if req.tensor is not None:
        return int(req.tensor.nbytes)
    return len(json.dumps(req.inputs)) if req.inputs is not None else 0


def _class_map(signature: Signature, ys: list[np.ndarray]) -> np.ndarray:
    """A segmenter's class id per pixel from its outputs (its mask, or its logits' argmax)."""
    real = {s.role: answers.dequantize(s, v) for s, v in reversed(answers.answer_outputs(signature, ys))}
    return np.asarray(answer_tasks.class_map(real["mask"] if "mask" in real else real["logits"]))
