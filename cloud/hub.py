"""Pull signed archives from the hub's registry into the bundle folder (``--hub URL --token T``).

Contract (hub REST API, bearer token with at least the viewer role):

* ``GET /api/v1/bundles?limit=&offset=`` -> ``{"items": [{"digest", "name", "version",
  "archive_sha256", "size", "created", "artifacts": [{"role", ...}], ...}], "total", ...}``
* ``GET /api/v1/bundles/{digest}/archive`` -> the archive bytes (``EFB1`` ...)

:func:`plan_pulls` (pure) picks, per model name, the ``keep`` newest bundles that carry an
``onnx`` artifact and are not in the folder yet. The puller downloads each one bounded by the
listed size, checks its SHA-256 against ``archive_sha256`` (transport integrity; *trust* still
comes from the signature check when the folder loads it), writes ``<archive_sha256>.efb``
atomically and asks the folder to sync. A hub that is down or answers garbage is logged and
retried next poll; the service keeps serving what it has. Listed bundles with no ``onnx``
artifact are not pulled; they are noted in the catalog with the hub's copy of their manifest's
twin status (why the compiler withheld the twin), so a request for them says why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import Reason

from .bundles import no_twin_why
from .config import HubSource
from .errors import NoTwin
from .folder import SUFFIX, Folder

log = logging.getLogger(__name__)

PAGE = 100
MAX_ITEMS = 2000
TIMEOUT_S = 30.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class HubError(Exception):
    """The hub answered something we cannot use, or could not be reached."""


@dataclass(frozen=True)
class Listed:
    digest: str
    name: str
    version: str
    archive_sha256: str
    size: int
    created: int
    has_onnx: bool
    no_twin: str | None = None  # has_onnx False: why, from the listed manifest's model.twin


def parse_item(obj: Any) -> Listed:
    if not isinstance(obj, dict):
        raise HubError(f"bundle list item {obj!r:.80} is not an object")
    try:
        digest, sha = str(obj["digest"]), str(obj["archive_sha256"])
        size, created = int(obj["size"]), int(obj.get("created", 0))
        name, version = str(obj["name"]), str(obj["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise HubError(f"bundle list item {str(obj)[:80]!r} lacks {exc}") from None
    if not _HEX64.match(digest) or not _HEX64.match(sha) or size <= 0:
        raise HubError(f"bundle list item {digest[:16]!r}: bad digest, archive_sha256 or size {size}")
    arts = obj.get("artifacts")
    has_onnx = True  # unknown shape: pull it and let verification decide
    if isinstance(arts, list):
        has_onnx = any(isinstance(a, dict) and a.get("role") == "onnx" for a in arts)
    model = obj.get("model")
    why = None if has_onnx else no_twin_why(model if isinstance(model, dict) else {})
    return Listed(digest, name, version, sha, size, created, has_onnx, why)


def plan_pulls(items: Iterable[Listed], have: set[str], keep: int = 2) -> list[Listed]:
    """The archives to download: per name the ``keep`` newest ONNX-carrying bundles not in ``have``
    (a set of archive SHA-256s already in the folder)."""
    by_name: dict[str, list[Listed]] = {}
    for it in items:
        if it.has_onnx:
            by_name.setdefault(it.name, []).append(it)
    out: list[Listed] = []
    for name in sorted(by_name):
        newest = sorted(by_name[name], key=lambda i: (i.created, i.version), reverse=True)[:keep]
        out += [i for i in newest if i.archive_sha256 not in have]
    return out


class HubPuller:
    def __init__(self, source: HubSource, directory: Path, folder: Folder, keep: int = 2) -> None:
        self.source = source
        self.directory = directory
        self.folder = folder
        self.keep = keep
        self.listed_no_twin: list[Listed] = []  # from the last listing; noted on the event loop
        host = urllib.parse.urlsplit(source.url).hostname or ""
        if source.url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
            # archives are signed, so tampering is caught; the bearer token is not protected
            log.warning("hub %s is plain HTTP: the hub token crosses the network unencrypted", source.url)

    def _get(self, path: str, limit: int) -> bytes:
        req = urllib.request.Request(
            self.source.url + path, headers={"Authorization": f"Bearer {self.source.token}", "Accept": "*/*"}
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:  # noqa: S310 - URL from config
                data: bytes = resp.read(limit + 1)
        except urllib.error.HTTPError as exc:
            raise HubError(f"GET {path}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise HubError(f"GET {path}: {getattr(exc, 'reason', exc)}") from None
        if len(data) > limit:
            raise HubError(f"GET {path}: more than {limit} bytes")
        return data

    def list_bundles(self) -> list[Listed]:
        items: list[Listed] = []
        offset = 0
        while offset < MAX_ITEMS:
            raw = self._get(f"/api/v1/bundles?limit={PAGE}&offset={offset}", 16 * 1024 * 1024)
            try:
                doc = json.loads(raw)
                page = doc["items"]
                total = int(doc.get("total", 0))
            except (ValueError, KeyError, TypeError) as exc:
                raise HubError(f"bundle list is not {{'items': [...]}} ({exc})") from None
            if not isinstance(page, list):
                raise HubError("bundle list 'items' is not a list")
            for obj in page:
                try:
                    items.append(parse_item(obj))
                except HubError as exc:
                    log.warning("hub: skipping %s", exc)
            offset += len(page)
            if not page or offset >= total:
                break
        return items

    def download(self, item: Listed) -> Path:
        data = self._get(f"/api/v1/bundles/{item.digest}/archive", item.size)
        got = hashlib.sha256(data).hexdigest()
        if len(data) != item.size or got != item.archive_sha256:
            raise HubError(
                f"archive of {item.name} {item.version}: {len(data)} bytes sha256 {got[:12]}, "
                f"listed {item.size} bytes sha256 {item.archive_sha256[:12]}"
            )
        path = self.directory / f"{item.archive_sha256}{SUFFIX}"
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.", suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise HubError(f"cannot write {path}: {exc.strerror} (is --bundles writable?)") from None
        return path

    def have(self) -> set[str]:
        return {p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}")}

    def pull_once(self) -> list[Path]:
        """Blocking: list, pick, download. Raises HubError if the listing fails."""
        got: list[Path] = []
        items = self.list_bundles()
        self.listed_no_twin = [it for it in items if not it.has_onnx]
        for item in plan_pulls(items, self.have(), self.keep):
            try:
                got.append(self.download(item))
                log.info("hub: pulled %s version %s (%d bytes)", item.name, item.version, item.size)
            except HubError as exc:
                log.warning("hub: %s", exc)
        return got

    async def poll(self) -> None:
        """One pull; any failure is logged, never raised (the service keeps serving)."""
        try:
            got = await asyncio.to_thread(self.pull_once)
            self.note_no_twin()
            if got:
                await self.folder.sync()
        except HubError as exc:
            log.warning("hub %s: %s; retrying in %.0fs", self.source.url, exc, self.source.poll_s)
        except Exception:  # noqa: BLE001 - the puller must outlive any one bad poll
            log.exception("hub pull failed; retrying in %.0fs", self.source.poll_s)

    def note_no_twin(self) -> None:
        """Tell the catalog which listed bundles have no twin, and why (on the event loop)."""
        catalog = self.folder.catalog
        listed = {f"hub:{it.digest}": it for it in self.listed_no_twin}
        for source in catalog.no_twin_sources():
            if source.startswith("hub:") and source not in listed:
                catalog.forget_no_twin(source)
        for source, it in listed.items():
            why = it.no_twin or "no 'onnx' artifact"
            catalog.note_no_twin(
                source, NoTwin(f"hub bundle {it.digest[:12]}", Reason.MISSING_ARTIFACT.value, it.name, it.version, why)
            )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.source.poll_s)
            await self.poll()
