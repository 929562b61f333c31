"""``edgefleet-hub``: serve the hub, manage keys, push models, drive rollouts.

Exit codes: 0 ok · 1 runtime failure (hub unreachable, server error) · 2 usage or bad input
(argparse, invalid config, bad bundle directory, 4xx from the hub).

Client commands (``models``, ``rollouts``, ``devices``) talk to a running hub over HTTP:
``--hub URL`` (env ``EDGEFLEET_HUB_URL``, default http://127.0.0.1:8000) and ``--token``
(env ``EDGEFLEET_HUB_TOKEN``). Their ``ls`` print one page as a table (``--json``: the API's
page as it came, ``{"items", "total", "limit", "offset"}``); ``--limit``/``--offset`` and the
filters are the API's query parameters. ``devices logs|selftest|restart|diagnostics ID`` send a
remote-diagnostics command and wait (``--wait``) for the device's answer: exit 0 if it answered
ok, 1 if it failed, refused, expired or did not answer in time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from . import listings
from .cli_hardexamples import add_commands as add_hard_examples
from .cli_models import add_show
from .cli_rollouts import add_commands as add_rollouts
from .client import EXIT_FAIL, EXIT_OK, EXIT_USAGE, ClientError, call, client_args, page_args, show_page
from .config import DEFAULTS, HOUSEKEEPING, BrokerUrl, HubConfig
from .errors import ConfigError, HubError

log = logging.getLogger("hub")


# ---- commands -------------------------------------------------------------------------------
def cmd_keys_init(args: argparse.Namespace) -> int:
    from . import keys

    res = keys.init(Path(args.dir), args.root_keys, args.threshold)
    print(f"wrote trust root v{res.version}: {res.root_path}  (pin this on every device)")
    print(f"wrote online signing key: {res.online_path}  (stays with the hub)")
    for p in res.root_key_paths:
        print(f"wrote offline root key: {p}")
    print(
        f"MOVE the {len(res.root_key_paths)} root-*.pem files OFFLINE now: "
        f"{args.threshold} of them are needed only to rotate keys (`edgefleet-hub keys rotate`)."
    )
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from protocol.signing import SigningKey

    from . import keys

    old = [SigningKey.from_pem(Path(p).read_bytes(), p) for p in args.root_key]
    root, written = keys.rotate(Path(args.dir), old, args.root_keys, args.threshold, not args.keep_online)
    print(f"wrote trust root v{root.version}: {Path(args.dir) / keys.ROOT_FILE}")
    for p in written:
        print(f"wrote offline root key: {p}  (move it OFFLINE)")
    print("restart the hub (or it publishes the new root on ef/v1/root at start) so devices rotate")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server import build, settle_gc, settle_threads

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    given = {
        k: getattr(args, k)
        for k in (
            "db",
            "broker",
            "keys",
            "store",
            "host",
            "port",
            "token",
            "tokens",
            "chunk_size",
            "batch_max",
            "tick",
            "mqtt_auth_dir",
            "broker_pid_file",
            "broker_public",
            "enroll_ttl",
            "retention",
            "broker_ca",
            "broker_cert",
            "broker_key",
            "shared_group",
            "dist",
            "housekeeping",
        )
    }
    given["dev"] = True if args.dev else None
    config = HubConfig.load(given)
    if args.token or args.tokens or (args.broker and BrokerUrl.parse(args.broker).password):
        log.warning(
            "a secret was given on the command line, where `ps` shows it to every local user; "
            "prefer EDGEFLEET_HUB_TOKEN / _TOKENS / _BROKER or their _FILE forms"
        )
    hub = build(config)
    hub.start()
    settle_gc()
    settle_threads()
    log.info(
        "hub on http://%s:%d (db %s, broker %s)",
        config.host,
        config.port,
        config.db.split("://")[0],
        config.broker_url.without_credentials(),
    )
    if config.housekeeping == "apart":
        log.info(
            "housekeeping apart: the alert scan, telemetry rollups and pruning are left to "
            "`edgefleet-hub housekeep` on this database (edgefleet_hub_rollups_behind_seconds grows without it)"
        )
    try:
        uvicorn.run(hub.app, host=config.host, port=config.port, log_level=args.log_level.lower(), access_log=False)
    finally:
        hub.stop()
    return EXIT_OK


def cmd_housekeep(args: argparse.Namespace) -> int:
    import secrets
    import signal
    import threading

    from prometheus_client import start_http_server

    from . import housekeeper

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not 0.1 <= args.every <= 3600:
        raise ConfigError("every", f"{args.every} must be within 0.1..3600 seconds")
    given = {k: getattr(args, k) for k in ("db", "keys", "store", "host", "port", "retention")}
    given["token"] = secrets.token_urlsafe(24)  # it serves no API: a token nobody holds
    config = HubConfig.load(given)
    fleet = housekeeper.build(config)
    if config.port:
        start_http_server(config.port, addr=config.host, registry=housekeeper.exposed(fleet.metrics))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info(
        "housekeeping (alerts, rollups, pruning) every %.1f s on %s; its /metrics on %s",
        args.every,
        config.db.split("://")[0],
        f"http://{config.host}:{config.port}" if config.port else "no port",
    )
    try:
        housekeeper.run(fleet, stop, args.every)
    except KeyboardInterrupt:
        pass
    fleet.engine.dispose()
    return EXIT_OK


def cmd_models_push(args: argparse.Namespace) -> int:
    from protocol.bundle import pack_archive
    from protocol.errors import ProtocolError

    from .store import read_bundle_dir

    env, arts = read_bundle_dir(Path(args.dir))
    try:
        archive = pack_archive(env, arts)
    except ProtocolError as exc:
        raise HubError(f"bundle directory {args.dir}: {exc}") from None
    print(f"uploading {len(archive)} bytes from {args.dir} ...", file=sys.stderr)
    out = call(args, "POST", "/api/v1/bundles", raw=archive)
    print(json.dumps(out))
    return EXIT_OK


def cmd_models_ls(args: argparse.Namespace) -> int:
    if args.by_name:
        return show_page(args, "models", "/api/v1/models")
    return show_page(args, "bundles", "/api/v1/bundles", name=args.name)


def cmd_devices_ls(args: argparse.Namespace) -> int:
    return show_page(
        args,
        "devices",
        "/api/v1/devices",
        q=args.q,
        online=args.online,
        group=args.group,
        tag=args.tag,
        bundle=args.bundle,
    )


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    out = call(
        args, "POST", "/api/v1/devices/enroll", {"device": args.id, "group": args.group or "", "tags": args.tag or []}
    )
    print(json.dumps(out))
    print(
        f"one-time token for {out['device_id']} "
        f"(expires {time.strftime('%Y-%m-%d %H:%M', time.gmtime(out['expires']))} UTC);"
        f" the device trades it at POST {args.hub.rstrip('/')}/api/v1/enroll",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_groups(args: argparse.Namespace) -> int:
    if args.sub == "ls":
        return show_page(args, "groups", "/api/v1/groups")
    path = f"/api/v1/groups/{urllib.parse.quote(args.group, safe='')}/window"
    body = {"spec": args.spec, "tz": args.tz} if args.sub == "set-window" else None
    print(json.dumps(call(args, "PUT" if body else "DELETE", path, body)))
    return EXIT_OK


def cmd_devices_command(args: argparse.Namespace) -> int:
    """Remote diagnostics: issue, then wait up to ``--wait`` s for the device's answer. Exit 0 if
    it answered ok, 1 if it failed, refused, expired or did not answer in time."""
    path = f"/api/v1/devices/{urllib.parse.quote(args.id, safe='')}/commands"
    body = {"name": args.command, **({"lines": args.lines} if getattr(args, "lines", None) else {})}
    cmd = call(args, "POST", path, body)
    deadline = time.monotonic() + args.wait
    while cmd["status"] == "sent" and time.monotonic() < deadline:
        time.sleep(0.5)
        cmd = call(args, "GET", f"{path}/{cmd['id']}")
    print(json.dumps(cmd, indent=2) if args.json else listings.command_text(cmd))
    return EXIT_OK if cmd["status"] == "ok" else EXIT_FAIL


def cmd_devices_bulk(args: argparse.Namespace) -> int:
    body = {"action": args.action, "devices": args.ids, "tag": args.tag, "group": args.group}
    out = call(args, "POST", "/api/v1/devices/bulk", {k: v for k, v in body.items() if v is not None})
    for r in out["results"]:
        print(f"{r['device']}\t{r['status']}\t{r['detail']}")
    print(f"{out['ok']} ok, {out['unknown']} unknown, {out['refused']} refused", file=sys.stderr)
    return EXIT_OK if out["ok"] == len(out["results"]) else EXIT_FAIL  # never a silent partial


def cmd_devices_show(args: argparse.Namespace) -> int:
    print(json.dumps(call(args, "GET", f"/api/v1/devices/{args.id}"), indent=2))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgefleet-hub", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    keys = sub.add_parser("keys", help="trust root and signing keys").add_subparsers(dest="sub", required=True)
    p = keys.add_parser("init", help="create root keys (offline), the online key and root.json")
    p.add_argument("--dir", required=True, help="directory to write keys into (must not hold keys)")
    p.add_argument("--root-keys", type=int, default=3, help="number of root keys (default %(default)s)")
    p.add_argument("--threshold", type=int, default=2, help="root signatures needed (default %(default)s)")
    p.set_defaults(func=cmd_keys_init)
    p = keys.add_parser("rotate", help="issue root v(N+1) with new root keys and a new online key")
    p.add_argument("--dir", required=True, help="the hub's keys directory")
    p.add_argument(
        "--root-key", action="append", required=True, help="a current root key PEM (repeat until the threshold is met)"
    )
    p.add_argument("--root-keys", type=int, default=None, help="number of new root keys (default: same)")
    p.add_argument("--threshold", type=int, default=None, help="new root threshold (default: same)")
    p.add_argument("--keep-online", action="store_true", help="keep the current online key")
    p.set_defaults(func=cmd_keys_rotate)

    p = sub.add_parser(
        "serve",
        help="run the hub (API, dashboard, MQTT bridge)",
        description="Run the hub. Every flag also reads EDGEFLEET_HUB_<FLAG> from the environment.",
    )
    p.add_argument("--db", help=f"SQLAlchemy URL (default {DEFAULTS['db']})")
    p.add_argument(
        "--broker",
        help=f"MQTT broker URL mqtt://[user:pass@]host:port, mqtts:// for TLS (default {DEFAULTS['broker']})",
    )
    p.add_argument(
        "--broker-ca", help="CA certificate (PEM) that signed the broker's, for mqtts:// (default: the system's CAs)"
    )
    p.add_argument("--broker-cert", help="the hub's client certificate (PEM) for a mutual-TLS listener")
    p.add_argument("--broker-key", help="the key of --broker-cert (PEM)")
    p.add_argument("--keys", help="keys directory from `keys init` (default ./keys)")
    p.add_argument("--store", help="bundle store directory (default ./store)")
    p.add_argument("--host", help=f"listen address (default {DEFAULTS['host']})")
    p.add_argument("--port", type=int, help=f"listen port (default {DEFAULTS['port']})")
    p.add_argument("--token", help="admin API token (required unless --dev)")
    p.add_argument("--tokens", help="more tokens: role:token,role:token (roles viewer, operator, admin)")
    p.add_argument("--chunk-size", type=int, help="bundle chunk size in bytes (default 65536)")
    p.add_argument("--batch-max", type=int, help="max messages per ingest transaction (default 500)")
    p.add_argument("--tick", type=float, help="rollout engine period in seconds (default 2)")
    p.add_argument("--mqtt-auth-dir", help="write Mosquitto passwd + acl files here (per-device credentials)")
    p.add_argument("--broker-pid-file", help="SIGHUP this broker after rewriting the auth files")
    p.add_argument("--broker-public", help="broker URL handed to enrolling devices (default: --broker)")
    p.add_argument("--enroll-ttl", type=int, help="seconds an enrollment token stays valid (default 86400)")
    p.add_argument("--retention", type=int, help="seconds reports and diagnostics are kept (default 30 days)")
    p.add_argument(
        "--shared-group",
        metavar="NAME",
        help="run as one of several hub replicas on one PostgreSQL database: subscribe as MQTT "
        "shared subscriptions $share/NAME/... (default: plain subscriptions, one hub)",
    )
    p.add_argument("--dist", help="`make dist` folder served to devices: GET /install.sh, /dist/NAME (default: none)")
    p.add_argument(
        "--housekeeping",
        choices=HOUSEKEEPING,
        help="the alert scan, telemetry rollups and pruning: in this process (here, the default) "
        "or in `edgefleet-hub housekeep` beside it (apart: for large fleets, docs/adr/0018-housekeeping-apart.md)",
    )
    p.add_argument("--dev", action="store_true", help="allow a default token (local development only)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "housekeep",
        help="run the alert scan, telemetry rollups and pruning beside hubs started with --housekeeping apart",
        description="Housekeeping in a process of its own: every --every seconds, scan alerts, roll "
        "telemetry up and prune, on the hubs' database and bundle store. It publishes nothing and "
        "serves only its own /metrics. --db, --keys, --store, --host and --retention also read "
        "EDGEFLEET_HUB_<FLAG> from the environment, as do the retentions of raw windows and rollups "
        "(EDGEFLEET_HUB_RAW_RETENTION, _MINUTE_RETENTION, _HOUR_RETENTION), as for the hubs.",
    )
    p.add_argument("--db", help=f"the hubs' SQLAlchemy URL (default {DEFAULTS['db']})")
    p.add_argument("--keys", help="the hubs' keys directory (default ./keys)")
    p.add_argument("--store", help="the hubs' bundle store (hard-example parts are pruned there; default ./store)")
    p.add_argument("--host", help=f"address of its /metrics (default {DEFAULTS['host']})")
    p.add_argument("--port", type=int, default=8001, help="port of its /metrics (default 8001; 0: none)")
    p.add_argument("--retention", type=int, help="seconds reports and diagnostics are kept (default 30 days)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between rounds (default 30)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_housekeep)

    models = sub.add_parser("models", help="bundles").add_subparsers(dest="sub", required=True)
    p = models.add_parser("push", help="upload a compiler build directory; the hub checks and signs it")
    p.add_argument("dir", help="bundle directory (manifest.json + artifacts)")
    client_args(p)
    p.set_defaults(func=cmd_models_push)
    p = models.add_parser("ls", help="list bundles, newest first (the digest is what `rollouts create` takes)")
    p.add_argument("--name", help="only this model's bundles")
    p.add_argument("--by-name", action="store_true", help="one row per model name, with its latest bundle")
    page_args(p)
    client_args(p)
    p.set_defaults(func=cmd_models_ls)
    add_show(models)  # models show ID (hub/cli_models.py)

    add_rollouts(sub)  # rollouts create|ls|status|pause|... (hub/cli_rollouts.py)

    dv = sub.add_parser("devices", help="list and inspect devices").add_subparsers(dest="sub", required=True)
    p = dv.add_parser("ls", help="list devices")
    p.add_argument("--q", help="filter by id or model name")
    p.add_argument(
        "--online",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only online devices (--no-online: only offline ones)",
    )
    p.add_argument("--group", help="only devices in this group")
    p.add_argument("--tag", help="only devices with this tag")
    p.add_argument("--bundle", metavar="DIGEST", help="only devices running this bundle")
    page_args(p)
    client_args(p)
    p.set_defaults(func=cmd_devices_ls)
    p = dv.add_parser("enroll", help="issue a one-time enrollment token for a device")
    p.add_argument("id", help="device id (becomes its MQTT username)")
    p.add_argument("--group", help="put the device in this group")
    p.add_argument("--tag", action="append", help="tag the device (repeatable)")
    client_args(p)
    p.set_defaults(func=cmd_devices_enroll)
    p = dv.add_parser("show", help="one device with its telemetry summary")
    p.add_argument("id")
    client_args(p)
    p.set_defaults(func=cmd_devices_show)
    p = dv.add_parser("bulk", help="tag/untag/set_group/retry up to 1000 devices; exit 1 unless every one is ok")
    p.add_argument("action", choices=("tag", "untag", "set_group", "retry"))
    p.add_argument("ids", nargs="+", metavar="ID")
    p.add_argument("--tag", help="tag/untag: the tag")
    p.add_argument("--group", help="set_group: the group ('' clears it)")
    client_args(p)
    p.set_defaults(func=cmd_devices_bulk)
    for name, what in (
        ("logs", "the agent's recent log lines (secrets redacted)"),
        ("selftest", "run the active bundle's self-test again"),
        ("restart", "restart the agent (it exits cleanly; its supervisor starts it)"),
        ("diagnostics", "versions, inventory, runtime, slots, redacted config, disk and checks"),
    ):
        p = dv.add_parser(name, help=f"remote diagnostics: {what}; exit 1 unless the device answers ok")
        p.add_argument("id")
        if name == "logs":
            p.add_argument("--lines", type=int, help="how many recent lines, 1..500 (default 200)")
        p.add_argument("--wait", type=float, default=30, help="seconds to wait for the answer (default %(default)s)")
        p.add_argument("--json", action="store_true", help="print the command and its result as the API has them")
        client_args(p)
        p.set_defaults(func=cmd_devices_command, command=name)

    gr = sub.add_parser("groups", help="device groups and their maintenance windows").add_subparsers(
        dest="sub", required=True
    )
    p = gr.add_parser("ls", help="groups, their device counts and windows (open or when they open)")
    page_args(p)
    put = gr.add_parser("set-window", help="set a group's maintenance window (rollouts install only inside it)")
    clear = gr.add_parser("clear-window", help="remove a group's maintenance window (installs at any time)")
    for q in (put, clear):
        q.add_argument("group")
    put.add_argument("spec", help="'days=mon-fri start=01:00 duration=3h' (days, start, duration: hub/windows.py)")
    put.add_argument("--tz", default="UTC", help="IANA time zone of start, e.g. Europe/Berlin (default %(default)s)")
    for q in (p, put, clear):
        client_args(q)
        q.set_defaults(func=cmd_groups)
    add_hard_examples(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if getattr(args, "token", "x") is None and hasattr(args, "hub"):
        ap.error("--token (or EDGEFLEET_HUB_TOKEN) is required")
    try:
        return int(args.func(args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except HubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
