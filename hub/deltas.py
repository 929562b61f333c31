"""Delta updates, hub side: a device whose active bundle the hub knows gets the desired bundle as a
delta against it (:mod:`protocol.delta`), when that is worth it: the smaller of ``zstd-patch-1``
(the whole archive against the base's artifacts) and ``zstd-members-1`` (member by member, each by
patch or by XOR with its base member), :func:`smallest`.

For a device that fetches device views (hub.views) the delta goes from the base's device view to
the target's view archive (``DeltaRef.view``; the same two algorithms over fewer members).

Built once per (base, target) and kept in the store under ``deltas/<target archive>-<base>.zst``
(an empty file records "not worth it": the delta came out larger than :data:`MAX_FRACTION` of
the full archive). Built ahead when a bundle is pushed (:func:`prepare`, in the hub's
``hub-deltas`` thread: :class:`Preparer`) for every base the fleet runs of that model, so a
rollout's POST finds them made; what it does not find (a base that appeared since) it builds
itself, as before. One build per delta at a time in a process: the POST waits for a build
already under way rather than making the same delta twice. Its chunks are published retained
once per hub process, before the desired document that names them; one copy fans out to every
device on that base. A device that cannot use the delta (no base, a damaged base, a delta lost
on the way) falls back to the full chunks, which are published as always.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from pathlib import Path

import zstandard
from sqlmodel import col, select

from protocol import delta as pdelta, view as pview
from protocol.bundle import ChunkPlan
from protocol.errors import ProtocolError
from protocol.topics import Topic
from protocol.view import BundleView

from . import views
from .errors import NotFound
from .fleet import Fleet
from .models import Bundle, Device
from .transport import Outgoing

log = logging.getLogger(__name__)

BIG_ARCHIVE = 16 * 1024 * 1024  # above this the delta is made at FAST_LEVEL
FAST_LEVEL = 9
MAX_FRACTION = 0.5  # a delta above half the archive saves too little to be worth a second path
_lock = threading.Lock()
_building: dict[Path, threading.Lock] = {}  # one build per delta file at a time (under _lock)
# per hub (tests run several in one process): delta sha256s whose chunks it has published
_published: weakref.WeakKeyDictionary[Fleet, set[str]] = weakref.WeakKeyDictionary()


def for_device(
    fleet: Fleet, d: Device, b: Bundle, view: BundleView | None = None
) -> tuple[pdelta.DeltaRef | None, list[Outgoing]]:
    """The delta from ``d``'s active bundle to ``b`` and the chunk messages still to publish, or
    ``(None, [])`` when there is no known base, it is ``b`` itself, the hub no longer holds it, or
    the delta would not be worth it. ``view``: ``b``'s device view, which ``d`` fetches: the
    delta goes from the base's device view to it (``DeltaRef.view``)."""
    base = d.active_digest
    if base is None or base == b.digest:
        return None, []
    target = view.plan.sha256 if view is not None else b.archive_sha256
    subs = views.announced(d, pdelta.ALGO_MEMBERS2)  # SUB records (zstd-members-2)
    data = _delta_bytes(fleet, base, b, target, view is not None, subs)
    if not data:
        return None, []
    plan = ChunkPlan.of(data, b.chunk_size)
    ref = pdelta.DeltaRef(base, pdelta.algo_of(data), plan, view is not None)
    with _lock:
        done = _published.setdefault(fleet, set())
        if plan.sha256 in done:
            return ref, []
        done.add(plan.sha256)
    msgs = [
        Outgoing(
            str(Topic.delta(target, base, i)),
            data[i * plan.chunk_size : (i + 1) * plan.chunk_size],
            retain=True,
            qos=1,
            kind="delta",
        )
        for i in range(len(plan.chunks))
    ]
    return ref, msgs


def _delta_bytes(fleet: Fleet, base: str, b: Bundle, target_sha: str, view: bool, subs: bool = False) -> bytes:
    """The delta from ``base`` (its device view when ``view``) to the archive ``target_sha`` of
    ``b`` (the full one or its device view), cached by (target archive, base, and whether SUB
    records may be used: only for agents that announced ``zstd-members-2``)."""
    path = _path(fleet, target_sha, base, subs)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    with _lock:
        building = _building.setdefault(path, threading.Lock())
    with building:  # another thread (the preparer, a POST) may be making this one now
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        try:
            return _build(fleet, path, base, b, target_sha, view, subs)
        finally:
            with _lock:
                _building.pop(path, None)


def _path(fleet: Fleet, target_sha: str, base: str, subs: bool) -> Path:
    return fleet.store.root / "deltas" / f"{target_sha}-{base}{'.m2' if subs else ''}.zst"


def _build(fleet: Fleet, path: Path, base: str, b: Bundle, target_sha: str, view: bool, subs: bool) -> bytes:
    store = fleet.store
    try:
        manifest = store.manifest(base)
        if view:  # the base as a device-view agent holds it: whether installed in full or as a view
            manifest = pdelta.view_manifest(manifest)
        head = pdelta.unsigned(store.envelope(base))
        parts = pdelta.base_parts(manifest, head, lambda a: store.artifact(base, a.name) or b"")
        names = {a.name: i + 1 for i, a in enumerate(manifest.artifacts)}
        target = store.archive(target_sha)
    except (NotFound, ProtocolError, OSError) as exc:
        log.info("no delta from %s to %s: %s", base[:12], b.digest[:12], exc)
        return b""
    # level 19 is 10-14 % smaller than 9 but runs at 1-3 MB/s here: at push (prepare) or in a rollout's POST (ADR 0014)
    level = pdelta.LEVEL if len(target) <= BIG_ARCHIVE else FAST_LEVEL
    data = smallest(parts, names, target, level, subs)
    worth = len(data) <= MAX_FRACTION * len(target)
    log.info(
        "delta %s -> %s: %s, %d bytes, %.1f %% of the %d-byte archive%s",
        base[:12],
        b.digest[:12],
        pdelta.algo_of(data),
        len(data),
        100.0 * len(data) / max(1, len(target)),
        len(target),
        "" if worth else " (not worth it: full chunks only)",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}-{threading.get_ident()}.tmp")
    tmp.write_bytes(data if worth else b"")
    os.replace(tmp, path)
    return data if worth else b""


def prepare(fleet: Fleet, digest: str) -> tuple[int, int]:
    """Makes ahead the deltas a rollout of bundle ``digest`` would need now: one from each bundle
    that devices run of the same model (and its device view, and its SUB-record variant, as those
    devices announced), to ``digest``. Returns (built, found already made). A device that moves to
    another base later gets its delta built by the rollout, as without this."""
    with fleet.session() as s:
        b = s.get(Bundle, digest)
        if b is None:
            raise NotFound("bundle", digest)
        s.expunge(b)
        base_of = col(Device.active_digest)
        q = select(base_of, col(Device.inventory))  # two columns, not 10,000 ORM rows
        q = q.join(Bundle, base_of == col(Bundle.digest)).where(Bundle.name == b.name, base_of != digest)
        devices = s.exec(q).all()
    b_view = views.of(fleet, b) if any(views.lists(inv, pview.FEATURE) for _, inv in devices) else None
    wanted: dict[tuple[str, str, bool], bool] = {}  # (base, target archive, SUB records) -> a view
    for base, inventory in devices:
        assert base is not None  # the join
        v = b_view if views.lists(inventory, pview.FEATURE) else None
        target = v.plan.sha256 if v is not None else b.archive_sha256
        wanted[(base, target, views.lists(inventory, pdelta.ALGO_MEMBERS2))] = v is not None
    built = found = 0
    for (base, target, subs), view in wanted.items():
        if _path(fleet, target, base, subs).exists():
            found += 1
            continue
        _delta_bytes(fleet, base, b, target, view, subs)
        built += 1
    return built, found


class Preparer:
    """The hub's ``hub-deltas`` thread: :func:`prepare` for each bundle pushed, one at a time, in
    order. ``preparing(digest)``: queued or under way in this process (a replica knows only its
    own pushes). zstd releases the interpreter while it compresses, so ingest keeps running."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._pending: set[str] = set()
        self._thread: threading.Thread | None = None

    def submit(self, digest: str) -> None:
        """Queues ``digest``; nothing before :meth:`start` (a hub never started, as in tests that
        drive the API alone, builds its deltas in the POST as before)."""
        with _lock:
            if self._thread is None or digest in self._pending:
                return
            self._pending.add(digest)
        self._queue.put(digest)

    def preparing(self, digest: str) -> bool:
        with _lock:
            return digest in self._pending

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-deltas", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while (digest := self._queue.get()) is not None:
            t0 = time.monotonic()
            try:
                built, found = prepare(self.fleet, digest)
            except Exception:  # the thread must outlive one bad bundle; the POST builds what is missing
                log.exception("deltas to bundle %s were not prepared", digest[:12])
            else:
                if built or found:
                    log.info(
                        "deltas to bundle %s prepared: %d built, %d already made, %.1f s",
                        digest[:12],
                        built,
                        found,
                        time.monotonic() - t0,
                    )
            finally:
                with _lock:
                    self._pending.discard(digest)


def smallest(
    parts: list[bytes], names: dict[str, int], target: bytes, level: int = pdelta.LEVEL, subs: bool = False
) -> bytes:
    """The smaller of the ``zstd-patch-1`` and ``zstd-members-1`` deltas (ADR 0014); ``subs``:
    the members delta may use SUB records (``zstd-members-2``, for agents that announced it)."""
    whole = make(b"".join(parts[1:]), target, level)
    members = make_members(parts, names, target, level, subs)
    return members if len(members) < len(whole) else whole


def make_members(
    parts: list[bytes], names: dict[str, int], target: bytes, level: int = pdelta.LEVEL, subs: bool = False
) -> bytes:
    """The ``zstd-members-1`` delta turning the base ``parts`` (protocol.delta.base_parts; ``names``
    maps an artifact name to its part) into the ``target`` archive: each member by the smaller of a
    patch (from its base part and the member just before it) and an XOR with its base part; with
    ``subs`` also a byte-wise difference (SUB), which makes it ``zstd-members-2`` when one wins."""
    records, last = [], b""
    for name, new in pdelta.split_archive(target):
        i = names.get(name, pdelta.NO_BASE) if name else 0
        prev = parts[i] if i != pdelta.NO_BASE else b""
        best = pdelta.Record(pdelta.PATCH, i, make(prev + last, new, level))
        if len(prev) == len(new):
            x = (int.from_bytes(prev, "little") ^ int.from_bytes(new, "little")).to_bytes(len(new), "little")
            xor = pdelta.Record(pdelta.XOR, i, make(b"", x, level))
            best = xor if len(xor.frame) < len(best.frame) else best
            if subs:
                diff = pdelta.Record(pdelta.SUB, i, make(b"", pdelta.sub_bytes(new, prev), level))
                best = diff if len(diff.frame) < len(best.frame) else best
        content = None if name else pdelta.envelope_content(new)
        if content is not None:  # the payload patched raw, not in base64 (ENVELOPE record)
            env = pdelta.Record(pdelta.ENVELOPE, 0, make(pdelta.payload_of(parts[0]), content, level))
            best = env if len(env.frame) < len(best.frame) else best
        records.append(best)
        last = new
    return pdelta.pack_members(records)


def make(ref: bytes, target: bytes, level: int = pdelta.LEVEL) -> bytes:
    """The ``zstd-patch-1`` delta turning ``ref`` into ``target`` (protocol.delta)."""
    if not ref:
        return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(target)
    d = zstandard.ZstdCompressionDict(ref, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    p = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(target), dict_size=len(ref))
    params = zstandard.ZstdCompressionParameters(
        window_log=pdelta.window_log(len(ref) + len(target)),
        chain_log=p.chain_log,
        hash_log=p.hash_log,
        search_log=p.search_log,
        min_match=p.min_match,
        target_length=p.target_length,
        strategy=p.strategy,
        write_checksum=1,  # catches most wrong references before the signed hashes do
        write_content_size=1,
    )
    return zstandard.ZstdCompressor(dict_data=d, compression_params=params).compress(target)
