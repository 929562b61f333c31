"""``edgefleet-cloud``: the cloud fallback service.

    edgefleet-cloud serve --bundles DIR --root ROOT.json [--host 127.0.0.1 --port 8100]
                          [--api-key NAME:SECRET ...] [--max-batch 32 --max-wait-ms 2 ...]

    edgefleet-cloud check ARCHIVE.efb ... --root ROOT.json

Exit codes: 0 stopped cleanly / every archive is servable; 1 (check) an archive was refused;
2 bad usage or configuration (the message names the option); 3 the trust root file is not a
valid self-signed root, or has expired.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from protocol.errors import ProtocolError
from protocol.signing import Root, load_root_unverified

from . import config as cfg
from .errors import ConfigError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_TRUST = 0, 1, 2, 3
log = logging.getLogger("cloud")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgefleet-cloud",
        description="Serve verified edgefleet bundles (their ONNX twins) over HTTP.",
        epilog="Exit codes: 0 clean stop / all servable, 1 an archive refused (check), "
        "2 bad usage/configuration, 3 bad or expired trust root.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "check",
        help="verify archives and load them as serve would, without serving",
        description="Verify each archive against --root, open its ONNX twin and run the "
        "warm-up inference; print what would be served or why not.",
    )
    c.add_argument("archives", nargs="+", metavar="ARCHIVE.efb")
    c.add_argument("--root", required=True, metavar="ROOT.json", help="pinned trust root (envelope JSON)")
    s = sub.add_parser(
        "serve",
        help="run the HTTP service",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Load every signed *.efb archive in --bundles that verifies "
        "against --root, serve them, and pick up new ones as they appear.",
    )
    s.add_argument(
        "--bundles",
        required=True,
        metavar="DIR",
        help="folder of signed bundle archives (*.efb), e.g. the hub's STORE/archives",
    )
    s.add_argument("--root", required=True, metavar="ROOT.json", help="pinned trust root (envelope JSON)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8100)
    s.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="NAME:SECRET",
        help=f"accept this key (repeatable; also {cfg.ENV_API_KEYS}=k1,k2); none = no auth",
    )
    s.add_argument(
        "--per-key-inflight",
        type=int,
        default=0,
        metavar="N",
        help="at most N concurrent requests per API key, more get 429 (0: unlimited)",
    )
    s.add_argument(
        "--insecure-no-auth", action="store_true", help="allow serving without API keys on a non-loopback --host"
    )
    s.add_argument("--default-model", metavar="NAME", help="model used by POST /predict without ?model=")
    s.add_argument(
        "--poll",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between scans of --bundles for new versions (0: never)",
    )
    b = s.add_argument_group("micro-batching")
    b.add_argument("--max-batch", type=int, default=4, help="samples per onnxruntime run (see docs/cloud.md for why 4)")
    b.add_argument(
        "--max-wait-ms",
        type=float,
        default=0.0,
        help="how long the first queued sample waits for others (0: run what is queued)",
    )
    b.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes sharing the port, each with its own event loop and its own "
        "copy of every model (0: one per CPU; see docs/cloud.md)",
    )
    b.add_argument(
        "--workers",
        type=int,
        default=0,
        help="concurrent onnxruntime runs per model version and process (0: CPUs / processes)",
    )
    b.add_argument("--max-queue", type=int, default=256, help="queued samples per model before 429")
    b.add_argument(
        "--queue-timeout", type=float, default=5.0, metavar="S", help="a sample queued longer than this is answered 503"
    )
    b.add_argument(
        "--max-inflight",
        type=int,
        default=0,
        metavar="N",
        help="shed load: with N prediction requests in flight (across all --processes), more are "
        "answered 503 with Retry-After, not queued (0: 6 x processes x workers x max batch; see docs/cloud.md)",
    )
    b.add_argument(
        "--latency-budget-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="shed load: a prediction request whose expected latency (requests in flight / the rate "
        "they complete when busy) is over this is answered 503 with Retry-After, not queued "
        "(0: no latency bound, only --max-inflight; see docs/cloud.md)",
    )
    b.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body limit (413)")
    o = s.add_argument_group("onnxruntime")
    o.add_argument(
        "--intra-threads", type=int, default=1, help="intra-op threads per run (0: one per core; see docs/cloud.md)"
    )
    o.add_argument(
        "--solo-threads",
        type=int,
        default=0,
        help="intra-op threads for a request that runs alone (queue empty, other workers idle), on a "
        "second session of the model (0: one per core; 1: no second session)",
    )
    o.add_argument(
        "--solo-inline-ms",
        type=float,
        default=2.0,
        metavar="MS",
        help="a request that finds the queue empty and the workers idle, for a model whose lone "
        "requests take at most this long, runs on the event loop itself: no hand-off to a worker "
        "thread and back (0: never)",
    )
    o.add_argument("--inter-threads", type=int, default=1, help="inter-op threads")
    o.add_argument("--spinning", action="store_true", help="let idle ORT threads spin (burns CPU)")
    o.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"])
    h = s.add_argument_group("hub registry (optional)")
    h.add_argument("--hub", metavar="URL", help="also pull signed archives from this hub")
    h.add_argument("--token", help=f"hub bearer token (or {cfg.ENV_HUB_TOKEN})")
    h.add_argument("--hub-poll", type=float, default=30.0, metavar="S", help="seconds between hub polls")
    s.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    s.add_argument("--log-level", default="INFO")
    return p


def load_root(path: str) -> Root:
    with open(path, "rb") as f:
        root = load_root_unverified(f.read())
    if root.expires <= time.time():
        raise ProtocolError(f"trust root v{root.version} expired at {root.expires}")
    return root


def check(paths: list[str], root_path: str) -> int:
    from pathlib import Path

    from .bundles import read_bundle
    from .errors import BundleRefused
    from .models import LoadOptions, load_model

    try:
        root = load_root(root_path)
    except (OSError, ProtocolError) as exc:
        print(f"edgefleet-cloud: trust root {root_path}: {exc}", file=sys.stderr)
        return EXIT_TRUST
    rc = EXIT_OK
    for i, name in enumerate(paths, 1):
        try:
            model = load_model(read_bundle(Path(name), root, int(time.time())), LoadOptions())
        except BundleRefused as exc:
            print(f"[{i}/{len(paths)}] {name}: REFUSED ({exc.reason}): {exc.detail}")
            rc = EXIT_REFUSED
            continue
        s = model.spec
        image = (
            f", image {s.image.height}x{s.image.width}x{s.image.channels} {s.image.layout}"
            if s.image
            else ", tensors only"
        )
        print(
            f"[{i}/{len(paths)}] {name}: servable: {s.name} {s.version} digest {s.digest} "
            f"input {s.input.describe()}{image}, {len(s.labels)} labels"
        )
        model.close()
    return rc


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "check":
        return check(args.archives, args.root)
    try:
        config = cfg.build(
            bundles=args.bundles,
            root=args.root,
            host=args.host,
            port=args.port,
            api_keys=args.api_key,
            default_model=args.default_model,
            poll_s=args.poll,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            queue_timeout_s=args.queue_timeout,
            workers=args.workers,
            intra_threads=args.intra_threads,
            solo_threads=args.solo_threads,
            solo_inline_ms=args.solo_inline_ms,
            latency_budget_ms=args.latency_budget_ms,
            max_inflight=args.max_inflight,
            inter_threads=args.inter_threads,
            spinning=args.spinning,
            optimization=args.graph_optimization,
            max_body_bytes=args.max_body_bytes,
            hub=args.hub,
            token=args.token,
            hub_poll_s=args.hub_poll,
            per_key_inflight=args.per_key_inflight,
            insecure_no_auth=args.insecure_no_auth,
            access_log=args.access_log,
            log_level=args.log_level,
            processes=args.processes,
        )
    except ConfigError as exc:
        print(f"edgefleet-cloud: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        root = load_root(str(config.root))
    except (OSError, ProtocolError) as exc:
        print(f"edgefleet-cloud: trust root {config.root}: {exc}", file=sys.stderr)
        return EXIT_TRUST

    log.info(
        "edgefleet-cloud on http://%s:%d (bundles %s, root v%d, %s, %d process(es) x %d worker(s))",
        config.host,
        config.port,
        config.bundles,
        root.version,
        f"{len(config.api_keys)} API key(s)" if config.auth_required else "no API keys",
        config.processes,
        config.batch.workers,
    )
    if config.api_keys:  # the one place slot -> name is shown: the operator's log, not /metrics
        log.info(
            "API key slots in edgefleet_cloud_key_requests_total{slot}: %s",
            ", ".join(f"{k.slot}={k.name}" for k in config.api_keys),
        )
    from .processes import listen, serve_process, supervise

    if config.processes == 1:
        serve_process(config, root, None)
        return EXIT_OK
    try:
        sock = listen(config.host, config.port)
    except OSError as exc:
        print(f"edgefleet-cloud: --host {config.host} --port {config.port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return supervise(config, sock)


if __name__ == "__main__":
    sys.exit(main())
