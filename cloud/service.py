"""What the routes need, one per app: config, catalog, folder, metrics; the folder watch and
hub pull tasks; API key checks and per-key fairness. No HTTP here: :mod:`cloud.api` and
:mod:`cloud.guard` answer for it."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging

from protocol.signing import Root

from .admission import ServiceRate, Verdict, decide
from .config import ENV_DEFAULT_MODEL, ApiKey, CloudConfig
from .errors import AuthError, BadInput, NotFound, Unavailable
from .folder import Folder
from .load import SharedLoad
from .metrics import Metrics
from .models import Catalog, LoadOptions, ServedModel

log = logging.getLogger(__name__)

HUB_STARTUP_S = 10.0
SETTING = f"--default-model NAME / {ENV_DEFAULT_MODEL}"


class Service:
    """What the routes need: config, catalog, folder, metrics. One per app."""

    def __init__(
        self,
        config: CloudConfig,
        root: Root,
        metrics: Metrics | None = None,
        shared: SharedLoad | None = None,
        slot: int = 0,
    ) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.catalog = Catalog(self.metrics)
        self.folder = Folder(
            config.bundles, root, self.catalog, LoadOptions(config.session, config.batch), self.metrics
        )
        self.ready = False
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: dict[str, int] = {}  # per API key name; touched only on the event loop
        # prediction requests in flight and the busy completion rate, for admission (event loop only)
        self.load = ServiceRate(config.admission.floor)
        # with --processes N: every server process's requests in flight, for machine-wide admission
        self.shared = shared
        self.slot = slot
        if shared is not None:
            shared.reset(slot)  # a replacement starts with nothing in flight
        self.metrics.inflight.set_function(lambda: float(self.load.inflight))
        self.metrics.service_rate.set_function(lambda: self.load.rate or 0.0)

    async def start(self) -> None:
        await self.folder.sync()
        if self.config.poll_s > 0:
            self._tasks.append(asyncio.create_task(self.folder.watch(self.config.poll_s)))
        if self.config.hub is not None:
            from .hub import HubPuller

            puller = HubPuller(self.config.hub, self.config.bundles, self.folder)
            try:  # one pull before declaring ready, bounded so a dead hub cannot hold startup
                await asyncio.wait_for(puller.poll(), HUB_STARTUP_S)
            except TimeoutError:
                log.warning(
                    "hub %s: no answer within %ss at startup; serving the folder", self.config.hub.url, HUB_STARTUP_S
                )
            self._tasks.append(asyncio.create_task(puller.run()))
        self.ready = True
        # everything loaded so far (FastAPI, pydantic, onnxruntime bindings, the models) lives
        # as long as the process: keep it out of the cyclic collector's full passes, which
        # otherwise walk it again and again under load (measured: ~0.8 ms CPU per request on
        # MobileNetV2 at 32 clients, docs/cloud.md)
        gc.freeze()

    async def stop(self) -> None:
        self.ready = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await asyncio.to_thread(self.catalog.close)

    def model_for_predict(self, name: str | None) -> ServedModel:
        """The model the seed's plain ``POST /predict`` serves: ``?model=``, else the configured
        default, else the only model loaded. With several loaded and no default it refuses,
        naming the models and the setting, rather than pick one the caller did not mean."""
        if name:
            return self.catalog.get(name)
        names = self.catalog.names()
        if not names:
            raise Unavailable("no model is loaded yet")
        default = self.config.default_model
        if default:
            try:
                return self.catalog.get(default)
            except NotFound as exc:  # the catalog's message says why (e.g. a bundle with no twin)
                raise NotFound(
                    f"the default model {default!r} ({SETTING}) is not served: {exc}; "
                    f"pass ?model=NAME with one of: {', '.join(names)}"
                ) from None
        if len(names) > 1:
            raise BadInput(
                "model",
                f"several models are served ({', '.join(names)}) and no default is set: pass ?model=NAME, "
                f"or set {SETTING} to one of them",
            )
        return self.catalog.default(names[0])

    def enter_prediction(self, now: float) -> Verdict:
        """Admission (:func:`cloud.admission.decide`) of a prediction request, counted in flight
        if admitted. With several processes the check and the count are one step under the
        shared lock, so two processes cannot both take the last place."""
        load, policy = self.load, self.config.admission
        shared = self.shared
        if shared is None:
            verdict = decide(load.inflight, load.rate, policy)
            if verdict.admitted:
                load.enter(now)
            return verdict
        with shared.locked():
            verdict = decide(load.inflight, shared.rate(self.slot, load.rate), policy, shared.others(self.slot))
            if verdict.admitted:
                load.enter(now)
                shared.publish(self.slot, load.inflight, load.rate)
        return verdict

    def leave_prediction(self, now: float) -> None:
        self.load.leave(now)
        if self.shared is not None:  # a falling count needs no lock (cloud/load.py)
            self.shared.publish(self.slot, self.load.inflight, self.load.rate)

    def admit(self, key: ApiKey) -> bool:
        """Per-key fairness: at most ``limits.per_key_inflight`` concurrent requests per key."""
        limit = self.config.limits.per_key_inflight
        n = self._inflight.get(key.name, 0)
        if limit and n >= limit:
            return False
        self._inflight[key.name] = n + 1
        return True

    def release(self, key: ApiKey) -> None:
        self._inflight[key.name] -= 1

    def authenticate(self, presented: str | None) -> ApiKey | None:
        if not self.config.auth_required:
            return None
        if not presented:
            raise AuthError("missing API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
        for key in self.config.api_keys:
            if hmac.compare_digest(key.secret.encode(), presented.encode()):
                self.metrics.requests_by_key.labels(str(key.slot)).inc()
                return key
        raise AuthError("API key not recognised")
