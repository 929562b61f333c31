"""Serving apps on the device: routing (Edge TPU -> CPU -> cloud) and request bodies.

The HTTP server is :mod:`agent.localapi`. ``POST /v1/predict`` (alias ``/predict``, the seed's
route) takes a multipart field ``file`` = image, JSON ``{"inputs": nested floats}``, a raw image
body (Content-Type image/*) or a binary tensor (:func:`parse_request`).

Answer (built by :mod:`protocol.answers`, the cloud's builder too): one form per task, all with
``task``: a classifier's (or a bundle without a signature) ``{"task": "classification",
"predictions": [scores], "top": [{"index","label","score"}]}``; ``detection``, ``segmentation``,
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

import dataclasses
import json
import logging
import random
import re
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

from protocol import answers
from protocol.errors import BadParameter

from .errors import InputError, MalformedBody, ModelError, Unavailable
from .image import size_of
from .install import probation_verdict
from .runtime import Model
from .sessions import Session, Sessions, carry, check_id, initial
from .telemetry import Recorder

log = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    image: bytes | None = None
    inputs: Any = None  # JSON nested list of floats
    filename: str = "image"
    tensor: np.ndarray | None = None  # binary tensor (X-Tensor-Shape / X-Tensor-Dtype)
    query: dict[str, str] = field(default_factory=dict)  # the answer's parameters as sent (to the cloud too)
    params: answers.Params = answers.Params()
    session: str | None = None  # X-Session-Id
    reset: bool = False  # X-Session-Reset


@dataclass(frozen=True)
class Answer:
    """One prediction answer: a classifier's scores (None for any other task) plus the other
    fields of the JSON document.

    ``after`` is the request's bookkeeping (telemetry, probation, shadow sampling): the HTTP
    handler runs it with :meth:`settle` once the answer is sent, so the app does not wait for
    it; :meth:`Serving.answer` runs it before returning."""

    scores: np.ndarray | None
    fields: dict[str, Any]  # top | task+tensors, served_by, bundle, latency_ms[, cloud_model]
    after: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def settle(self) -> None:
        if self.after is not None:
            self.after()

    def _document(self) -> dict[str, Any]:
        return self.fields if self.scores is None else {"predictions": self.scores, **self.fields}

    def doc(self) -> dict[str, Any]:
        return _plain_tree(self._document())  # type: ignore[no-any-return]

    def body(self) -> bytes:
        """The JSON answer in one orjson call, scores straight from the float32 array: each
        score is the shortest text that reads back to the same float32 (``0.5``, ``0.1``; the
        standard library writes float32 values widened, ``0.10000000149011612``); NaN is null.
        Measured on MobileNetV2-224 (1001 scores), it takes ~0.2-0.3 ms off each answer."""
        return orjson.dumps(self._document(), default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


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
    ) -> None:
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
            self.recorder.set_bundle(
                model.info.digest, model.baseline, model.preprocess, (model.info.name, model.info.version)
            )
        else:
            self.recorder.set_bundle(None, None, {})
        return old

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
        if model is None:
            errors.append("no local model installed")
        else:
            try:
                if self._use_local():
                    local = self._local(req, model, t0, errors)
                    if local is not None:
                        return local
                else:
                    errors.append("local latency over budget")
            finally:
                model.release()  # the answer and its bookkeeping need no interpreter
        if self.cloud is None:
            raise Unavailable("; ".join(errors + ["no cloud fallback configured"]))
        if req.session is not None:
            raise Unavailable(
                "; ".join(errors + ["a session's request is not sent to the cloud fallback: it keeps no state"])
            )
        try:
            doc = self.cloud.predict(req, model.info.name if model is not None else self.last_name)
            out = self._cloud_answer(doc, model, t0)
        except Unavailable as exc:
            self.recorder.record("cloud", 0.0, False)
            raise Unavailable("; ".join(errors + [str(exc)])) from None
        self.recorder.record("cloud", time.perf_counter() - t0, True)
        return out

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
        about: dict[str, Any] = {}
        if session is not None:
            step = self.sessions.checkin(session, self._next_state(model, ys))
            about = {"state": "session", "session": {"id": session.id, "step": step}}
        elif state is not None:
            about = {"state": state}
        scores = model.dequantize(ys[0]).reshape(-1) if classifier else None
        seconds = time.perf_counter() - t0

        def after() -> None:
            self._observe_local(took)
            # drift: input features always; output features (top-1 class, confidence) are a
            # classifier's only
            self.recorder.record(model.served_by, seconds, True, x, scores, affine)
            self._probation_tick(model, ok=True)
            if scores is not None and session is None:
                self._offer_shadow(req, scores, took)

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
            out.fields["raw"] = answers.raw(model.signature, ys[:1] if len(ys) == 1 else ys)
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
        fields = {"task": doc["task"], "top": doc["top"], **self._about(model, path, t0)}
        return Answer(scores, fields, after)

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

    def _offer_shadow(self, req: Request, scores: np.ndarray, took: float) -> None:
        """Sampled requests also go to the shadow candidate, off the request path; one at a
        time (a request arriving while the candidate is busy is simply not sampled)."""
        if self.shadow is None or random.random() >= self.shadow_sample:
            return
        if not self._shadow_busy.acquire(blocking=False):
            return
        with self._lock:  # held like the active model: replacing the candidate waits for this run
            # top-1 agreement compares classifiers only (a per-task shadow comparison: not yet)
            shadow = self.shadow if self.shadow is not None and self.shadow.form == answers.CLASSIFICATION else None
            if shadow is not None:
                shadow.hold()
        if shadow is None:
            self._shadow_busy.release()
            return
        self._shadow_pool.submit(self._run_shadow, shadow, req, scores, took)

    def _run_shadow(self, shadow: Model, req: Request, scores: np.ndarray, took: float) -> None:
        try:
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
            self.recorder.record_shadow(None, 0.0)
            return
        if s2.shape != scores.shape:
            self.recorder.record_shadow(None, 0.0)
            return
        self.recorder.record_shadow(int(np.argmax(s2)) == int(np.argmax(scores)), delta)


def parse_request(
    content_type: str,
    body: bytes,
    shape: str | None = None,
    dtype: str | None = None,
    *,
    query: str = "",
    session: str | None = None,
    reset: str | None = None,
) -> Request:
    """Turn an HTTP request into a :class:`Request`; raise InputError naming the problem: the
    body (:func:`parse_body`), the query string's answer parameters (:mod:`protocol.answers.params`)
    and the ``X-Session-Id`` / ``X-Session-Reset`` headers (:mod:`agent.sessions`)."""
    req = parse_body(content_type, body, shape, dtype)
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    fields = dict(reversed(pairs))  # the first value of a repeated parameter
    try:
        params = answers.parse_params(fields)
    except BadParameter as exc:
        raise InputError(str(exc)) from None
    if reset is not None and reset.strip().lower() not in ("true", "1", "false", "0"):
        raise InputError(f"X-Session-Reset {reset!r:.40} must be true or false")
    again = reset is not None and reset.strip().lower() in ("true", "1")
    sid = check_id(session) if session is not None else None
    return dataclasses.replace(req, query=fields, params=params, session=sid, reset=again)


def parse_body(content_type: str, body: bytes, shape: str | None = None, dtype: str | None = None) -> Request:
    """Turn an HTTP body into a :class:`Request`; raise InputError naming the problem.

    ``application/octet-stream`` with an ``X-Tensor-Shape`` header (and ``X-Tensor-Dtype``,
    default float32) is a binary tensor, the same convention as edgefleet-cloud's tensor API;
    without the header it is an image."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "application/json":
        doc = _strict_json(body)
        if not isinstance(doc, dict) or "inputs" not in doc:
            raise InputError("JSON body must be an object with an 'inputs' field")
        depth, inputs = 0, doc["inputs"]
        while isinstance(inputs, list) and inputs:  # a tensor's depth is its first element's
            depth, inputs = depth + 1, inputs[0]
            if depth > MAX_INPUT_DEPTH:
                raise MalformedBody(
                    f"'inputs' is nested deeper than {MAX_INPUT_DEPTH} levels; a tensor has one level per dimension"
                )
        return Request(inputs=doc["inputs"])
    if ctype == "multipart/form-data":
        return _multipart_file(content_type, body)
    if ctype == "application/octet-stream" and shape is not None:
        return Request(tensor=_binary_tensor(body, shape, dtype))
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        if not body:
            raise InputError("empty image body")
        return Request(image=body)
    raise InputError(f"unsupported Content-Type {content_type!r}; send multipart/form-data (file) or application/json")


MAX_INPUT_DEPTH = 16  # list levels in 'inputs' (numpy allows 64 dimensions, models use 2-5)
_NON_FINITE = (b"-Infinity", b"Infinity", b"NaN")


def _strict_json(body: bytes) -> Any:
    """RFC 8259 JSON (orjson): NaN, Infinity, numbers beyond float64 (``1e999``) and nesting
    past 1024 levels are :class:`MalformedBody` naming the problem and where, never a crash."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        pos = exc.pos
        word = next((w for w in _NON_FINITE if body.startswith(w, pos) or body.startswith(w, max(0, pos - 1))), None)
        why = (
            f"{word.decode()} is not a JSON number; send finite numbers"
            if word
            else "nested deeper than 1024 levels"
            if exc.msg == "depth limit exceeded"
            else exc.msg
        )
        raise MalformedBody(f"body is not valid JSON ({why}; at char {pos}: {body[pos : pos + 24]!r})") from None


_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int8": np.int8}


def _binary_tensor(body: bytes, shape_text: str, dtype_text: str | None) -> np.ndarray:
    try:
        shape = tuple(int(d) for d in shape_text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise InputError(f"X-Tensor-Shape {shape_text!r:.60} is not comma-separated integers") from None
    name = (dtype_text or "float32").strip().lower()
    if name not in _DTYPES:
        raise InputError(f"X-Tensor-Dtype {name!r:.30} must be one of {sorted(_DTYPES)}")
    dtype = np.dtype(_DTYPES[name])
    if not shape or any(d < 1 for d in shape) or int(np.prod(shape)) * dtype.itemsize != len(body):
        raise InputError(
            f"body has {len(body)} bytes; shape {list(shape)} of {name} needs "
            f"{int(np.prod(shape)) * dtype.itemsize if shape else 0}"
        )
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
    if dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError("tensor holds NaN or infinite values")
    return arr


_DISPOSITION_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*;\s*name="?([^";\r\n]+)"?')
_FILENAME = re.compile(rb'(?i)filename="([^"\r\n]*)"')


def _multipart_file(content_type: str, body: bytes) -> Request:
    """The ``file`` field of a multipart/form-data body (a direct split: the email parser
    costs more than a small model's inference)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise InputError("multipart Content-Type has no boundary")
    delim = b"--" + m.group(1).strip().encode("latin-1")
    parts = body.split(delim)
    if len(parts) < 3:
        raise InputError("multipart body could not be parsed (check the boundary)")
    for part in parts[1:-1]:
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        name = _DISPOSITION_NAME.search(head)
        if name and name.group(1) == b"file":
            data = data[:-2] if data.endswith(b"\r\n") else data
            if not data:
                raise InputError("multipart field 'file' is empty")
            fn = _FILENAME.search(head)
            return Request(image=data, filename=fn.group(1).decode("utf-8", "replace") if fn else "image")
    raise InputError("multipart body has no field named 'file'")
