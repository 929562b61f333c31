"""``edgefleet-hub rollouts create|ls|status|pause|resume|approve|cancel|rollback|retry``:
start a rollout (``--staged``, ``--stage``, ``--policy``, ``--channel``), list them, show one
(``--watch``: a live progress bar until it stops running) and drive it.

Exit codes as the other client commands: 0 ok (``status --watch``: the rollout completed) ·
1 hub unreachable or failing (``status --watch``: it paused, aborted or rolled back) · 2 bad
arguments or the hub's 4xx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .client import EXIT_FAIL, EXIT_OK, EXIT_USAGE, ClientError, call, client_args, page_args, show_page


def add_commands(sub: Any) -> None:
    """Register ``rollouts`` and its subcommands (``sub``: the top-level argparse subparsers)."""
    from .rollout import PHASES

    ro = sub.add_parser("rollouts", help="create and drive rollouts").add_subparsers(dest="sub", required=True)
    p = ro.add_parser("create", help="start a rollout; prints its id")
    p.add_argument("--bundle", required=True, help="bundle digest")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--all", action="store_true", help="every device (also ones that join later)")
    g.add_argument("--device", action="append", help="a device id (repeatable)")
    g.add_argument("--group", help="devices in this group")
    g.add_argument("--tag", help="devices with this tag")
    p.add_argument(
        "--staged",
        action="store_true",
        help="canary path: 1 -> 10%% -> 50%% -> 100%%, 60 s soak, gates, automatic rollback",
    )
    p.add_argument(
        "--policy",
        help='JSON policy overrides, e.g. \'{"soak_s": 300, "gates": {"max_p95_ratio": 1.3}}\' '
        "(fields: see hub/rollout.py)",
    )
    p.add_argument("--ignore-windows", action="store_true", help="install outside the groups' maintenance windows")
    p.add_argument("--channel", help="the model channel to install on (default: default; docs/lifecycle.md)")
    p.add_argument(
        "--stage",
        action="append",
        choices=("benchmark", "shadow"),
        help="prove the candidate on the first cohort before it switches (repeatable, in order); "
        'gates via --policy \'{"stages": {"benchmark": {"max_p95_ratio": 1.5}}}\' (docs/lifecycle.md)',
    )
    client_args(p)
    p.set_defaults(func=cmd_rollouts_create)
    p = ro.add_parser("ls", help="list rollouts, newest first")
    p.add_argument("--phase", choices=PHASES, help="only rollouts in this phase")
    page_args(p)
    client_args(p)
    p.set_defaults(func=cmd_rollouts_ls)
    p = ro.add_parser(
        "status",
        help="show a rollout (--watch: live progress until it stops running; "
        "exit 0 if it completed, 1 if it paused/aborted/rolled back)",
    )
    p.add_argument("id")
    p.add_argument("--watch", action="store_true", help="refresh until the rollout is no longer running")
    p.add_argument("--interval", type=float, default=1.0, help="--watch refresh seconds")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    client_args(p)
    p.set_defaults(func=cmd_rollouts_status)
    for action in ("pause", "resume", "approve", "cancel", "rollback", "retry"):
        p = ro.add_parser(action, help=f"{action} a rollout")
        p.add_argument("id")
        client_args(p)
        p.set_defaults(func=cmd_rollouts_action, action=action)


def _target(args: argparse.Namespace) -> dict[str, Any]:
    if args.all:
        return {"all": True}
    if args.device:
        return {"devices": args.device}
    if args.group:
        return {"group": args.group}
    return {"tag": args.tag}


def cmd_rollouts_create(args: argparse.Namespace) -> int:
    try:
        policy: dict[str, Any] = json.loads(args.policy) if args.policy else {}
    except ValueError as exc:
        raise ClientError(f"--policy is not valid JSON: {exc}", EXIT_USAGE) from None
    if not isinstance(policy, dict):
        raise ClientError("--policy must be a JSON object", EXIT_USAGE)
    if args.staged:
        policy.setdefault("preset", "staged")
    if args.ignore_windows:
        policy["ignore_windows"] = True
    if args.stage:  # the stages in the order given, with their gates from --policy or the defaults
        stages = policy.get("stages") or {}
        policy["stages"] = {**stages, "stages": args.stage} if isinstance(stages, dict) else args.stage
    body = {"bundle": args.bundle, "target": _target(args), "policy": policy}
    if args.channel:
        body["channel"] = args.channel
    out = call(args, "POST", "/api/v1/rollouts", body)
    print(out["id"])
    return EXIT_OK


def _render_status(st: dict[str, Any]) -> str:
    counts = ", ".join(f"{k}={v}" for k, v in sorted(st["counts"].items()))
    on = f" on channel {st['channel']}" if st.get("channel", "default") != "default" else ""
    return f"rollout {st['id']}{on} {st['phase']} cohort {st.get('cohort', 0)}: {counts or 'no devices'}"


def _progress(st: dict[str, Any], width: int = 30) -> str:
    c, total = st["counts"], max(1, st["total"])
    done = c.get("installed", 0)
    bad = sum(c.get(k, 0) for k in ("failed", "timed_out"))
    fill = int(width * done / total)
    failw = min(width - fill, int(width * bad / total + 0.999) if bad else 0)
    bar = "#" * fill + "x" * failw + "." * (width - fill - failw)
    sizes = st.get("cohort_sizes") or []
    cohort = f"cohort {st['cohort'] + 1}/{len(sizes)}" if sizes and st["cohort"] >= 0 else "cohort -"
    return f"[{bar}] {done}/{st['total']} installed, {bad} failed | {st['phase']} | {cohort}" + (
        f" | {st['reason']}" if st.get("reason") else ""
    )


def cmd_rollouts_status(args: argparse.Namespace) -> int:
    st = call(args, "GET", f"/api/v1/rollouts/{args.id}")
    if args.json:
        print(json.dumps(st))
        return EXIT_OK
    if not args.watch:
        print(_render_status(st))
        print(_progress(st))
        for g in st.get("gates") or []:
            print(f"  gate {g['name']:<22} {g['status']:<18} {g.get('detail', '')}")
        for d in st["devices"]:
            print(f"  {d['device_id']:<24} {d['state']:<14} seq {d['seq']:<4} {d['reason']}")
            for name, rec in (d.get("stages") or {}).items():
                print(f"    stage {name:<10} {rec.get('state', ''):<8} {rec.get('detail', '')}")
        return EXIT_OK
    tty = sys.stdout.isatty()
    last = ""
    while True:
        line = _progress(st)
        if tty:
            print("\r" + line[:200].ljust(120), end="", flush=True)
        elif line != last:
            print(line, flush=True)
        last = line
        if st["phase"] not in ("running",):
            if tty:
                print()
            return EXIT_OK if st["phase"] == "completed" else EXIT_FAIL
        time.sleep(args.interval)
        st = call(args, "GET", f"/api/v1/rollouts/{args.id}")


def cmd_rollouts_action(args: argparse.Namespace) -> int:
    st = call(args, "POST", f"/api/v1/rollouts/{args.id}/{args.action}")
    print(_render_status(st))
    return EXIT_OK


def cmd_rollouts_ls(args: argparse.Namespace) -> int:
    return show_page(args, "rollouts", "/api/v1/rollouts", phase=args.phase)
