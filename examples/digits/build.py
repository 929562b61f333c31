"""Example: the end-to-end default. Trains the digits CNN on scikit-learn's 8x8 digits and builds
its bundle (float + full-int8 TFLite, ONNX twin, accuracy gate, drift baseline, self-test).

    python examples/digits/build.py --out build/digits [--epochs 12] [--holdout build/holdout.npz]

Equivalent to ``edgefleet-compile digits ...``; exit codes are the compiler's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compiler.__main__ import main as compile_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=Path)
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    args = ["digits", "--out", str(a.out), "--epochs", str(a.epochs), "--seed", str(a.seed)]
    args += ["--holdout", str(a.holdout)] if a.holdout else []
    args += ["--quiet"] if a.quiet else []
    return compile_main(args)


if __name__ == "__main__":
    sys.exit(main())
