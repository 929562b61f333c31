"""Keep the catalog in step with a folder of signed archives (``*.efb``), polling it.

:func:`plan` is the pure decision; :class:`Folder` is the I/O shell that runs it.

Rules:

* a file is (re)read when it is new or its (size, mtime) stamp changed; a file that was refused
  is not retried until its stamp changes (a half-written file fails verification, then is read
  again once the writer finishes and the stamp moves);
* a new version is loaded *before* anything is unloaded, so there is no moment with nothing to
  serve; a file that disappears (or is replaced by another digest) has its version unloaded,
  and unloading drains the requests already queued for it;
* every load is verified against the pinned root first; a refusal is logged with its reason
  code and counted, and the service keeps serving everything else;
* a file whose bundle has no ONNX twin is noted in the catalog (:meth:`Catalog.note_no_twin`)
  while it stays, so a request for that model says why it is not served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from protocol.signing import Root

from .bundles import read_bundle
from .errors import BundleRefused, NoTwin
from .metrics import Metrics
from .models import Catalog, LoadOptions, ServedModel, load_model

log = logging.getLogger(__name__)

SUFFIX = ".efb"


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Seen:
    stamp: Stamp
    digest: str | None  # None: refused


@dataclass(frozen=True)
class ScanPlan:
    read: tuple[str, ...]  # files to verify and load (new or changed)
    gone: tuple[str, ...]  # files no longer present

    @property
    def empty(self) -> bool:
        return not self.read and not self.gone


def plan(seen: Mapping[str, Seen], present: Mapping[str, Stamp]) -> ScanPlan:
    read = tuple(sorted(f for f, st in present.items() if f not in seen or seen[f].stamp != st))
    gone = tuple(sorted(f for f in seen if f not in present))
    return ScanPlan(read, gone)


class Folder:
    def __init__(
        self,
        directory: Path,
        root: Root,
        catalog: Catalog,
        opts: LoadOptions,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.root = root
        self.catalog = catalog
        self.opts = opts
        self.metrics = metrics
        self.clock = clock
        self.seen: dict[str, Seen] = {}
        self.refusals: dict[str, BundleRefused] = {}
        self._lock = asyncio.Lock()

    def stamps(self) -> dict[str, Stamp]:
        out: dict[str, Stamp] = {}
        try:
            entries = list(self.directory.iterdir())
        except OSError as exc:
            log.error("cannot list bundle folder %s: %s", self.directory, exc.strerror)
            return {f: s.stamp for f, s in self.seen.items()}  # keep serving what we have
        for p in entries:
            if p.suffix != SUFFIX or p.name.startswith("."):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file():
                out[p.name] = Stamp(st.st_size, st.st_mtime_ns)
        return out

    def _load(self, name: str) -> ServedModel:
        bundle = read_bundle(self.directory / name, self.root, int(self.clock()))
        self.catalog.check_new(bundle.name, bundle.version, bundle.digest, name)
        if self.catalog.has(bundle.digest):
            raise _Duplicate(bundle.digest)
        return load_model(bundle, self.opts, self.metrics)

    async def sync(self) -> ScanPlan:
        """One scan: load new/changed archives (in a thread), then unload what went away."""
        async with self._lock:
            present = self.stamps()
            p = plan(self.seen, present)
            drop: list[str] = []
            for name in p.read:
                old = self.seen.get(name)
                try:
                    model = await asyncio.to_thread(self._load, name)
                except _Duplicate as dup:
                    if old is None or old.digest != dup.digest:
                        owner = [f for f, s in self.seen.items() if s.digest == dup.digest and f != name]
                        log.info(
                            "bundle %s: digest %s is already served (from %s)",
                            name,
                            dup.digest[:12],
                            owner[0] if owner else "another file",
                        )
                    # both files now hold this digest: it stays served while either remains
                    self.seen[name] = Seen(present[name], dup.digest)
                    continue
                except BundleRefused as exc:
                    self._refused(name, exc)
                    self.seen[name] = Seen(present[name], None)
                    if old is not None and old.digest:
                        drop.append(old.digest)
                    continue
                self.catalog.add(model)
                self.refusals.pop(name, None)
                self.catalog.forget_no_twin(name)
                s = model.spec
                log.info(
                    "serving %s version %s (digest %s, input %s%s) from %s",
                    s.name,
                    s.version,
                    s.digest[:12],
                    s.input.describe(),
                    f", image {s.image.height}x{s.image.width}x{s.image.channels} {s.image.layout}" if s.image else "",
                    name,
                )
                self.seen[name] = Seen(present[name], s.digest)
                if old is not None and old.digest and old.digest != s.digest:
                    drop.append(old.digest)
            for name in p.gone:
                old = self.seen.pop(name)
                self.refusals.pop(name, None)
                self.catalog.forget_no_twin(name)
                if old.digest:
                    drop.append(old.digest)
            still = {s.digest for s in self.seen.values() if s.digest}
            for digest in drop:
                if digest not in still:
                    await self._unload(digest)
            return p

    async def _unload(self, digest: str) -> None:
        model = self.catalog.remove(digest)
        if model is None:
            return
        log.info(
            "unloading %s version %s (digest %s); draining %d queued samples",
            model.spec.name,
            model.spec.version,
            digest[:12],
            model.batcher.depth,
        )
        await asyncio.to_thread(model.close)

    def _refused(self, name: str, exc: BundleRefused) -> None:
        self.refusals[name] = exc
        if isinstance(exc, NoTwin):
            self.catalog.note_no_twin(name, exc)
        else:
            self.catalog.forget_no_twin(name)
        log.warning("bundle %s", exc)
        if self.metrics is not None:
            self.metrics.bundles_refused.labels(exc.reason).inc()

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the watcher must outlive any one bad scan
                log.exception("bundle folder scan failed; retrying in %.1fs", interval)


class _Duplicate(Exception):
    def __init__(self, digest: str) -> None:
        self.digest = digest
