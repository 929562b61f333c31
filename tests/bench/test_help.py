"""``python -m bench NAME --help`` answers for every bench `python -m bench` lists (an operator's
first command); a help string with a bare ``%`` once made argparse raise instead."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.__main__ import names


@pytest.mark.parametrize("name", names())
def test_each_bench_answers_help_with_its_options(name: str):
    out = subprocess.run(
        [sys.executable, "-m", "bench", name, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"python -m bench {name}" in out.stdout and "--" in out.stdout, out.stdout[:500]


def test_the_bench_list_names_only_benches():
    assert "floor_server" not in names() and "seed_api" not in names()
