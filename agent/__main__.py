"""edgefleet-agent: the device daemon and its operator commands.

Exit codes: :data:`EXIT_CODES` (the ``--help`` epilog); an error ends a command with the
``exit_code`` its class carries (:mod:`agent.errors`, the one place codes are chosen).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from . import AGENT_VERSION
from .errors import EXIT_FAILED, EXIT_NOT_YET, EXIT_OK, EXIT_USAGE, ConfigError, EnrollError, StartupError

EXIT_CODES = """exit codes:
  0  success
  1  the command ran and failed: cannot start (bad root, unwritable state dir, port in use),
     enrollment refused, agent not reachable, self-test failed, nothing to roll back to,
     the doctor found a problem
  2  bad usage or configuration: the message names the key and the value
  3  not implemented yet
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="edgefleet device agent: verifies, installs and serves signed model bundles.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"edgefleet-agent {AGENT_VERSION}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--config", "-c", type=Path, required=True, help="path to agent.toml")
        sp.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        return sp

    add("run", "run the daemon (MQTT, installs, local inference API, telemetry)")
    add("status", "print the running agent's status (from its local API) as JSON")
    add("selftest", "run the active bundle's self-test vectors now (no daemon needed)")
    add("rollback", "switch back to the previous slot (daemon must be stopped)")
    doc = add(
        "doctor",
        "check this device (Edge TPU, libedgetpu, LiteRT, delegate, permissions, temperatures, throttling, "
        "disk, clock, broker) and print the fix for each problem; exit 1 if anything failed",
    )
    doc.add_argument("--json", action="store_true", help="print the findings as JSON")
    en = sub.add_parser(
        "enroll",
        help="trade a hub enrollment token for credentials; write agent.toml + root.json",
        description="Trade a one-time enrollment token (edgefleet-hub devices enroll) for this "
        "device's MQTT credentials and the trust root; write agent.toml and root.json "
        "(mode 0600, or 0640 owned by --group) next to it.",
    )
    en.add_argument("--hub", required=True, help="hub base URL, e.g. https://hub.example.com")
    en.add_argument("--token", required=True, help="the one-time enrollment token")
    en.add_argument("--config", "-c", type=Path, required=True, help="agent.toml to write")
    en.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgefleet-agent"))
    en.add_argument("--board", default="rpi4")
    en.add_argument("--http-port", type=int, default=8780)
    en.add_argument("--root-sha256", help="expected SHA-256 of root.json (from the operator); refuse any other")
    en.add_argument("--force", action="store_true", help="replace existing files")
    en.add_argument(
        "--group", help="write the files 0640 owned by this group (name or id; the service user's: edgefleet), not 0600"
    )
    en.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "enroll":
        return _enroll(args)
    from .config import load

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"edgefleet-agent: config error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.command == "run":
        return _run(cfg, args.config)
    if args.command == "status":
        return _status(cfg)
    if args.command == "selftest":
        return _selftest(cfg)
    if args.command == "rollback":
        return _rollback(cfg)
    if args.command == "doctor":
        return _doctor(cfg, args.config, args.json)
    print(f"edgefleet-agent {args.command}: not implemented yet", file=sys.stderr)
    return EXIT_NOT_YET


def _enroll(args: argparse.Namespace) -> int:
    from .enrollment import enroll

    if not 0 <= args.http_port <= 65535:
        print(
            f"edgefleet-agent enroll: --http-port must be 0..65535 (0 = any free port), got {args.http_port}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        e = enroll(
            args.hub,
            args.token,
            args.config,
            args.state_dir,
            args.board,
            args.http_port,
            args.root_sha256,
            args.force,
            args.group,
        )
    except EnrollError as exc:
        print(f"edgefleet-agent enroll: {exc}", file=sys.stderr)
        return exc.exit_code
    hint = "" if args.root_sha256 else " (compare it with sha256sum of the hub's root.json)"
    print(f"enrolled {e.device_id}: broker {e.broker}; root sha256 {e.root_sha256}{hint}; wrote {args.config}")
    return EXIT_OK


def _doctor(cfg: object, path: Path, as_json: bool) -> int:
    from .config import AgentConfig
    from .doctor import exit_code, gather, judge, to_json

    assert isinstance(cfg, AgentConfig)
    findings = judge(gather(cfg, path))
    if as_json:
        print(json.dumps(to_json(findings), indent=2))
    else:
        print("\n".join(x.line() for x in findings))
        bad = sum(x.status == "fail" for x in findings)
        print(f"doctor: {bad} problem(s)" + (": fix them as above, then run the doctor again" if bad else ""))
    return exit_code(findings)


def _run(cfg: object, config_path: Path) -> int:
    from . import memory
    from .config import AgentConfig
    from .daemon import Agent
    from .diagnostics import LogRing

    assert isinstance(cfg, AgentConfig)
    memory.pin_mmap_threshold()  # before the model loads: large buffers stay mmapped (agent.memory)
    memory.one_arena()  # before any thread starts: one heap for all threads (agent.memory)
    ring = LogRing((cfg.password, cfg.cloud_api_key))  # what the hub's ``logs`` command reads
    logging.getLogger().addHandler(ring)
    try:
        agent = Agent(cfg, ring, config_path)
    except StartupError as exc:
        print(f"edgefleet-agent: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code

    def stop(signum: int, frame: object) -> None:
        agent.stop_event.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    except StartupError as exc:
        print(f"edgefleet-agent: cannot start: {exc}", file=sys.stderr)
        return exc.exit_code
    return EXIT_OK


def _status(cfg: object) -> int:
    from .config import AgentConfig

    assert isinstance(cfg, AgentConfig)
    try:
        port = int(cfg.http_port_file.read_text().strip()) if cfg.http_port == 0 else cfg.http_port
        with urllib.request.urlopen(f"http://{cfg.http_host}:{port}/v1/status", timeout=5) as r:
            print(json.dumps(json.loads(r.read()), indent=2))
    except (OSError, ValueError, urllib.error.URLError) as exc:
        print(f"edgefleet-agent status: agent not reachable ({exc})", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _selftest(cfg: object) -> int:
    from protocol.errors import ProtocolError

    from .config import AgentConfig
    from .daemon import load_root
    from .slots import Slots
    from .updater import selftest_slot

    assert isinstance(cfg, AgentConfig)
    try:
        root = load_root(cfg)
    except StartupError as exc:
        print(f"edgefleet-agent selftest: {exc}", file=sys.stderr)
        return exc.exit_code
    slots = Slots(cfg.state_dir)
    st = slots.load()
    if st.active is None:
        print("edgefleet-agent selftest: no active bundle", file=sys.stderr)
        return EXIT_FAILED
    try:
        manifest = slots.check(st.active.digest, root)
    except (ProtocolError, OSError) as exc:
        print(f"edgefleet-agent selftest: active slot damaged: {exc}", file=sys.stderr)
        return EXIT_FAILED
    model, res = selftest_slot(slots, st.active, manifest, cfg.threads)
    print(
        json.dumps(
            {
                "bundle": st.active.to_dict(),
                "ok": res.ok,
                "reason": res.reason.value,
                "detail": res.detail,
                **res.metrics(),
            },
            indent=2,
        )
    )
    if model is not None:
        model.close()
    return EXIT_OK if res.ok else EXIT_FAILED


def _rollback(cfg: object) -> int:
    from .config import AgentConfig
    from .slots import Slots, SlotsState

    assert isinstance(cfg, AgentConfig)
    slots = Slots(cfg.state_dir)
    st = slots.load()
    if st.previous is None:
        print("edgefleet-agent rollback: no previous slot kept", file=sys.stderr)
        return EXIT_FAILED
    if cfg.http_port_file.exists():
        try:
            port = int(cfg.http_port_file.read_text().strip())
            urllib.request.urlopen(f"http://{cfg.http_host}:{port}/healthz", timeout=2)
            print("edgefleet-agent rollback: the daemon is running; stop it first", file=sys.stderr)
            return EXIT_FAILED
        except urllib.error.HTTPError:
            print("edgefleet-agent rollback: the daemon is running; stop it first", file=sys.stderr)
            return EXIT_FAILED
        except (OSError, ValueError):
            pass
    slots.save(SlotsState(active=st.previous, previous=st.active, trial=True))
    print(f"rolled back to {st.previous.name} {st.previous.version}; it is self-tested at the next start")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
