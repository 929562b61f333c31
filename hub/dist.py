"""What the hub serves to devices being installed: ``make dist``'s folder (``--dist DIR``).

The folder holds the agent wheel (``edgefleet-<version>-py3-none-any.whl``), ``install.sh``,
``coral-setup.sh`` and ``edgefleet-agent.service``. ``GET /install.sh`` answers the installer with
three defaults filled in (:func:`render_installer`, pure): this hub's URL, the wheel's name and the
sha256 of the hub's current trust root, so that ``curl -fsSL https://HUB/install.sh | sudo sh -s
-- --token T`` needs nothing else. ``GET /dist/NAME`` answers those files and nothing else
(:func:`servable`: a fixed set of names, never a path).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import Invalid, NotFound

WHEEL = re.compile(r"edgefleet-(?P<version>[0-9][0-9A-Za-z.+!]*)-py3-none-any\.whl")
FILES = ("install.sh", "coral-setup.sh", "edgefleet-agent.service")
# a URL, a wheel name and a hex digest: what may sit between single quotes in a shell script
_SAFE = re.compile(r"[A-Za-z0-9:/._+!\[\]%@-]*")
_PLACEHOLDERS = ("EF_HUB_DEFAULT", "EF_WHEEL_DEFAULT", "EF_ROOT_SHA256_DEFAULT")


def servable(name: str) -> bool:
    """True for the names ``GET /dist/NAME`` answers: the fixed files and agent wheels."""
    return name in FILES or WHEEL.fullmatch(name) is not None


def _version_key(name: str) -> tuple[tuple[int, ...], str]:
    m = WHEEL.fullmatch(name)
    assert m is not None
    nums = tuple(int(p) for p in re.findall(r"\d+", m["version"].split("+")[0])[:4])
    return nums, name


def newest_wheel(names: list[str]) -> str:
    """The agent wheel with the highest version among ``names`` (NotFound when there is none)."""
    wheels = [n for n in names if WHEEL.fullmatch(n)]
    if not wheels:
        raise NotFound("agent wheel", "edgefleet-*-py3-none-any.whl (run `make dist`)")
    return max(wheels, key=_version_key)


def render_installer(script: str, hub_url: str, wheel: str, root_sha256: str) -> str:
    """``install.sh`` with its three ``EF_*_DEFAULT=""`` lines set to these values.

    Refuses (Invalid) a value that could break out of shell quoting and a script that lacks a
    placeholder (not this project's install.sh, or a changed one): a script that silently ignored
    the hub's values would download nothing or pin nothing."""
    values = dict(zip(_PLACEHOLDERS, (hub_url.rstrip("/"), wheel, root_sha256), strict=True))
    for key, value in values.items():
        if not _SAFE.fullmatch(value):
            raise Invalid("installer value", f"{key} {value!r} has characters a shell script cannot quote safely")
        line = f'{key}=""\n'
        if script.count(line) != 1:
            raise Invalid("install.sh", f"expected one line {line.strip()!r}, found {script.count(line)}")
        script = script.replace(line, f"{key}='{value}'\n")
    return script


def folder(dist: Path | None) -> Path:
    """The configured dist folder, or NotFound saying how to configure one."""
    if dist is None:
        raise NotFound("dist folder", "(start the hub with --dist DIR or EDGEFLEET_HUB_DIST; build it with make dist)")
    return dist
