"""`python -m bench NAME [args]` runs bench/NAME.py; `python -m bench all` runs every benchmark."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

SKIP = {"__main__", "report", "seed_api", "peers", "floor_server"}  # servers the benches run, not benches


def names() -> list[str]:
    here = Path(__file__).parent
    return sorted(
        m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in SKIP and not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    available = names()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks: " + ", ".join(available))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name == "all":
        rc = 0
        for n in available:
            print(f"== bench {n}")
            rc |= int(importlib.import_module(f"bench.{n}").main(rest) or 0)
        return rc
    if name not in available:
        print(f"unknown benchmark {name!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    return int(importlib.import_module(f"bench.{name}").main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
