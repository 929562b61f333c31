"""Put on ``PYTHONPATH`` by ``tests.bundle_cache`` for the builds it caches, and only there: with
``EDGEFLEET_TRACE_DEPS`` set, every file under ``EDGEFLEET_TRACE_ROOT`` (folders joined with
``os.pathsep``: the checkout and site-packages) that this process (or a
child, which inherits both) opens, imports included, is appended to that log as it is opened, so a
child that leaves through ``os._exit`` has written its part too. The cache keys a bundle on those
files' contents: what the build really read, not every source of the packages."""

from __future__ import annotations

import os
import sys

_LOG = os.environ.get("EDGEFLEET_TRACE_DEPS")
_ROOT = os.environ.get("EDGEFLEET_TRACE_ROOT")

if _LOG and _ROOT:
    _roots = tuple(os.path.realpath(r) + os.sep for r in _ROOT.split(os.pathsep))
    _seen: set[str] = set()
    _fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _hook(event: str, args: tuple[object, ...]) -> None:
        if event != "open" or not args or not isinstance(args[0], str) or args[0] in _seen:
            return
        _seen.add(args[0])
        path = os.path.realpath(os.path.join(os.getcwd(), args[0]))
        if path.startswith(_roots):
            os.write(_fd, (path + "\n").encode())  # one write per line with O_APPEND: never torn

    sys.addaudithook(_hook)
