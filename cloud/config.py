"""The one typed configuration of the cloud process. Only this module reads the environment.

Built once in :func:`cloud.__main__.main` from the command line plus these variables:

* ``EDGEFLEET_CLOUD_API_KEYS`` - comma-separated API keys, each ``name:secret`` or ``secret``
  (added to the ``--api-key`` options; keeps secrets out of ``ps``);
* ``EDGEFLEET_HUB_TOKEN`` - bearer token for ``--hub`` when ``--token`` is not given;
* ``EDGEFLEET_CLOUD_DEFAULT_MODEL`` - the model the seed's plain ``POST /predict`` serves when
  ``--default-model`` is not given (the deploy files set it; empty means unset).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

ENV_API_KEYS = "EDGEFLEET_CLOUD_API_KEYS"
ENV_HUB_TOKEN = "EDGEFLEET_HUB_TOKEN"
ENV_DEFAULT_MODEL = "EDGEFLEET_CLOUD_DEFAULT_MODEL"
MIN_SECRET_CHARS = 16
# default --max-inflight per worker batch: admitted requests then wait about 1.5x what they do at
# 32 clients on 2 workers x batch 4, and 32 clients are never shed (docs/cloud.md, "Load shedding")
INFLIGHT_PER_BATCH = 6


@dataclass(frozen=True)
class ApiKey:
    """A client key. ``name`` appears in logs and in answers to the key's own holder; metrics
    (``/metrics`` is open) count it by ``slot``, its 1-based position in the configuration, so a
    scrape reveals neither the secret nor which apps hold keys."""

    name: str
    secret: str = field(repr=False)
    slot: int = 0


@dataclass(frozen=True)
class BatchPolicy:
    """Dynamic micro-batching: gather up to ``max_batch`` samples, waiting at most ``max_wait_s``
    after the first one; at most ``max_queue`` samples wait per model (more gets 429) and a
    sample that waited ``queue_timeout_s`` is answered 503 instead of being run late."""

    max_batch: int = 4
    max_wait_s: float = 0.0
    max_queue: int = 256
    queue_timeout_s: float = 5.0
    workers: int = 2
    solo_inline_s: float = 0.002  # a lone request this short runs on the event loop (cloud/batching.py)


@dataclass(frozen=True)
class Admission:
    """Load shedding at the front door (:mod:`cloud.admission`): beyond ``floor`` requests in
    flight in a process (always admitted: enough to fill its workers' batches), a prediction
    request is refused with 503 and Retry-After when ``max_inflight`` are in flight already
    across every server process, or when the latency it can expect - requests in flight over
    the rate the service completes them when busy (Little's law) - is over
    ``latency_budget_s``. 0 disables either bound."""

    floor: int = 8
    max_inflight: int = 48
    latency_budget_s: float = 0.0  # off by default: see build()


@dataclass(frozen=True)
class SessionTuning:
    """onnxruntime session options (see docs/cloud.md for why these defaults)."""

    intra_threads: int = 1  # per run; parallelism comes from BatchPolicy.workers
    # a request that runs alone (queue empty, other workers idle) runs on a second session with
    # this many intra-op threads (0: one per core; 1: no second session): docs/cloud.md
    solo_threads: int = 0
    inter_threads: int = 1  # graphs here are sequential; parallel executor only adds overhead
    spinning: bool = False  # spin-waiting workers steal the CPU the HTTP loop needs
    optimization: str = "all"  # disable | basic | extended | all


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 16_000_000  # checked from the header, before decoding
    max_batch_rows: int = 256  # rows in one tensor request
    per_key_inflight: int = 0  # concurrent requests per API key (0: unlimited)


@dataclass(frozen=True)
class HubSource:
    url: str
    token: str = field(repr=False)
    poll_s: float = 30.0


@dataclass(frozen=True)
class CloudConfig:
    bundles: Path
    root: Path
    host: str = "127.0.0.1"
    port: int = 8100
    api_keys: tuple[ApiKey, ...] = ()
    default_model: str | None = None
    poll_s: float = 2.0  # 0 disables watching the bundle folder
    batch: BatchPolicy = BatchPolicy()
    session: SessionTuning = SessionTuning()
    limits: Limits = Limits()
    admission: Admission = Admission()
    hub: HubSource | None = None
    access_log: bool = False
    log_level: str = "INFO"
    processes: int = 1  # server processes sharing the port (each loads every model)

    @property
    def auth_required(self) -> bool:
        return bool(self.api_keys)


def parse_api_key(text: str, index: int) -> ApiKey:
    """``name:secret`` or a bare ``secret`` (named ``key{index}``)."""
    name, sep, secret = text.strip().partition(":")
    if not sep:
        name, secret = f"key{index}", name
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"API key #{index}: name {name!r} must be letters, digits, - or _")
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"API key {name!r}: secret is {len(secret)} chars, need >= {MIN_SECRET_CHARS}")
    return ApiKey(name, secret, index)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _positive(value: float, what: str) -> None:
    if value <= 0:
        raise ConfigError(f"{what} must be > 0, got {value}")


def build(
    *,
    bundles: str,
    root: str,
    host: str = "127.0.0.1",
    port: int = 8100,
    api_keys: list[str] | None = None,
    default_model: str | None = None,
    poll_s: float = 2.0,
    max_batch: int = 4,
    max_wait_ms: float = 0.0,
    max_queue: int = 256,
    queue_timeout_s: float = 5.0,
    workers: int = 0,
    intra_threads: int = 1,
    solo_threads: int = 0,
    solo_inline_ms: float = 2.0,
    inter_threads: int = 1,
    spinning: bool = False,
    latency_budget_ms: float = 0.0,
    max_inflight: int = 0,
    optimization: str = "all",
    max_body_bytes: int = 8 * 1024 * 1024,
    hub: str | None = None,
    token: str | None = None,
    hub_poll_s: float = 30.0,
    per_key_inflight: int = 0,
    insecure_no_auth: bool = False,
    access_log: bool = False,
    log_level: str = "INFO",
    processes: int = 1,
    environ: Mapping[str, str] | None = None,
) -> CloudConfig:
    """Validate everything once; raise :class:`ConfigError` naming the bad option and value."""
    env = os.environ if environ is None else environ
    bundle_dir = Path(bundles)
    if not bundle_dir.is_dir():
        raise ConfigError(f"--bundles {bundles!r} is not a directory")
    root_path = Path(root)
    if not root_path.is_file():
        raise ConfigError(f"--root {root!r} is not a file")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    raw_keys = list(api_keys or [])
    raw_keys += [k for k in env.get(ENV_API_KEYS, "").split(",") if k.strip()]
    keys = tuple(parse_api_key(k, i) for i, k in enumerate(raw_keys, 1))
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError(f"API key names must be unique, got {names}")
    if not keys and not _is_loopback(host) and not insecure_no_auth:
        raise ConfigError(
            f"--host {host} is reachable from other machines: give --api-key "
            f"(or {ENV_API_KEYS}), or --insecure-no-auth to serve without keys"
        )
    if max_batch < 1:
        raise ConfigError(f"--max-batch must be >= 1, got {max_batch}")
    if max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be >= 0, got {max_wait_ms}")
    if max_queue < max_batch:
        raise ConfigError(f"--max-queue ({max_queue}) must be >= --max-batch ({max_batch})")
    _positive(queue_timeout_s, "--queue-timeout")
    if workers < 0:
        raise ConfigError(f"--workers must be >= 0 (0: one per CPU), got {workers}")
    if processes < 0:
        raise ConfigError(f"--processes must be >= 0 (0: one per CPU), got {processes}")
    n_processes = processes or max(1, os.cpu_count() or 1)
    # workers are per process: by default the CPUs are shared out among the processes
    n_workers = workers or max(1, (os.cpu_count() or 1) // n_processes)
    # --max-inflight is machine-wide (every process counted, cloud/load.py); each process may
    # always fill its own workers' batches, so the bound must leave room for all of them
    if max_inflight and max_inflight < n_processes * n_workers * max_batch:
        raise ConfigError(
            f"--max-inflight ({max_inflight}) must be >= processes x workers x --max-batch "
            f"({n_processes} x {n_workers} x {max_batch}): fewer would leave a worker's batch empty"
        )
    if intra_threads < 0 or inter_threads < 0 or solo_threads < 0:
        raise ConfigError(
            f"thread counts must be >= 0, got intra {intra_threads}, inter {inter_threads}, solo {solo_threads}"
        )
    if solo_inline_ms < 0:
        raise ConfigError(f"--solo-inline-ms must be >= 0 (0: never inline), got {solo_inline_ms}")
    if latency_budget_ms < 0:
        raise ConfigError(f"--latency-budget-ms must be >= 0 (0: no latency bound), got {latency_budget_ms}")
    if max_inflight < 0:
        raise ConfigError(
            f"--max-inflight must be >= 0 (0: {INFLIGHT_PER_BATCH} x processes x workers x max batch), "
            f"got {max_inflight}"
        )
    if optimization not in ("disable", "basic", "extended", "all"):
        raise ConfigError(f"--graph-optimization must be disable|basic|extended|all, got {optimization!r}")
    _positive(max_body_bytes, "--max-body-bytes")
    if per_key_inflight < 0:
        raise ConfigError(f"--per-key-inflight must be >= 0 (0: unlimited), got {per_key_inflight}")
    if poll_s < 0:
        raise ConfigError(f"--poll must be >= 0 seconds, got {poll_s}")
    source = None
    if hub:
        if not hub.startswith(("http://", "https://")):
            raise ConfigError(f"--hub {hub!r} must be an http(s) URL")
        tok = token or env.get(ENV_HUB_TOKEN, "")
        if not tok:
            raise ConfigError(f"--hub needs --token or {ENV_HUB_TOKEN}")
        _positive(hub_poll_s, "--hub-poll")
        source = HubSource(hub.rstrip("/"), tok, hub_poll_s)
    default = (default_model or env.get(ENV_DEFAULT_MODEL, "")).strip() or None
    if default is not None and not default.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--default-model / {ENV_DEFAULT_MODEL} must be a model name, got {default!r}")
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"--log-level must be DEBUG|INFO|WARNING|ERROR, got {log_level!r}")
    return CloudConfig(
        bundles=bundle_dir,
        root=root_path,
        host=host,
        port=port,
        api_keys=keys,
        default_model=default,
        poll_s=poll_s,
        batch=BatchPolicy(
            max_batch, max_wait_ms / 1000.0, max_queue, queue_timeout_s, n_workers, solo_inline_ms / 1000.0
        ),
        session=SessionTuning(
            intra_threads=intra_threads,
            solo_threads=solo_threads,
            inter_threads=inter_threads,
            spinning=spinning,
            optimization=optimization,
        ),
        limits=Limits(max_body_bytes=max_body_bytes, per_key_inflight=per_key_inflight),
        # always admit enough requests to fill every worker's batch: shedding below that would
        # idle a core without shortening anyone's wait. The latency budget is off unless asked
        # for: with clients that retry at once (wrk), its refusals take loop time, which lowers
        # the measured rate, which sheds more - measured shedding at 32 clients with a 1 s and
        # even a 5 s budget on a loaded box (docs/cloud.md "Load shedding"); the count bound
        # has no such loop
        admission=Admission(
            floor=n_workers * max_batch,
            max_inflight=max_inflight or INFLIGHT_PER_BATCH * n_processes * n_workers * max_batch,
            latency_budget_s=latency_budget_ms / 1000.0,
        ),
        hub=source,
        access_log=access_log,
        log_level=level,
        processes=n_processes,
    )
