"""Device installation (issue 16): the installer and the agent wheel, from ``make dist``'s folder.

Public, like ``/api/v1/root``: nothing here is secret (the enrollment token is what admits a
device, and it never passes through these routes). 404 names what is missing when the hub has
no ``--dist`` folder or the folder lacks the file.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from ... import dist
from ...errors import NotFound
from ..deps import FleetDep
from ..schemas import errors

router = APIRouter(tags=["install"])


@router.get("/install.sh", response_class=Response, responses=errors(400, 404))
def install_script(f: FleetDep, request: Request) -> Response:
    """The installer with this hub's URL, the agent wheel's name and the trust root's sha256 filled
    in: ``curl -fsSL https://HUB/install.sh | sudo sh -s -- --token TOKEN``."""
    folder = dist.folder(f.config.dist)
    path = folder / "install.sh"
    if not path.is_file():
        raise NotFound("dist file", "install.sh (run `make dist`)")
    wheel = dist.newest_wheel(sorted(p.name for p in folder.iterdir()))
    root_sha256 = hashlib.sha256(f.keys.root_bytes).hexdigest()
    body = dist.render_installer(path.read_text(), str(request.base_url), wheel, root_sha256)
    return Response(body, media_type="text/x-shellscript")


@router.get("/dist/{name}", response_class=FileResponse, responses=errors(404))
def dist_file(f: FleetDep, name: str) -> FileResponse:
    """The agent wheel, ``coral-setup.sh`` or ``edgefleet-agent.service`` (no other name)."""
    folder = dist.folder(f.config.dist)
    path = folder / name
    if not dist.servable(name) or not path.is_file():
        raise NotFound("dist file", name)
    kind = "application/octet-stream" if name.endswith(".whl") else "text/plain"
    return FileResponse(path, media_type=kind, filename=name)
