"""HTTP layer: routes and the error -> status mapping. API keys and body limits are checked
before the routes by :class:`cloud.guard.Guard`; what the routes serve from is
:class:`cloud.service.Service`. Nothing else decides here.

Routes (docs/cloud.md has the full contract):

* ``POST /predict`` - the seed's contract: multipart ``file`` image -> ``{"predictions": [[...]],
  "model": {"name", "version", "digest"}, "top": [{"index", "label", "score"}...]}``.
  Serves ``?model=NAME`` or the default model (``--default-model``, or the only one loaded).
  A model whose signature is not a classifier's answers its task's form on every predict route
  instead (``detection``, ``segmentation``, ``keypoints``, ``embedding``, else ``tensors``; with
  ``task`` and ``model``): its outputs are not class scores, so they are never put in
  ``predictions`` or ranked in ``top`` (:mod:`protocol.answers`, the agent's builder too). Query
  parameters ``top_k``, ``score_threshold``, ``max_detections``, ``mask=png``, ``raw=true`` shape
  the answer as on the agent; one of another task, unknown or out of range is a 400 naming it.
  ``X-Session-Id`` is a 400: the cloud keeps no state (a stateful model's answer says
  ``"state": "reset"``).
* ``POST /v1/models/{name}/predict`` and ``POST /v1/models/{name}/versions/{version}/predict`` -
  ``application/json`` ``{"inputs": nested list, batch first}`` or ``application/octet-stream``
  raw little-endian bytes with ``X-Tensor-Shape: 1,8,8,1`` and optional ``X-Tensor-Dtype``.
  JSON answers ``{"model", "outputs": {name: nested list}}``; with ``Accept:
  application/octet-stream`` the first output comes back raw with the same two headers.
* ``POST /v1/models/{name}[/versions/{version}]/predict/image`` - an image to a given model.
* ``GET /v1/models``, ``GET /healthz`` (alive), ``GET /readyz`` (a model is loaded),
  ``GET /metrics`` (Prometheus). Health, readiness, metrics and the OpenAPI docs need no key.

Errors are ``{"detail": "<one line naming the thing and the problem>", "code": "<tag>"}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from protocol import answers
from protocol.errors import BadParameter
from protocol.signing import Root

from .config import CloudConfig
from .errors import AuthError, BadInput, CloudError, InferenceFailed, NotFound, Overloaded, TooLarge, Unavailable
from .guard import Guard, error_response
from .load import SharedLoad
from .metrics import Metrics
from .models import ServedModel, describe
from .service import Service
from .tensors import image_size, image_tensor, tensor_from_bytes, tensor_from_json, tensor_to_bytes

log = logging.getLogger(__name__)

TOP_K = 5
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "an image (JPEG, PNG, BMP, GIF, WebP, TIFF)",
                        }
                    },
                }
            }
        },
    }
}
TENSOR_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {"inputs": {"type": "array", "description": "nested list, batch dimension first"}},
                }
            },
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "C-order little-endian tensor; headers X-Tensor-Shape (required), X-Tensor-Dtype",
                }
            },
        },
    }
}


def status_of(exc: CloudError) -> int:
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, BadInput):
        return 400
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, Overloaded):
        return 429 if exc.queue_full else 503
    if isinstance(exc, Unavailable):
        return 503
    if isinstance(exc, InferenceFailed):
        return 500
    return 500


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):  # not C-contiguous, or a dtype orjson does not write
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def json_bytes(content: Any) -> bytes:
    """JSON written by orjson, numpy arrays included (one C call instead of ``tolist()`` plus
    ``json.dumps``: 1000 float logits cost ~0.4 ms the standard way, ~0.02 ms this way).
    Floats are written as the shortest text that reads back to the same value (float32 scores
    as float32, e.g. ``0.1`` rather than ``0.10000000149011612``); NaN and infinities as null."""
    return orjson.dumps(content, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def _params(model: ServedModel, request: Request) -> answers.Params:
    """The answer's parameters from the query (``model`` is the route's), checked against the
    model before it runs; a session is refused: the cloud keeps no state."""
    if "x-session-id" in request.headers:
        raise BadInput(
            "X-Session-Id header",
            "the cloud fallback keeps no state between requests; send the request without it "
            "(a stateful model is answered from its initial state)",
        )
    try:
        params = answers.parse_params(dict(reversed(request.query_params.multi_items())), ignore=("model",))
        answers.check_params(model.spec.signature, params)
    except BadParameter as exc:
        raise BadInput(f"parameter {exc.name}", f"{exc.value!r:.60}: {exc.problem}") from None
    return params


def _state(model: ServedModel) -> dict[str, Any]:
    sig = model.spec.signature
    return {"state": "reset"} if sig is not None and sig.stateful else {}


def _task_result(model: ServedModel, outputs: list[np.ndarray], params: answers.Params, size: Any) -> dict[str, Any]:
    spec = model.spec
    assert spec.signature is not None
    try:
        doc = answers.build(spec.signature, outputs, spec.label_map, params, size)
    except BadParameter as exc:
        raise BadInput(f"parameter {exc.name}", f"{exc.value!r:.60}: {exc.problem}") from None
    return {**doc, **_state(model), "model": spec.ref}


def _result(model: ServedModel, outputs: list[np.ndarray], params: answers.Params) -> dict[str, Any]:
    """The tensor routes' answer: a classifier's outputs by name as they are (the tensor API's
    contract), any other model's in its task's form (its "image" is the input tensor)."""
    spec = model.spec
    if spec.form == answers.CLASSIFICATION or spec.signature is None:
        return {"model": spec.ref, "outputs": dict(zip(spec.outputs, outputs, strict=True))}
    return _task_result(model, outputs, params, None)


def _image_result(model: ServedModel, outputs: list[np.ndarray], params: answers.Params, data: bytes) -> dict[str, Any]:
    """The image routes' answer: the seed's ``predictions`` (``[N, K]``, as the agent answers
    them)/``top`` for a classifier (and ``task``), its task's form for any other model, in pixels
    of the image sent."""
    spec = model.spec
    if spec.form == answers.CLASSIFICATION or spec.signature is None:
        doc = answers.classification(outputs[0], spec.class_names, k=params.top_k, given="top_k" in params.given)
        out = {"predictions": doc["predictions"], "model": spec.ref, "task": doc["task"], "top": doc["top"]}
        if params.raw and spec.signature is not None:
            out["raw"] = answers.raw(spec.signature, outputs)
        return {**out, **_state(model)}
    return _task_result(model, outputs, params, image_size(data))


def create_app(
    config: CloudConfig, root: Root, metrics: Metrics | None = None, shared: SharedLoad | None = None, slot: int = 0
) -> FastAPI:
    """The app of one server process; ``shared``/``slot``: this process's place in the load of
    all the processes of one ``serve --processes N`` (:mod:`cloud.load`), None with one process."""
    service = Service(config, root, metrics, shared, slot)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        log.info("ready: %d model version(s) from %s", len(service.catalog), config.bundles)
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="edgefleet cloud fallback",
        version="1",
        lifespan=lifespan,
        description="Serves the ONNX twins of verified edgefleet bundles.",
    )
    app.state.service = service
    app.add_middleware(Guard, limit=config.limits.max_body_bytes, metrics=service.metrics, service=service)

    @app.exception_handler(CloudError)
    async def on_cloud_error(request: Request, exc: CloudError) -> JSONResponse:
        status = status_of(exc)
        service.metrics.errors.labels(exc.code).inc()
        headers: dict[str, str] = {}
        if isinstance(exc, Overloaded):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
            service.metrics.shed.labels(exc.reason).inc()
        if isinstance(exc, AuthError):
            headers["WWW-Authenticate"] = "Bearer"
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return error_response(status, exc.code, str(exc), headers)

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> JSONResponse:
        # a defect, not bad input: keep the one-line JSON contract (Starlette re-raises the
        # exception afterwards, so uvicorn logs the traceback once)
        log.error("%s %s failed: %r", request.method, request.url.path, exc)
        service.metrics.errors.labels("internal").inc()
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the server log")

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        service.metrics.errors.labels(BadInput.code).inc()
        parts = []
        for err in exc.errors()[:3]:
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        detail = "bad request: " + "; ".join(parts)
        return error_response(400, BadInput.code, detail)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        service.metrics.errors.labels(f"http_{exc.status_code}").inc()
        return error_response(
            exc.status_code, f"http_{exc.status_code}", f"{request.method} {request.url.path}: {exc.detail}"
        )

    async def image_predict(served: ServedModel, request: Request) -> Response:
        spec = served.spec
        if spec.image is None:
            raise BadInput(
                "model", f"{spec.name} {spec.version} takes tensors, not images; use /v1/models/{spec.name}/predict"
            )
        async with request.form() as form:  # closes the spooled upload files on exit
            upload = form.get("file")
            if not isinstance(upload, StarletteUploadFile):
                raise BadInput("request", "send multipart/form-data with the image in field 'file'")
            data = await upload.read()
        if not data:
            raise BadInput("file", "is empty")
        params = _params(served, request)
        image, dtype, max_pixels = spec.image, spec.input.dtype, config.limits.max_image_pixels

        def answer(outputs: list[np.ndarray]) -> bytes:  # in the worker thread, after the run
            return json_bytes(_image_result(served, outputs, params, data))

        body = await served.predict_lazy(
            lambda: image_tensor(data, image, dtype, max_pixels), (1, *image.sample_shape), answer
        )
        return Response(body, media_type="application/json")

    @app.post("/predict", summary="Seed-compatible image prediction", openapi_extra=IMAGE_BODY)
    async def predict(request: Request, model: str | None = None) -> Response:
        return await image_predict(service.model_for_predict(model), request)

    async def tensor_predict(served: ServedModel, request: Request) -> Response:
        spec = served.spec
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await request.body()
        params = _params(served, request)
        max_rows = config.limits.max_batch_rows
        if ctype == "application/json":
            x = tensor_from_json(body, spec.input, max_rows)
        elif ctype == "application/octet-stream":
            x = tensor_from_bytes(
                body, request.headers.get("x-tensor-shape"), request.headers.get("x-tensor-dtype"), spec.input, max_rows
            )
        else:
            service.metrics.errors.labels("unsupported_media_type").inc()
            return error_response(
                415,
                "unsupported_media_type",
                f"bad Content-Type {ctype or '(none)'!r}: send application/json or application/octet-stream",
            )
        if "application/octet-stream" in request.headers.get("accept", ""):
            outputs = await served.predict(x)
            data, shape, dtype = tensor_to_bytes(outputs[0])
            return Response(
                data,
                media_type="application/octet-stream",
                headers={
                    "X-Tensor-Shape": shape,
                    "X-Tensor-Dtype": dtype,
                    "X-Model-Name": spec.name,
                    "X-Model-Version": spec.version,
                    "X-Model-Digest": spec.digest,
                },
            )
        body = await served.predict(x, lambda outputs: json_bytes(_result(served, outputs, params)))
        return Response(body, media_type="application/json")

    @app.post("/v1/models/{name}/predict", summary="Tensor prediction, default version", openapi_extra=TENSOR_BODY)
    async def predict_tensor(name: str, request: Request) -> Response:
        return await tensor_predict(service.catalog.get(name), request)

    @app.post(
        "/v1/models/{name}/versions/{version}/predict",
        summary="Tensor prediction, one version",
        openapi_extra=TENSOR_BODY,
    )
    async def predict_tensor_version(name: str, version: str, request: Request) -> Response:
        return await tensor_predict(service.catalog.get(name, version), request)

    @app.post("/v1/models/{name}/predict/image", summary="Image prediction, default version", openapi_extra=IMAGE_BODY)
    async def predict_image(name: str, request: Request) -> Response:
        return await image_predict(service.catalog.get(name), request)

    @app.post(
        "/v1/models/{name}/versions/{version}/predict/image",
        summary="Image prediction on one version",
        openapi_extra=IMAGE_BODY,
    )
    async def predict_image_version(name: str, version: str, request: Request) -> Response:
        return await image_predict(service.catalog.get(name, version), request)

    @app.get("/v1/models", summary="Served models and versions")
    async def list_models() -> dict[str, Any]:
        cat = service.catalog
        defaults = {n: cat.default(n).spec.digest for n in cat.names()}
        return {
            "models": [describe(m, defaults[m.spec.name] == m.spec.digest) for m in cat.models()],
            "refused": [
                {"source": r.source, "reason": r.reason, "detail": r.detail} for r in service.folder.refusals.values()
            ],
        }

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: at least one verified model is loaded")
    async def readyz() -> JSONResponse:
        n = len(service.catalog)
        if service.ready and n:
            return JSONResponse({"status": "ready", "models": n})
        return error_response(
            503, Unavailable.code, "not ready: " + ("no verified model loaded" if service.ready else "starting")
        )

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_route() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
