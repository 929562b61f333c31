"""The agent's one typed configuration, read from TOML (and a few environment hooks).

Only this module reads the environment. Every value is validated at start; a bad value raises
:class:`ConfigError` naming the key, the value and what was expected.

Example ``agent.toml``::

    device_id = "pi-kitchen-01"
    broker = "mqtt://127.0.0.1:1883"       # mqtts://host:8883 for TLS; or a list: a cluster's nodes, tried in turn
    state_dir = "/var/lib/edgefleet-agent"
    root = "/etc/edgefleet/root.json"       # pinned trust root (hub `keys init`)
    board = "rpi4"
    http_host = "127.0.0.1"
    http_port = 8780                        # 0 = pick a free port, written to state_dir/http.port
    http_socket = "/run/edgefleet/agent.sock"  # optional: the same API on a Unix socket
    telemetry_interval_s = 10
    http_metrics = false                    # true: GET /metrics (Prometheus) on the local API
    max_hold_minutes = 60                   # an app may hold one install's switch this long (0: never)
    device_view = true                      # announce device views (only the artifacts used; false: full archives)
    plan_by_reference = true                # read chunk lists once per bundle, not in each signed document
    cloud_url = "https://fallback.example.com"
    cloud_api_key = "..."
    edgetpu = "auto"                        # auto | off
    tpu_invoke_timeout_s = 2.0              # an Edge TPU invoke longer than this is hung: serve on the CPU
    tpu_max_errors = 3                      # Edge TPU invoke errors in a row that move serving to the CPU
    tpu_retry_s = 30                        # first retry of the TPU after that (doubles up to tpu_retry_max_s)
    daily_byte_budget = 20000000            # metered link: bundle + telemetry bytes per UTC day (reports always go)
    download_rate_bytes_s = 50000           # metered link: bundle chunks at most this fast
    [escalation]                            # optional: unsure answers to the cloud's bigger model (agent.escalation)
    escalate_to = "mobilenet_v2_big"        # the model the cloud fallback serves by that name
    measure = "max_score"                   # max_score | entropy (classifiers) | mean_score (detectors)
    threshold = 0.5                         # escalate when the local confidence is below it
    timeout_ms = 300                        # the cloud's answer or the local one after this long
    requests_per_minute = 60                # upload budget; bytes_per_day = N caps the bytes too
    failures = 3                            # circuit breaker: this many failures within window_s open it
    [hard_examples]                         # optional, off by default: keep unsure inputs for relabelling
    enabled = true                          # (agent.sampling; uploaded to the hub, docs/lifecycle.md)
    threshold = 0.5                         # keep when the local confidence is below it (measure as above)
    per_minute = 2                          # caps: per UTC minute, hour and day
    per_hour = 20
    per_day = 100
    disk_bytes = 50000000                   # kept-but-not-yet-uploaded examples take at most this

Environment hooks (tests and operators): ``EDGEFLEET_AGENT_CRASH_AT=<stage>`` makes the agent
``os._exit(137)`` when it reaches that install stage (download, verify, stage, switch, commit);
``EDGEFLEET_AGENT_FREE_DISK=<bytes>`` overrides the free-disk probe;
``EDGEFLEET_AGENT_EDGETPU_DRIVER=<module:attr>`` (tests only) replaces the libedgetpu driver
(:mod:`agent.watchdog`: the sandbox has no Coral, so a test injects a fake delegate there). systemd's ``NOTIFY_SOCKET``
and ``WATCHDOG_USEC`` (``Type=notify`` units) become ``notify_socket`` and ``watchdog_s``
(:mod:`agent.notify`); ``WATCHDOG_USEC`` meant for another process (``WATCHDOG_PID``) is ignored.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from protocol.errors import BadPayload
from protocol.topics import check_device_id

from . import sampling
from .errors import ConfigError
from .escalation import Policy

CRASH_STAGES = ("download", "verify", "stage", "switch", "commit")
EDGETPU_MODES = ("auto", "off")


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker: expected mqtt://host:port or mqtts://host:port, got {url!r}")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise ConfigError(f"broker: port in {url!r} is not a number 1..65535") from None
        return cls(parts.hostname, port, parts.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


# The largest MQTT packet the fleet sends is a bundle chunk plus topic and headers; the hub sizes
# its broker the same way (hub/credentials.py max_packet_bytes). 1 MiB covers the default 64 KiB
# chunks and every status/report/telemetry message (<= 256 KiB, protocol.messages).
MIN_PACKET_BYTES = 1024 * 1024
CHUNK_PACKET_OVERHEAD = 64 * 1024


def packet_bytes_for(chunk_size: int) -> int:
    """The packet size a device must accept to receive chunks of ``chunk_size`` bytes."""
    return max(MIN_PACKET_BYTES, chunk_size + CHUNK_PACKET_OVERHEAD)


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    broker: BrokerAddress  # the first of ``brokers``
    state_dir: Path
    root: Path
    board: str = "rpi4"
    http_host: str = "127.0.0.1"
    http_port: int = 0
    http_socket: Path | None = None  # also serve the API on this Unix socket
    telemetry_interval_s: float = 10.0
    http_metrics: bool = False  # serve GET /metrics (agent.metrics) on the local API
    cloud_url: str | None = None
    cloud_api_key: str | None = None
    cloud_timeout_s: float = 10.0
    edgetpu: str = "auto"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = 30
    fetch_repair_s: float = 3.0  # a download this long idle probes the broker, then asks the hub (agent.stall)
    progress_interval_s: float = 5.0  # download progress: a report a tenth, at most one this often
    device_view: bool = True  # announce device views (protocol.view); false: the hub sends full archives
    plan_by_reference: bool = True  # announce protocol.planref; false: chunk lists inline in desired documents
    resend_after_s: float = 15.0  # resend unacked telemetry/reports after this long
    probation_inferences: int = 20  # a freshly switched model is on probation this long
    probation_max_errors: int = 3  # errors within probation that trigger a rollback
    probation_max_crashes: int = 2  # unclean restarts within probation that trigger a rollback
    max_hold_minutes: int = 60  # the longest an app may hold one install's switch (0: no holds)
    disk_reserve_bytes: int = 16 * 1024 * 1024
    max_packet_bytes: int = MIN_PACKET_BYTES  # MQTT v5 Maximum Packet Size the agent declares
    backlog_max_rows: int = 100_000  # a week of 10 s windows fits; backlog_max_bytes bounds it first
    backlog_max_bytes: int = 50 * 2**20
    daily_byte_budget: int | None = None  # bundle downloads + telemetry per UTC day (agent.budget); None: no cap
    download_rate_bytes_s: int | None = None  # bundle chunks at most this fast (agent.budget); None: no cap
    latency_budget_ms: float | None = None
    session_idle_s: float = 300.0  # a stateful model's session is dropped after this long unused
    max_sessions: int = 64  # sessions held at once; one more evicts the least recently used
    threads: int | None = None
    crash_at: str | None = None
    free_disk_override: int | None = None
    notify_socket: str | None = None  # systemd's NOTIFY_SOCKET (agent.notify)
    watchdog_s: float | None = None  # systemd's WATCHDOG_USEC, in seconds
    tpu_invoke_timeout_s: float = 2.0  # agent.watchdog
    tpu_max_errors: int = 3
    tpu_retry_s: float = 30.0
    tpu_retry_max_s: float = 1800.0
    apex_temp_path: Path = Path("/sys/class/apex/apex_0/temp")  # the Edge TPU's temperature (apex driver)
    edgetpu_driver: str | None = None  # EDGEFLEET_AGENT_EDGETPU_DRIVER, tests only
    brokers: tuple[BrokerAddress, ...] = ()  # ``broker`` as a list: failover order (agent.transport)
    escalation: Policy | None = (
        None  # [escalation]: low-confidence answers to the cloud's bigger model (agent.escalation)
    )
    hard_examples: sampling.Policy | None = None  # [hard_examples]: unsure inputs kept for the hub (agent.sampling)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def http_port_file(self) -> Path:
        return self.state_dir / "http.port"


_FROM_ENV = {"crash_at", "free_disk_override", "notify_socket", "watchdog_s", "edgetpu_driver"}
_KNOWN = {f for f in AgentConfig.__dataclass_fields__} - _FROM_ENV - {"extra"}


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in doc:
        if default is ...:
            raise ConfigError(f"{key}: missing (required)")
        return default
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    if float in kinds and isinstance(value, int):
        return float(value)
    if not isinstance(value, kinds):
        raise ConfigError(f"{key}: expected {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
    return value


def _path(doc: Mapping[str, Any], key: str, base: Path, default: Any = ...) -> Path | None:
    value = _get(doc, key, str, default)
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _positive(key: str, value: float, allow_zero: bool = False) -> float:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: expected a number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _optional_count(doc: Mapping[str, Any], key: str) -> int | None:
    value = _get(doc, key, int, None)
    if value is not None and value < 1:
        raise ConfigError(f"{key}: expected a number of bytes >= 1 (leave it out for no cap), got {value!r}")
    return int(value) if value is not None else None


def _brokers(value: str | list[Any]) -> tuple[BrokerAddress, ...]:
    """``broker``: one URL, or a non-empty list of them (a broker cluster's nodes)."""
    urls = [value] if isinstance(value, str) else value
    if not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"broker: expected a URL or a non-empty list of URLs, got {value!r}")
    return tuple(BrokerAddress.parse(u) for u in urls)


MIN_RATE = 4096  # a 64 KiB chunk then holds the MQTT thread 16 s, inside the 30 s keepalive


def _rate(value: int | None) -> int | None:
    if value is not None and value < MIN_RATE:
        raise ConfigError(
            f"download_rate_bytes_s: expected >= {MIN_RATE} (the cap holds the MQTT thread one chunk's time; "
            f"slower, a 64 KiB chunk would outlast the keepalive and drop the connection), got {value!r}"
        )
    return value


def _hold_minutes(value: int) -> int:
    if not 0 <= value <= 1440:
        raise ConfigError(f"max_hold_minutes: expected 0 (apps may not hold updates) to 1440, got {value!r}")
    return value


def _systemd(env: Mapping[str, str]) -> tuple[str | None, float | None]:
    """``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` (seconds) as systemd passes them to a notify unit."""
    sock = env.get("NOTIFY_SOCKET") or None
    raw = env.get("WATCHDOG_USEC") or ""
    pid = env.get("WATCHDOG_PID") or ""
    if not raw or (pid and pid != str(os.getpid())):
        return sock, None
    if not raw.isdigit() or int(raw) == 0:
        raise ConfigError(f"WATCHDOG_USEC: expected a positive number of microseconds, got {raw!r}")
    return sock, int(raw) / 1e6


def from_dict(doc: Mapping[str, Any], base: Path = Path("."), env: Mapping[str, str] | None = None) -> AgentConfig:
    """Build and validate a config from a parsed TOML table (relative paths from ``base``)."""
    env = os.environ if env is None else env
    try:
        device_id = check_device_id(_get(doc, "device_id", str))
    except BadPayload as exc:
        raise ConfigError(f"device_id: {exc.problem}") from None
    brokers = _brokers(_get(doc, "broker", (str, list)))
    state_dir = _path(doc, "state_dir", base)
    root = _path(doc, "root", base)
    assert state_dir is not None and root is not None
    if not root.is_file():
        raise ConfigError(f"root: pinned trust root {str(root)!r} does not exist or is not a file")
    board = _get(doc, "board", str, "rpi4")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", board):
        raise ConfigError(f"board: expected 1-64 chars of [A-Za-z0-9_.-], got {board!r}")
    http_port = _get(doc, "http_port", int, 0)
    if not 0 <= http_port <= 65535:
        raise ConfigError(f"http_port: expected 0..65535, got {http_port!r}")
    edgetpu = _get(doc, "edgetpu", str, "auto")
    if edgetpu not in EDGETPU_MODES:
        raise ConfigError(f"edgetpu: expected one of {EDGETPU_MODES}, got {edgetpu!r}")
    cloud_url = _get(doc, "cloud_url", str, None) or None
    if cloud_url is not None and urlsplit(cloud_url).scheme not in ("http", "https"):
        raise ConfigError(f"cloud_url: expected an http(s):// URL, got {cloud_url!r}")
    crash_at = env.get("EDGEFLEET_AGENT_CRASH_AT") or None
    if crash_at is not None and crash_at not in CRASH_STAGES:
        raise ConfigError(f"EDGEFLEET_AGENT_CRASH_AT: expected one of {CRASH_STAGES}, got {crash_at!r}")
    free_disk: int | None = None
    if env.get("EDGEFLEET_AGENT_FREE_DISK"):
        raw = env["EDGEFLEET_AGENT_FREE_DISK"]
        if not raw.isdigit():
            raise ConfigError(f"EDGEFLEET_AGENT_FREE_DISK: expected a byte count, got {raw!r}")
        free_disk = int(raw)
    notify_socket, watchdog_s = _systemd(env)
    budget = _get(doc, "latency_budget_ms", float, None)
    threads = _get(doc, "threads", int, None)
    if threads is not None and not 1 <= threads <= 64:
        raise ConfigError(f"threads: expected 1..64, got {threads!r}")
    max_packet = _get(doc, "max_packet_bytes", int, MIN_PACKET_BYTES)
    if not MIN_PACKET_BYTES <= max_packet <= 268_435_455:  # MQTT's own limit (256 MiB)
        raise ConfigError(f"max_packet_bytes: expected {MIN_PACKET_BYTES}..268435455, got {max_packet!r}")
    files = {k: _path(doc, k, base, None) for k in ("ca_file", "cert_file", "key_file")}
    for k, p in files.items():
        if p is not None and not p.is_file():
            raise ConfigError(f"{k}: {str(p)!r} does not exist")
    cfg = AgentConfig(
        device_id=device_id,
        broker=brokers[0],
        brokers=brokers,
        state_dir=state_dir,
        root=root,
        board=board,
        http_host=_get(doc, "http_host", str, "127.0.0.1"),
        http_port=http_port,
        http_socket=_path(doc, "http_socket", base, None),
        telemetry_interval_s=_positive("telemetry_interval_s", _get(doc, "telemetry_interval_s", float, 10.0)),
        http_metrics=_get(doc, "http_metrics", bool, False),
        cloud_url=cloud_url.rstrip("/") if cloud_url else None,
        cloud_api_key=_get(doc, "cloud_api_key", str, None),
        cloud_timeout_s=_positive("cloud_timeout_s", _get(doc, "cloud_timeout_s", float, 10.0)),
        edgetpu=edgetpu,
        username=_get(doc, "username", str, None),
        password=_get(doc, "password", str, None),
        ca_file=files["ca_file"],
        cert_file=files["cert_file"],
        key_file=files["key_file"],
        keepalive_s=int(_positive("keepalive_s", _get(doc, "keepalive_s", int, 30))),
        fetch_repair_s=_positive("fetch_repair_s", _get(doc, "fetch_repair_s", float, 3.0)),
        progress_interval_s=_positive("progress_interval_s", _get(doc, "progress_interval_s", float, 5.0)),
        device_view=_get(doc, "device_view", bool, True),
        plan_by_reference=_get(doc, "plan_by_reference", bool, True),
        resend_after_s=_positive("resend_after_s", _get(doc, "resend_after_s", float, 15.0)),
        probation_inferences=int(_positive("probation_inferences", _get(doc, "probation_inferences", int, 20), True)),
        probation_max_errors=int(_positive("probation_max_errors", _get(doc, "probation_max_errors", int, 3))),
        probation_max_crashes=int(_positive("probation_max_crashes", _get(doc, "probation_max_crashes", int, 2), True)),
        max_hold_minutes=_hold_minutes(_get(doc, "max_hold_minutes", int, 60)),
        disk_reserve_bytes=int(_positive("disk_reserve_bytes", _get(doc, "disk_reserve_bytes", int, 16 << 20), True)),
        max_packet_bytes=max_packet,
        backlog_max_rows=int(_positive("backlog_max_rows", _get(doc, "backlog_max_rows", int, 100_000))),
        backlog_max_bytes=int(_positive("backlog_max_bytes", _get(doc, "backlog_max_bytes", int, 50 * 2**20))),
        daily_byte_budget=_optional_count(doc, "daily_byte_budget"),
        download_rate_bytes_s=_rate(_optional_count(doc, "download_rate_bytes_s")),
        latency_budget_ms=_positive("latency_budget_ms", budget) if budget is not None else None,
        session_idle_s=_positive("session_idle_s", _get(doc, "session_idle_s", float, 300.0)),
        max_sessions=int(_positive("max_sessions", _get(doc, "max_sessions", int, 64))),
        threads=threads,
        crash_at=crash_at,
        free_disk_override=free_disk,
        notify_socket=notify_socket,
        watchdog_s=watchdog_s,
        tpu_invoke_timeout_s=_positive("tpu_invoke_timeout_s", _get(doc, "tpu_invoke_timeout_s", float, 2.0)),
        tpu_max_errors=int(_positive("tpu_max_errors", _get(doc, "tpu_max_errors", int, 3))),
        tpu_retry_s=_positive("tpu_retry_s", _get(doc, "tpu_retry_s", float, 30.0)),
        tpu_retry_max_s=_positive("tpu_retry_max_s", _get(doc, "tpu_retry_max_s", float, 1800.0)),
        apex_temp_path=_path(doc, "apex_temp_path", base, "/sys/class/apex/apex_0/temp") or Path(),
        edgetpu_driver=env.get("EDGEFLEET_AGENT_EDGETPU_DRIVER") or None,
        escalation=_escalation(doc.get("escalation"), cloud_url),
        hard_examples=_hard_examples(doc.get("hard_examples")),
        extra={k: v for k, v in doc.items() if k not in _KNOWN},
    )
    if (cfg.username is None) != (cfg.password is None):
        raise ConfigError("username/password: set both or neither")
    if (cfg.cert_file is None) != (cfg.key_file is None):
        raise ConfigError("cert_file/key_file: set both or neither")
    return cfg


def _escalation(table: Any, cloud_url: str | None) -> Policy | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"escalation: expected a table ([escalation]), got {table!r:.60}")
    if cloud_url is None:
        raise ConfigError("escalation: needs cloud_url (the cloud fallback serving escalate_to)")
    return Policy.from_dict(table)


def _hard_examples(table: Any) -> sampling.Policy | None:
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"hard_examples: expected a table ([hard_examples]), got {table!r:.60}")
    return sampling.Policy.from_dict(table)


def load(path: Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (TOML) and validate it. Relative paths are relative to the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r}: cannot read ({exc.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(path)!r}: not valid TOML ({exc})") from None
    return from_dict(doc, path.resolve().parent, env)
