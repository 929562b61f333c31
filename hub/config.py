"""The hub's one typed configuration. Only this module reads the environment.

Every setting has a CLI flag (``edgefleet-hub serve --help``) and an ``EDGEFLEET_HUB_<NAME>``
variable; a flag wins over the variable, the variable over the default. Built once in
``main``, validated there, passed down.

Secrets (``token``, ``tokens``, the ``broker`` URL with its password) are best given as
``EDGEFLEET_HUB_<NAME>_FILE=/path`` or in the environment: a command-line flag shows in ``ps``.

Tokens: ``--token`` is the admin token. ``EDGEFLEET_HUB_TOKENS`` adds more as
``role:token,role:token`` with roles ``viewer``, ``operator``, ``admin``. A default or empty
admin token is refused unless ``--dev``.

Replicas: ``--shared-group NAME`` makes the hub one consumer of the MQTT shared subscription
``$share/NAME/...`` (each device message goes to one member of the group; see ``hub.mqtt``).
Empty (the default): plain subscriptions, one hub.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from .errors import ConfigError

ENV_PREFIX = "EDGEFLEET_HUB_"
ROLES = ("viewer", "operator", "admin")
DEV_TOKEN = "dev-token"
_WEAK_TOKENS = {"", "changeme", "token", "secret", DEV_TOKEN}

DEFAULTS: dict[str, Any] = {
    "db": "sqlite:///hub.db",
    "broker": "mqtt://127.0.0.1:1883",
    "keys": "keys",
    "store": "store",
    "host": "127.0.0.1",
    "port": 8000,
    "token": "",
    "tokens": "",
    "dev": False,
    "chunk_size": 64 * 1024,
    "desired_ttl": 7 * 86400,
    "batch_max": 500,
    "batch_wait": 0.05,
    "tick": 2.0,
    "offline_after": 300,
    "mqtt_auth_dir": "",
    "broker_pid_file": "",
    "enroll_ttl": 86400,
    "broker_public": "",
    "retention": 30 * 86400,
    "raw_retention": 48 * 3600,
    "minute_retention": 14 * 86400,
    "hour_retention": 90 * 86400,
    "broker_ca": "",
    "broker_cert": "",
    "broker_key": "",
    "shared_group": "",
    "dist": "",
    "housekeeping": "here",
}
HOUSEKEEPING = ("here", "apart")  # alerts, rollups, pruning: in the serving process or `edgefleet-hub housekeep`

Num = TypeVar("Num", int, float)


SECRETS = ("token", "tokens", "broker")  # may come from a file: never in argv, ps or a URL


def env_value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw ``EDGEFLEET_HUB_<NAME>`` value, or None. For a secret, ``EDGEFLEET_HUB_<NAME>_FILE``
    names a file holding it instead (Docker/Kubernetes secrets, systemd credentials)."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_PREFIX + name.upper())
    path = env.get(ENV_PREFIX + name.upper() + "_FILE") if name in SECRETS else None
    if value is None and path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(name, f"cannot read {ENV_PREFIX}{name.upper()}_FILE {path!r}: {exc.strerror}") from None
    return value


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False  # mqtts:// (port 8883 unless given)

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        u = urlparse(url)
        if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise ConfigError("broker", f"{url!r} must look like mqtt://host:port or mqtts://host:port")
        if not u.hostname:
            raise ConfigError("broker", f"{url!r} has no host")
        tls = u.scheme in ("mqtts", "ssl")
        try:
            port = u.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError("broker", f"{url!r} has an invalid port") from None
        return cls(
            u.hostname,
            port,
            unquote(u.username) if u.username else None,
            unquote(u.password) if u.password else None,
            tls,
        )

    def without_credentials(self) -> str:
        """``mqtt[s]://host:port``: what may be logged or handed to a device (never the password)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


@dataclass(frozen=True)
class BrokerTls:
    """The hub's own TLS to the broker: the CA that signed the broker's certificate and, for a
    mutual-TLS listener, the hub's certificate and key. Empty: the system's CAs, no client
    certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class HubConfig:
    db: str = DEFAULTS["db"]
    broker: str = DEFAULTS["broker"]
    keys: Path = Path(DEFAULTS["keys"])
    store: Path = Path(DEFAULTS["store"])
    host: str = DEFAULTS["host"]
    port: int = DEFAULTS["port"]
    tokens: dict[str, str] = field(default_factory=dict, hash=False)  # token -> role
    dev: bool = False
    chunk_size: int = DEFAULTS["chunk_size"]
    desired_ttl: int = DEFAULTS["desired_ttl"]
    batch_max: int = DEFAULTS["batch_max"]
    batch_wait: float = DEFAULTS["batch_wait"]
    tick: float = DEFAULTS["tick"]
    offline_after: int = DEFAULTS["offline_after"]
    mqtt_auth_dir: Path | None = None  # where passwd + acl are written (None: no broker auth)
    broker_pid_file: Path | None = None  # SIGHUP target after rewriting them
    enroll_ttl: int = DEFAULTS["enroll_ttl"]
    broker_public: str = ""  # broker URL handed to enrolling devices (default: broker)
    retention: int = DEFAULTS["retention"]  # seconds reports and diagnostics commands are kept
    raw_retention: int = DEFAULTS["raw_retention"]  # seconds raw telemetry windows are kept (hub.rollups)
    minute_retention: int = DEFAULTS["minute_retention"]  # seconds 1-minute rollups are kept
    hour_retention: int = DEFAULTS["hour_retention"]  # seconds 1-hour rollups are kept
    broker_tls: BrokerTls = field(default_factory=BrokerTls)  # used when broker is mqtts://
    shared_group: str = ""  # MQTT shared-subscription group ("": plain subscriptions)
    dist: Path | None = None  # `make dist` output served to devices (GET /install.sh, /dist/NAME)
    housekeeping: str = "here"  # "apart": alerts, rollups and pruning run in `edgefleet-hub housekeep` (hub.ticker)

    @property
    def broker_url(self) -> BrokerUrl:
        return BrokerUrl.parse(self.broker)

    @property
    def broker_for_devices(self) -> str:
        """The broker URL an enrolling device is told: ``broker_public`` or the hub's own broker,
        always without user or password. The hub's broker user has readwrite on ``ef/v1/#``;
        a device that learnt it could read and forge the whole fleet's traffic."""
        return BrokerUrl.parse(self.broker_public or self.broker).without_credentials()

    @classmethod
    def load(cls, given: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> HubConfig:
        """Merge CLI values (None = not given) over ``EDGEFLEET_HUB_*`` over defaults; validate."""

        def pick(name: str) -> Any:
            if given.get(name) is not None:
                return given[name]
            raw = env_value(name, environ)
            return raw if raw is not None else DEFAULTS[name]

        def as_number(name: str, kind: type[Num], lo: Num, hi: Num) -> Num:
            raw = pick(name)
            try:
                value = kind(raw)
            except (TypeError, ValueError):
                noun = "an integer" if kind is int else "a number"
                raise ConfigError(name, f"{raw!r} is not {noun}") from None
            if not lo <= value <= hi:
                raise ConfigError(name, f"{value} must be within {lo}..{hi}")
            return value

        def as_int(name: str, lo: int, hi: int) -> int:
            return as_number(name, int, lo, hi)

        def as_float(name: str, lo: float, hi: float) -> float:
            return as_number(name, float, lo, hi)

        dev_raw = pick("dev")
        dev = dev_raw if isinstance(dev_raw, bool) else str(dev_raw).lower() in ("1", "true", "yes")
        token = str(pick("token"))
        if token in _WEAK_TOKENS:
            if not dev:
                raise ConfigError(
                    "token",
                    "a strong --token (or EDGEFLEET_HUB_TOKEN) is required; "
                    f"{token!r} is a default (use --dev for local runs)",
                )
            token = token or DEV_TOKEN
        tokens = {token: "admin"}
        for item in filter(None, (s.strip() for s in str(pick("tokens")).split(","))):
            role, sep, tok = item.partition(":")
            if not sep or role not in ROLES or not tok:
                raise ConfigError("tokens", f"{item!r} must be role:token with role in {ROLES}")
            if tok in _WEAK_TOKENS and not dev:
                raise ConfigError("tokens", f"token for role {role} is a default value")
            tokens[tok] = role
        BrokerUrl.parse(str(pick("broker")))
        public = str(pick("broker_public") or "")
        if public and BrokerUrl.parse(public).password is not None:
            raise ConfigError(
                "broker_public",
                f"{BrokerUrl.parse(public).without_credentials()} carries a password; "
                "devices get their own credentials at enrollment, never a shared one",
            )
        tls_files: dict[str, Path | None] = {}
        for name in ("broker_ca", "broker_cert", "broker_key"):
            raw = str(pick(name) or "")
            if raw and not Path(raw).is_file():
                raise ConfigError(name, f"{raw!r} is not a readable file")
            tls_files[name] = Path(raw) if raw else None
        if (tls_files["broker_cert"] is None) != (tls_files["broker_key"] is None):
            raise ConfigError("broker_cert", "a client certificate needs its key (--broker-cert and --broker-key)")
        if any(tls_files.values()) and not BrokerUrl.parse(str(pick("broker"))).tls:
            raise ConfigError("broker_ca", "TLS files are given but --broker is not mqtts://")
        shared_group = str(pick("shared_group") or "")
        if given.get("shared_group") is not None or shared_group:
            check_shared_group(shared_group)
        dist = str(pick("dist") or "")
        if dist and not Path(dist).is_dir():
            raise ConfigError("dist", f"{dist!r} is not a directory (build it with `make dist`)")
        housekeeping = str(pick("housekeeping"))
        if housekeeping not in HOUSEKEEPING:
            raise ConfigError("housekeeping", f"{housekeeping!r} must be one of {', '.join(HOUSEKEEPING)}")
        db = str(pick("db"))
        if "://" not in db:
            raise ConfigError("db", f"{db!r} must be a SQLAlchemy URL like sqlite:///hub.db")
        # raw windows for hours, then 1-minute rollups, then 1-hour rollups (hub.rollups): an hour
        # rollup is built from the minute rollups of its hour, so those must outlive it
        raw_retention = as_int("raw_retention", 3600, 366 * 86400)
        minute_retention = as_int("minute_retention", 2 * 3600, 10 * 366 * 86400)
        hour_retention = as_int("hour_retention", 2 * 3600, 10 * 366 * 86400)
        if not raw_retention <= minute_retention <= hour_retention:
            raise ConfigError(
                "minute_retention",
                f"retentions must grow raw <= minute <= hour, got {raw_retention} s, {minute_retention} s, "
                f"{hour_retention} s",
            )
        return cls(
            db=db,
            broker=str(pick("broker")),
            keys=Path(pick("keys")),
            store=Path(pick("store")),
            host=str(pick("host")),
            port=as_int("port", 0, 65535),
            tokens=tokens,
            dev=dev,
            chunk_size=as_int("chunk_size", 1024, 8 * 1024 * 1024),
            desired_ttl=as_int("desired_ttl", 60, 366 * 86400),
            batch_max=as_int("batch_max", 1, 100_000),
            batch_wait=as_float("batch_wait", 0.0, 10.0),
            tick=as_float("tick", 0.05, 3600.0),
            offline_after=as_int("offline_after", 5, 86400 * 30),
            mqtt_auth_dir=Path(pick("mqtt_auth_dir")) if pick("mqtt_auth_dir") else None,
            broker_pid_file=Path(pick("broker_pid_file")) if pick("broker_pid_file") else None,
            enroll_ttl=as_int("enroll_ttl", 60, 366 * 86400),
            broker_public=public,
            retention=as_int("retention", 3600, 10 * 366 * 86400),
            raw_retention=raw_retention,
            minute_retention=minute_retention,
            hour_retention=hour_retention,
            broker_tls=BrokerTls(tls_files["broker_ca"], tls_files["broker_cert"], tls_files["broker_key"]),
            shared_group=shared_group,
            dist=Path(dist) if dist else None,
            housekeeping=housekeeping,
        )


def check_shared_group(name: str) -> str:
    """A shared-subscription group name is one MQTT topic level (MQTT 5, 4.8.2): not empty, no
    ``/``, ``+`` or ``#``. Control characters are refused too (a NUL is never valid in a topic)."""
    bad = sorted({c for c in name if c in "/+#" or ord(c) < 32})
    if not name or bad:
        why = "is empty" if not name else f"contains {', '.join(repr(c) for c in bad)}"
        raise ConfigError("shared_group", f"{name!r} {why}; a group name is one MQTT topic level (no '/', '+' or '#')")
    return name


def client_env(name: str) -> str | None:
    """For CLI client commands (``models push`` etc.): ``EDGEFLEET_HUB_URL`` / ``_TOKEN``."""
    return env_value(name)
