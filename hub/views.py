"""Device views, hub side: the archive of a bundle with only the artifacts a device uses
(:mod:`protocol.view`), for agents that announced :data:`protocol.view.FEATURE`.

Built lazily, the first time a desired document names it, from the stored signed envelope and
artifacts, and kept content-addressed beside the full archive (``archives/<view sha256>.efb``,
so chunks and repairs read it like any archive), with its plan in ``views/<full archive
sha256>.json`` (a re-signed bundle has a new full archive, hence a new view) and again in
``views/archive-<view sha256>.json`` (for fetch repairs, which name the archive). A bundle whose
view would hold every artifact has none (``{}``: devices fetch the full archive). Chunks are
published retained on the ordinary chunk topics of the view's archive, once per hub process,
before the first document that names them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from protocol import view as pview
from protocol.bundle import ChunkPlan, pack_archive
from protocol.errors import ProtocolError
from protocol.signing import Envelope

from .bundles import plan_chunk_messages
from .errors import NotFound
from .fleet import Fleet
from .models import Bundle, Device
from .transport import Outgoing

log = logging.getLogger(__name__)

_lock = threading.Lock()
# per hub (tests run several in one process): view archives whose chunks it has published
_published: weakref.WeakKeyDictionary[Fleet, set[str]] = weakref.WeakKeyDictionary()


def announced(d: Device, feature: str) -> bool:
    """Whether ``d``'s agent listed ``feature`` in its status inventory's ``features``."""
    return lists(d.inventory, feature)


def lists(inventory: Mapping[str, Any] | None, feature: str) -> bool:
    """Whether a stored inventory lists ``feature`` in its ``features``."""
    features = (inventory or {}).get("features")
    return isinstance(features, list) and feature in features


def capable(d: Device) -> bool:
    """Whether ``d``'s agent announced it installs device views."""
    return announced(d, pview.FEATURE)


def for_device(fleet: Fleet, d: Device, b: Bundle) -> tuple[pview.BundleView | None, list[Outgoing]]:
    """The device view of ``b`` for ``d`` and its chunk messages still to publish; ``(None, [])``
    for an agent that did not announce the feature or a bundle whose view is the whole archive."""
    if not capable(d):
        return None, []
    view = of(fleet, b)
    if view is None:
        return None, []
    with _lock:
        done = _published.setdefault(fleet, set())
        if view.plan.sha256 in done:
            return view, []
        done.add(view.plan.sha256)
    return view, plan_chunk_messages(fleet, view.plan)


def of(fleet: Fleet, b: Bundle) -> pview.BundleView | None:
    """``b``'s device view, built and stored the first time; None when it would drop nothing
    or the stored bundle cannot be read (logged: devices then get the full archive)."""
    folder = fleet.store.root / "views"
    path = folder / f"{b.archive_sha256}.json"
    try:
        return _parse(path.read_bytes())
    except FileNotFoundError:
        pass
    try:
        envelope = fleet.store.envelope(b.digest)
        manifest = fleet.store.manifest(b.digest)
        keep = pview.needed(manifest)
        if len(keep) == len(manifest.artifacts):
            doc: dict[str, Any] = {}
            view = None
        else:
            arts = {a.name: fleet.store.artifact(b.digest, a.name) or b"" for a in keep}
            names = [a.name for a in keep]
            archive = pack_archive(Envelope.parse(envelope), arts, only=names)
            plan = ChunkPlan.of(archive, b.chunk_size)
            _write(fleet.store.archive_path(plan.sha256), archive)
            view = pview.BundleView(tuple(names), plan)
            doc = view.to_dict()
            _write(folder / f"archive-{plan.sha256}.json", json.dumps(doc).encode())
            log.info(
                "device view of %s@%s %s: %d of %d bytes (%s)",
                manifest.name,
                manifest.version,
                b.digest[:12],
                plan.size,
                b.size,
                ", ".join(names),
            )
    except (NotFound, ProtocolError, OSError) as exc:
        log.warning("no device view of %s: %s", b.digest[:12], exc)
        return None
    _write(path, json.dumps(doc).encode())
    return view


def plan_of_archive(fleet: Fleet, archive_sha: str) -> ChunkPlan | None:
    """The chunk plan of a device-view archive this hub built, by its sha256 (fetch repairs)."""
    try:
        view = _parse((fleet.store.root / "views" / f"archive-{archive_sha}.json").read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return view.plan if view is not None else None


def _parse(data: bytes) -> pview.BundleView | None:
    obj = json.loads(data)
    return pview.BundleView.from_dict(obj) if obj else None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
