"""README's "A tour, by hand" runs as written (issue 17): the fenced blocks marked
``<!-- tour -->`` are extracted in order and run in one bash session, as an operator pasting
them would, from a fresh folder holding only the checkout's ``.venv``: a real Mosquitto, the
real hub, compiler, agent and cloud processes. The one change made to the text is its ports
(1883, 8000, 8780, 8100), swapped for free loopback ports so the test never meets a broker or
hub already running on this machine. Each block must exit 0 and print what it is for; the
process group the tour started is killed at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from demo.launcher import free_ports

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"<!-- tour -->\s*```sh\n(.*?)```", re.S)
PORTS = ("1883", "8000", "8780", "8100")  # broker, hub, agent local API, cloud
TOUR_TIMEOUT_S = 900  # a TensorFlow build and a 60 s canary soak on a shared 2-core machine


def tour_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def test_the_tour_is_marked_block_by_block_and_the_first_screen_still_gives_make_demo_and_make_test() -> None:
    text = README.read_text()
    blocks = tour_blocks(text)
    steps = [int(m.group(1)) for b in blocks for m in [re.match(r"# (\d+)\. ", b)] if m]
    assert steps == list(range(len(blocks))) and len(blocks) >= 8, steps  # every block is a numbered step
    tour = "\n".join(blocks)
    for needle in (
        ". .venv/bin/activate",
        "export ADMIN_TOKEN=",
        "EDGEFLEET_HUB_TOKEN=$ADMIN_TOKEN",
        "mosquitto -p 1883",
        "edgefleet-agent enroll --hub http://127.0.0.1:8000 --token",
        "edgefleet-cloud serve",
        "--default-model digits",
        "kill $(jobs -p)",
    ):
        assert needle in tour, needle
    first_screen = "\n".join(text.splitlines()[:15])
    assert "make demo" in first_screen and "make test" in first_screen


def script(blocks: list[str], ports: dict[str, int]) -> str:
    """One bash script: the blocks in order, each between markers, the ports swapped."""
    parts = ["set -euo pipefail"]
    for i, block in enumerate(blocks):
        body = re.sub(r"\b(" + "|".join(PORTS) + r")\b", lambda m: str(ports[m.group(1)]), block)
        parts += [f"echo '@@begin {i}'", body, f"echo '@@end {i}'"]
    return "\n".join(parts) + "\n"


def outputs(stdout: str) -> dict[int, str]:
    return {int(n): body for n, body in re.findall(r"@@begin (\d+)\n(.*?)@@end \1\n", stdout, re.S)}


def json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    for tool in ("mosquitto", "curl", "timeout"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH (scripts/test-deps.sh installs it); the tour uses it")
    blocks = tour_blocks(README.read_text())
    ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
    (tmp_path / ".venv").symlink_to(REPO / ".venv")  # what `make install` leaves in a checkout
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    proc = subprocess.Popen(
        ["bash", "-s"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the tour's background processes share this group: killed below
    )
    try:
        stdout, _ = proc.communicate(script(blocks, ports), timeout=TOUR_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"the tour did not finish in {TOUR_TIMEOUT_S} s; its output:\n{stdout[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    logs = "\n".join(
        f"--- {p.name}:\n{p.read_text(errors='replace')[-2000:]}" for p in sorted((tmp_path / "tour").glob("*.log"))
    )
    done = outputs(stdout)
    assert proc.returncode == 0 and sorted(done) == list(range(len(blocks))), (
        f"tour step {max(done, default=-1) + 1} failed (exit {proc.returncode}):\n{stdout[-4000:]}\n{logs}"
    )
    tour = tmp_path / "tour"
    assert (tour / "keys" / "root.json").is_file()  # step 1
    assert "int8" in done[3]  # step 3: inspect shows the eval report
    assert "digits" in done[4]  # step 4: models ls lists the pushed model
    assert "completed" in done[6]  # step 6: the rollout watched to the end
    device, cloud = json_lines(done[7])
    assert device["top"] and device["predictions"], device
    assert cloud["model"]["name"] == "digits" and cloud["top"], cloud  # type: ignore[index]
    # one shape from both: [N, K], one row of the ten digits' scores
    assert [len(r) for r in device["predictions"]] == [len(r) for r in cloud["predictions"]] == [10]  # type: ignore[attr-defined]
    assert "Traceback" not in logs, logs
