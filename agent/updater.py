"""The install job: the I/O shell that carries out what :mod:`agent.install` decides.

One job at a time, for the newest accepted ``Desired``. Its envelope is persisted in
``state_dir/job.json`` until the job ends, so a restart resumes it (a download from its
bitmap). Stages and their reports are listed in :mod:`agent.install`. The active model is
touched only at ``switch``, after the new one passed verification and its self-test.

Chunk subscriptions follow :func:`agent.download.chunk_subscription` on every start of a
download and every new connection; a per-index filter is dropped as soon as its chunk is on disk;
before a repair request the wildcard gives way to the missing indexes
(:func:`agent.download.repair_subscription`).
``chunks_received`` / ``chunk_bytes_received`` count every chunk message that reached this process
(the local ``/v1/status``); a finished download reports and logs its own counts.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field as dc_field, replace
from pathlib import Path
from typing import Any, Protocol

from protocol import delta as pdelta, planref
from protocol.bundle import Manifest
from protocol.errors import ProtocolError, Reason, VerificationError
from protocol.messages import BundleInfo, BundleRef, Desired, FetchRequest, Hold
from protocol.signing import Root
from protocol.topics import Kind, Topic, probe_filter

from . import benchmark, delta as deltas, selftest, stall
from .budget import Meter
from .config import CHUNK_PACKET_OVERHEAD, AgentConfig, packet_bytes_for
from .download import (
    MAX_REQUESTED,
    Download,
    bytes_on_disk,
    chunk_subscription,
    progress_due,
    repair_subscription,
)
from .durable import read_json, write_atomic, write_json
from .errors import DiskFull, ModelError, RootExpired
from .install import (
    AppHold,
    Choice,
    Current,
    Inventory,
    Plan,
    Rejection,
    choose_artifact,
    hold_request,
    hold_verdict,
    plan,
    require_fresh_root,
)
from .runtime import Model
from .serve import Serving
from .slots import SlotRecord, Slots, SlotsState
from .watchdog import guarded

log = logging.getLogger(__name__)


class Publisher(Protocol):
    connection: int  # counts successful connections
    session_present: bool  # the broker kept our session on the current connection

    @property
    def retain_handling(self) -> bool: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool: ...

    def subscribe_all(self, filters: list[str], qos: int = 1, only_new: bool = False) -> bool: ...

    def unsubscribe_all(self, filters: list[str]) -> None: ...

    def confirmed(self) -> frozenset[str]: ...

    def probe(self, never_held: str) -> int | None: ...

    def probe_answer(self, probe: int) -> tuple[float, bool] | None: ...


class ReportFn(Protocol):
    def __call__(
        self,
        stage: str,
        status: str,
        reason: Reason = Reason.OK,
        detail: str = "",
        desired_seq: int | None = None,
        bundle: str | None = None,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
        hold: Hold | None = None,
    ) -> None: ...


@dataclass
class Job:
    desired: Desired
    plan: Plan
    download: Download | None = None
    stage: str = "verify"
    last_chunk: float = 0.0
    last_fetch: float = 0.0
    fetch_rounds: int = 0
    probe: stall.Probe | None = None  # the last probe of a quiet download (agent.stall)
    probe_id: int | None = None  # the transport's id of it while unanswered
    slowest_round_trip: float = 0.0  # of this download's answered probes
    reported_decile: int = -1
    reported_at: float = 0.0  # monotonic time of the last download progress report
    bad_chunks: int = 0
    received_bytes: int = 0  # chunk payloads of this archive that reached this process
    duplicates: int = 0  # of them, chunks already on disk (bytes the link carried for nothing)
    duplicate_bytes: int = 0
    filters: set[str] = dc_field(default_factory=set)  # chunk filters subscribed in the broker session
    filters_on: int = -1  # the connection they were last (re)asserted on
    shadow: bool = False  # a candidate to run beside the active model, never switched to
    ready_since: int | None = None  # when the install first stood ready to switch (an app hold's cap)
    held: tuple[SlotRecord, Manifest, Choice] | None = None  # what to switch to when the app's hold ends
    held_until: int = 0  # the hold's end as last reported
    deferred_until: float = 0.0  # epoch: the download waits for the next day's byte budget
    delta: deltas.DeltaFetch | None = None  # the delta being fetched instead of the full chunks
    delta_outcome: str = ""  # "applied", or the Fallback that sent the job to full chunks


def model_roles(manifest: Manifest) -> dict[str, str]:
    return {a.role: a.name for a in manifest.artifacts}


def open_model(slots: Slots, rec: SlotRecord, manifest: Manifest, threads: int | None) -> Model:
    return Model.open(
        slots.path(rec.digest),
        rec.artifact,
        rec.runtime,
        BundleInfo(rec.digest, rec.name, rec.version),
        manifest.model,
        model_roles(manifest),
        threads,
        guarded,  # an Edge TPU that hangs or fails moves serving to the CPU twin
    )


def selftest_slot(
    slots: Slots, rec: SlotRecord, manifest: Manifest, threads: int | None
) -> tuple[Model | None, selftest.SelftestResult]:
    """Open the slot's model and run its self-test vectors. Used by the install, the start-up
    check of a trial slot and ``edgefleet-agent selftest``; the model, when it opened, is the
    caller's to serve or close."""
    try:
        model = open_model(slots, rec, manifest, threads)
    except (ModelError, OSError) as exc:
        return None, selftest.SelftestResult(False, Reason.SELFTEST_FAILED, str(exc))
    if model.selftest is None:
        return model, selftest.SelftestResult(False, Reason.MISSING_ARTIFACT, "bundle has no selftest vectors")
    problem = model.preprocess_problem()
    if problem is not None:
        return model, selftest.SelftestResult(False, Reason.SELFTEST_FAILED, problem)
    return model, selftest.run(model.backend, model.selftest)


class Updater:
    def __init__(
        self,
        cfg: AgentConfig,
        root: Callable[[], Root],
        slots: Slots,
        serving: Serving,
        inventory: Callable[[], Inventory],
        report: ReportFn,
        mqtt: Publisher,
        on_change: Callable[[], None],
        meter: Meter | None = None,
    ) -> None:
        self.cfg = cfg
        self.meter = meter  # the daily byte budget (agent.budget): a download that does not fit waits
        self.root = root
        self.slots = slots
        self.serving = serving
        self.inventory = inventory
        self.report = report
        self.mqtt = mqtt
        self.on_change = on_change
        self.job: Job | None = None
        self.job_file = cfg.state_dir / "job.json"
        self.downloads = cfg.state_dir / "downloads"
        self.hold: AppHold | None = None  # an app's hold on switching (local API); not persisted
        self.chunks_received = 0  # every chunk message since start, any archive (the link's cost)
        self.chunk_bytes_received = 0

    # persistence ---------------------------------------------------------------------------
    def _save_job(self, env: bytes, seq: int, done: bool, outcome: str) -> None:
        write_json(
            self.job_file, {"seq": seq, "envelope": base64.b64encode(env).decode(), "done": done, "outcome": outcome}
        )

    def _finish_job(self, outcome: str) -> None:
        job = self.job
        if job and job.download:
            job.download.close()
            self._drop_filters(job)
        self.job = None
        if job is not None and not job.shadow and job.desired.shadow is not None and not outcome.startswith("rejected"):
            self.on_change()
            self._start_shadow(job.desired)
            return
        raw = read_json(self.job_file, {}) or {}
        raw.update({"done": True, "outcome": outcome})
        write_json(self.job_file, raw)
        self.on_change()

    # shadow ------------------------------------------------------------------------------------
    def _start_shadow(self, desired: Desired) -> None:
        """Fetch, verify and self-test ``desired.shadow``, then run it beside the active model."""
        ref = desired.shadow
        assert ref is not None
        active = self.serving.model
        if active is not None and active.info.digest == ref.digest:
            self._drop_shadow()
            self.report(
                "shadow", "failed", Reason.MALFORMED, "shadow candidate is the active bundle", desired.seq, ref.digest
            )
            self._finish_job("shadow:same")
            return
        cur = self.serving.shadow
        if cur is not None and cur.info.digest == ref.digest:
            if benchmark.requested(desired.extra):  # out of shadow while timed: one invoke at a time
                self.serving.set_shadow(None, 0.0)
                benchmark.on_staged(desired.extra, desired.seq, ref.digest, cur, self.serving.model, self.report)
            self.serving.set_shadow(cur, desired.shadow_sample)
            self.report(
                "shadow", "ok", Reason.OK, f"shadow sample now {desired.shadow_sample:g}", desired.seq, ref.digest
            )
            self._finish_job("shadow:running")
            return
        result = plan(
            self.current(ref.fetched().archive.sha256),
            replace(desired, bundle=ref, action="install"),
            self.inventory(),
            int(time.time()),
            self.cfg.disk_reserve_bytes,
        )
        if isinstance(result, Rejection):
            self.report("shadow", "failed", result.reason, result.detail, desired.seq, ref.digest)
            self.job = None
            self._finish_job(f"shadow:{result.reason.value}")
            return
        self.job = Job(desired, Plan("install", desired.seq, result.bundle, result.need_bytes), shadow=True)
        self.report(
            "shadow",
            "progress",
            Reason.OK,
            f"fetching shadow candidate {ref.name} {ref.version}",
            desired.seq,
            ref.digest,
        )
        if self.slots.has(ref.digest):
            try:
                manifest = self.slots.check(ref.digest, self.root())
            except (ProtocolError, OSError):
                pass
            else:
                choice = choose_artifact(manifest, self.inventory())
                if not isinstance(choice, Rejection):
                    rec = SlotRecord(
                        ref.digest, manifest.name, manifest.version, choice.artifact.name, choice.runtime, desired.seq
                    )
                    self._selftest_and_switch(rec, manifest, choice)
                    return
        self._start_download(time.time())

    def _drop_shadow(self) -> None:
        old = self.serving.set_shadow(None, 0.0)
        if old is not None:
            old.close()

    def pending_envelope(self) -> tuple[int, bytes] | None:
        """The persisted desired envelope of an unfinished job (to resume after a restart)."""
        raw = read_json(self.job_file, None)
        if not isinstance(raw, dict) or raw.get("done") or "envelope" not in raw:
            return None
        try:
            return int(raw["seq"]), base64.b64decode(raw["envelope"])
        except (ValueError, TypeError):
            return None

    def job_done(self, seq: int) -> bool:
        raw = read_json(self.job_file, None)
        return isinstance(raw, dict) and int(raw.get("seq", -1)) == seq and bool(raw.get("done"))

    def _crash_point(self, stage: str) -> None:
        if self.cfg.crash_at == stage:
            log.warning("EDGEFLEET_AGENT_CRASH_AT=%s: exiting hard now", stage)
            os._exit(137)

    # entry ---------------------------------------------------------------------------------
    def current(self, ref_sha: str | None = None) -> Current:
        st = self.slots.load()
        return Current(
            st.active.digest if st.active else None,
            st.previous.digest if st.previous else None,
            bytes_on_disk(self.downloads, ref_sha) if ref_sha else 0,
        )

    def accept(self, desired: Desired, env: bytes, now: int) -> None:
        """Start (or restart) the job for a verified desired document."""
        if self.job is not None:
            log.info("desired seq %d supersedes the job for seq %d", desired.seq, self.job.desired.seq)
            self._abandon()
        sha = desired.bundle.fetched().archive.sha256 if desired.bundle else None
        result = plan(self.current(sha), desired, self.inventory(), now, self.cfg.disk_reserve_bytes)
        digest = desired.bundle.digest if desired.bundle else None
        if isinstance(result, Rejection):
            self._save_job(env, desired.seq, True, f"rejected:{result.reason.value}")
            self.report(result.stage, "failed", result.reason, result.detail, desired.seq, digest)
            self.on_change()
            return
        self._gc_downloads(sha)
        self._save_job(env, desired.seq, False, "running")
        if desired.shadow is None and self.serving.shadow is not None:
            self._drop_shadow()
            self.report("shadow", "ok", Reason.OK, "shadow mode ended", desired.seq)
        self.job = Job(desired, result)
        log.info("desired seq %d: %s %s", desired.seq, result.action, digest[:12] if digest else "")
        if result.action == "idle":
            self.report("idle", "ok", Reason.OK, "nothing to install", desired.seq)
            self._finish_job("idle")
        elif result.action == "noop":
            self.report("commit", "ok", Reason.OK, "already active", desired.seq, digest)
            self._finish_job("noop")
        elif result.action == "switch_back":
            self._switch_back(desired)
        else:
            self._start_download(now)

    def _gc_downloads(self, keep: str | None) -> None:
        """Partial downloads of superseded jobs are never resumed: free their space."""
        if not self.downloads.is_dir():
            return
        for p in self.downloads.iterdir():
            if keep is None or not p.name.startswith(keep):
                log.info("removing stale partial download %s", p.name)
                if p.is_dir():  # a delta's (agent.delta)
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def _abandon(self) -> None:
        job = self.job
        if job and job.stage == "plan" and job.plan.bundle is not None:
            self.mqtt.unsubscribe_all([str(Topic.plan(job.plan.bundle.archive.sha256))])
        if job and job.delta:
            job.delta.download.close()
            self.mqtt.unsubscribe_all([job.delta.filter])
        if job and job.download:
            job.download.close()
            self._drop_filters(job)
        self.job = None

    # download ------------------------------------------------------------------------------
    def _start_download(self, now: float) -> None:
        job = self.job
        assert job is not None and job.plan.bundle is not None
        if job.plan.bundle.unresolved and not self._resolve_plan(job, self._cached_plan(job.plan.bundle)):
            plan = job.plan.bundle.archive
            need = planref.max_plan_bytes(plan.size, plan.chunk_size) + CHUNK_PACKET_OVERHEAD
            if need > self.cfg.max_packet_bytes:  # the broker would never deliver it to us: fail, never stall
                self._fail(
                    "download",
                    Reason.MALFORMED,
                    f"the chunk plan of a {plan.size}-byte archive needs MQTT packets of up to {need} bytes, "
                    f"this agent accepts at most {self.cfg.max_packet_bytes} (max_packet_bytes)",
                )
                return
            self._await_plan(job)
            return
        ref = job.plan.bundle
        job.stage = "download"
        self.on_change()
        need = packet_bytes_for(ref.archive.chunk_size)
        if need > self.cfg.max_packet_bytes:  # the broker would drop every chunk for us: fail, never stall
            self._fail(
                "download",
                Reason.MALFORMED,
                f"chunk size {ref.archive.chunk_size} needs MQTT packets of {need} bytes, this agent "
                f"accepts at most {self.cfg.max_packet_bytes} (max_packet_bytes)",
            )
            return
        try:
            job.download = Download(self.downloads, ref.archive)
        except DiskFull as exc:
            self._fail("download", Reason.DISK_FULL, str(exc))
            return
        except OSError as exc:
            self._fail("download", Reason.INTERNAL, f"cannot open download file: {exc}")
            return
        dl = job.download
        if self._deferred(job, dl):
            return
        job.last_chunk = job.last_fetch = time.monotonic()
        self.report(
            "download",
            "progress",
            Reason.OK,
            f"{len(dl.missing())} of {dl.total} chunks to fetch",
            job.desired.seq,
            ref.digest,
            progress=dl.received / max(1, ref.archive.size),
        )
        job.reported_decile, job.reported_at = int(10 * dl.received / max(1, ref.archive.size)), job.last_chunk
        if dl.complete:
            self._finish_download()
            return
        if self._start_delta(job, dl):
            return
        if dl.rechecked:
            log.info(
                "resuming the download of %s: %d of %d chunks verified on disk, asking for the other %d",
                ref.archive.sha256[:12],
                dl.rechecked,
                dl.total,
                len(dl.missing()),
            )
        self._subscribe_chunks()

    # the chunk plan by reference (protocol.planref) ------------------------------------------
    def _plan_file(self, ref: BundleRef) -> Path:
        return self.downloads / f"{ref.archive.sha256}.plan"  # kept with its download (_gc_downloads)

    def _cached_plan(self, ref: BundleRef) -> bytes | None:
        try:
            return self._plan_file(ref).read_bytes()
        except OSError:
            return None

    def _resolve_plan(self, job: Job, payload: bytes | None) -> bool:
        """Fill the job's chunk list from plan message ``payload`` if it is the one the signed
        document names; a wrong one is logged and ignored (the right one may still come)."""
        ref = job.plan.bundle
        if payload is None or ref is None:
            return False
        try:
            full = ref.resolve(payload)
        except VerificationError as exc:
            log.warning("ignoring a chunk plan for %s: %s", ref.archive.sha256[:12], exc)
            return False
        job.plan = replace(job.plan, bundle=full)
        return True

    def _await_plan(self, job: Job) -> None:
        assert job.plan.bundle is not None
        job.stage = "plan"
        job.last_fetch = time.monotonic()
        self.mqtt.subscribe_all([str(Topic.plan(job.plan.bundle.archive.sha256))], qos=1)
        log.info("waiting for the chunk plan of %s", job.plan.bundle.archive.sha256[:12])

    def on_plan(self, topic: Topic, payload: bytes) -> None:
        """A retained chunk plan: the job waiting for it starts its download."""
        job = self.job
        if job is None or job.stage != "plan" or job.plan.bundle is None:
            return
        if topic.digest != job.plan.bundle.archive.sha256 or not self._resolve_plan(job, payload):
            return
        try:  # kept so a restart resumes without asking; best effort: the download reports a full disk
            self.downloads.mkdir(parents=True, exist_ok=True)
            write_atomic(self._plan_file(job.plan.bundle), payload)
        except OSError as exc:
            log.warning("could not keep the chunk plan of %s: %s", job.plan.bundle.archive.sha256[:12], exc)
        job.fetch_rounds = 0  # the repair back-off starts afresh for the chunks
        self._start_download(time.time())
        self.mqtt.unsubscribe_all([str(topic)])

    def _deferred(self, job: Job, dl: Download) -> bool:
        """Whether the bytes still to fetch wait for the next day's byte budget (reported)."""
        if self.meter is None or dl.complete:
            return False
        remaining = dl.plan.size - dl.received
        verdict = self.meter.allows_download(remaining)
        if verdict.send or verdict.retry_at is None:
            job.deferred_until = 0.0
            return False
        dl.close()
        job.download = None
        job.deferred_until = verdict.retry_at
        assert job.plan.bundle is not None
        self.report(
            "download",
            "progress",
            Reason.OK,
            f"deferred until {_utc(int(verdict.retry_at))}: {verdict.why} (daily_byte_budget)",
            job.desired.seq,
            job.plan.bundle.digest,
            progress=dl.received / max(1, dl.plan.size),
        )
        return True

    def resubscribe(self) -> None:
        """After a (re)connect: ask the broker for the chunks still missing, and only those."""
        job = self.job
        if job and job.stage == "plan" and job.plan.bundle is not None:
            self.mqtt.subscribe_all([str(Topic.plan(job.plan.bundle.archive.sha256))], qos=1)
        elif job and job.stage == "download" and job.delta is not None:
            self.mqtt.subscribe_all([job.delta.filter], qos=1)
            job.delta.last_chunk = time.monotonic()
        elif job and job.stage == "download" and job.download is not None:
            self._subscribe_chunks()
            job.last_chunk = time.monotonic()

    def _subscribe_chunks(self) -> None:
        job = self.job
        assert job is not None and job.download is not None and job.plan.bundle is not None
        conn = self.mqtt.connection
        if job.filters_on == conn:
            return  # already asked on this connection: asking again would replay retained chunks
        dl = job.download
        sub = chunk_subscription(
            job.plan.bundle.archive.sha256,
            dl.missing(),
            dl.total,
            job.filters,
            self.mqtt.session_present and job.filters_on >= 0,
            self.mqtt.retain_handling,
            self.mqtt.confirmed(),
        )
        if sub.unsubscribe:
            self.mqtt.unsubscribe_all(list(sub.unsubscribe))
        if self.mqtt.subscribe_all(list(sub.subscribe), qos=1, only_new=sub.only_new):
            job.filters = (job.filters - set(sub.unsubscribe)) | set(sub.subscribe)
            job.filters_on = conn
            log.info(
                "subscribed to %d chunk topic(s) of %s%s",
                len(sub.subscribe),
                dl.plan.sha256[:12],
                " (kept by the session)" if sub.only_new else "",
            )

    def _drop_filters(self, job: Job) -> None:
        if job.filters:
            self.mqtt.unsubscribe_all(sorted(job.filters))
        job.filters = set()

    def on_chunk(self, topic: Topic, payload: bytes) -> None:
        self.chunks_received += 1
        self.chunk_bytes_received += len(payload)
        job = self.job
        if topic.kind is Kind.DELTA:
            self._on_delta_chunk(topic, payload)
            return
        if job is None or job.plan.bundle is None or topic.digest != job.plan.bundle.archive.sha256:
            return
        job.received_bytes += len(payload)  # counted in any stage: the link carried it all the same
        if job.stage != "download" or job.download is None or topic.index is None:
            job.duplicates += 1
            job.duplicate_bytes += len(payload)
            return
        ref = job.plan.bundle
        dl = job.download
        job.last_chunk = time.monotonic()
        try:
            new = dl.put(topic.index, payload)
        except VerificationError as exc:
            job.bad_chunks += 1
            log.warning("chunk %s rejected: %s", topic.index, exc)
            self.report(
                "download",
                "progress",
                exc.reason,
                f"chunk {topic.index} rejected and re-requested: {exc.detail}",
                job.desired.seq,
                ref.digest,
                progress=dl.received / max(1, ref.archive.size),
            )
            self._request([topic.index])
            return
        except DiskFull as exc:
            self._fail("download", Reason.DISK_FULL, str(exc), remove_download=True)
            return
        if not new:
            job.duplicates += 1
            job.duplicate_bytes += len(payload)
            return
        one = str(topic)
        if one in job.filters:  # its own filter has done its job: repairs for others must not reach us
            job.filters.discard(one)
            self.mqtt.unsubscribe_all([one])
        now = time.monotonic()
        decile = progress_due(
            dl.received, ref.archive.size, job.reported_decile, job.reported_at, now, self.cfg.progress_interval_s
        )
        if decile is not None:  # never once complete: the end is its own report
            job.reported_decile, job.reported_at = decile, now
            self.report(
                "download",
                "progress",
                Reason.OK,
                f"{dl.total - len(dl.missing())}/{dl.total} chunks",
                job.desired.seq,
                ref.digest,
                progress=dl.received / max(1, ref.archive.size),
            )
        if 2 * dl.received >= ref.archive.size and not dl.complete:
            self._crash_point("download")
        if dl.complete:
            self._drop_filters(job)
            self._finish_download()

    # delta (agent.delta) ---------------------------------------------------------------------
    def _start_delta(self, job: Job, dl: Download) -> bool:
        """Fetch the desired document's delta instead of the full chunks, if it is usable."""
        ref = job.desired.delta
        bundle = job.plan.bundle  # the archive fetched: the device view when the hub named one
        if ref is None or job.shadow or bundle is None or job.desired.bundle is None:
            return False
        if bundle.digest != job.desired.bundle.digest:
            return False
        active = self.slots.load().active
        why = deltas.choose(ref, active.digest if active else None, dl.received, bundle.members is not None)
        if why is not None:
            job.delta_outcome = why.value
            self.report(
                "download",
                "progress",
                Reason.OK,
                f"delta from {ref.base[:12]} not used ({why.value}): fetching full chunks",
                job.desired.seq,
                bundle.digest,
            )
            return False
        try:
            job.delta = deltas.DeltaFetch(self.downloads, bundle.archive.sha256, ref)
        except (DiskFull, OSError) as exc:
            job.delta_outcome = deltas.Fallback.PATCH_FAILED.value
            log.warning("cannot open the delta download (%s): fetching full chunks", exc)
            return False
        job.delta.last_chunk = time.monotonic()
        self.report(
            "download",
            "progress",
            Reason.OK,
            f"fetching a {ref.plan.size}-byte delta from {ref.base[:12]} instead of {bundle.archive.size} bytes",
            job.desired.seq,
            bundle.digest,
            progress=0.0,
        )
        if job.delta.download.complete:  # resumed after a restart
            self._apply_delta(job)
        else:
            self.mqtt.subscribe_all([job.delta.filter], qos=1)
        return True

    def _on_delta_chunk(self, topic: Topic, payload: bytes) -> None:
        job = self.job
        if job is None or job.delta is None or job.plan.bundle is None or topic.index is None:
            return
        if topic.digest != job.plan.bundle.archive.sha256 or topic.base != job.delta.ref.base:
            return
        job.received_bytes += len(payload)
        job.delta.received_bytes += len(payload)
        job.delta.last_chunk = time.monotonic()
        try:
            new = job.delta.download.put(topic.index, payload)
        except VerificationError as exc:
            self._delta_fallback(job, deltas.Fallback.MISMATCH, f"delta chunk {topic.index}: {exc.detail}")
            return
        except DiskFull as exc:
            self._fail("download", Reason.DISK_FULL, str(exc), remove_download=True)
            return
        if not new:
            job.duplicates += 1
            job.duplicate_bytes += len(payload)
        elif job.delta.download.complete:
            self._apply_delta(job)

    def _apply_delta(self, job: Job) -> None:
        assert job.delta is not None and job.download is not None
        fetch, base = job.delta, job.delta.ref.base
        try:
            manifest = self.slots.manifest(base, self.root())
            if fetch.ref.view:  # made from the base's device view, which every slot of it holds
                manifest = pdelta.view_manifest(manifest)
            data = fetch.data()
            done = deltas.patch_into(fetch.ref, data, self.slots.path(base), manifest, job.download)
        except (ProtocolError, OSError) as exc:
            damaged = isinstance(exc, VerificationError) and "base artifact" in exc.detail
            why = deltas.Fallback.BASE_DAMAGED if damaged or isinstance(exc, OSError) else deltas.Fallback.PATCH_FAILED
            self._delta_fallback(job, why, str(exc))
            return
        if done.rejected or not job.download.complete:
            self._delta_fallback(
                job, deltas.Fallback.MISMATCH, f"{done.rejected} patched chunk(s) differ from the signed"
            )
            return
        log.info(
            "delta %s applied: %d bytes fetched for a %d-byte archive",
            fetch.ref.plan.sha256[:12],
            fetch.received_bytes,
            job.download.plan.size,
        )
        job.delta_outcome = "applied"
        self.mqtt.unsubscribe_all([fetch.filter])
        fetch.remove()
        job.delta = None
        self._finish_download()

    def _delta_fallback(self, job: Job, why: deltas.Fallback, detail: str) -> None:
        """Give up on the delta: fetch whatever of the archive is still missing in full."""
        assert job.delta is not None and job.plan.bundle is not None
        log.warning("delta not usable (%s): %s; fetching full chunks", why.value, detail)
        self.mqtt.unsubscribe_all([job.delta.filter])
        job.delta.remove()
        job.delta = None
        job.delta_outcome = why.value
        reason = Reason.TIMEOUT if why is deltas.Fallback.STALLED else Reason.HASH_MISMATCH
        dl = job.download
        assert dl is not None
        self.report(
            "download",
            "progress",
            reason,
            f"delta fallback ({why.value}): {detail}; fetching {len(dl.missing())} full chunk(s)",
            job.desired.seq,
            job.plan.bundle.digest,
            progress=dl.received / max(1, dl.plan.size),
        )
        if dl.complete:
            self._finish_download()
            return
        job.last_chunk = job.last_fetch = time.monotonic()
        job.filters_on = -1
        self._subscribe_chunks()

    # app hold ------------------------------------------------------------------------------
    def set_hold(self, minutes: Any, reason: Any) -> dict[str, Any]:
        """An app holds switching (:func:`agent.install.hold_request`); HoldRefused names a bad value."""
        self.hold = hold_request(minutes, reason, int(time.time()), self.cfg.max_hold_minutes)
        log.info("app holds updates until %s: %s", _utc(self.hold.until), self.hold.reason or "no reason given")
        return self.hold_status()

    def clear_hold(self) -> dict[str, Any]:
        """The app lets go; a held install switches at the next tick."""
        if self.hold is not None:
            log.info("app released its update hold")
        self.hold = None
        return self.hold_status()

    def hold_status(self) -> dict[str, Any]:
        now = int(time.time())
        h = self.hold if self.hold is not None and self.hold.until > now else None
        job = self.job
        waiting = job is not None and job.stage == "held" and job.plan.bundle is not None
        return {
            "held": h is not None,
            "until": h.until if h else None,
            "reason": h.reason if h else "",
            "max_minutes": self.cfg.max_hold_minutes,
            "install_waiting": job.plan.bundle.digest if waiting and job and job.plan.bundle else None,
            "switch_at_latest": job.held_until if waiting and job else None,
        }

    def _held(self, job: Job, rec: SlotRecord, manifest: Manifest, choice: Choice) -> bool:
        """Is the ready install ``rec`` held by an app? Then stage ``held``, and a report with the
        hold whenever its end changes. A rollback (the hub's ``rollback`` action) is never held."""
        if job.desired.action != "install":
            return False
        now = int(time.time())
        if job.ready_since is None:
            job.ready_since = now
        verdict = hold_verdict(self.hold, job.ready_since, now, self.cfg.max_hold_minutes)
        if verdict is None:
            job.held = None
            return False
        job.held, job.stage = (rec, manifest, choice), "held"
        if verdict.until != job.held_until:
            job.held_until = verdict.until
            why = f"held by app until {_utc(verdict.until)}" + (f": {verdict.reason}" if verdict.reason else "")
            self.report(
                "switch",
                "progress",
                Reason.OK,
                why,
                job.desired.seq,
                rec.digest,
                hold=Hold(verdict.until, verdict.reason),
            )
            self.on_change()
        return True

    def tick(self, now_mono: float) -> None:
        """Switch a held install once its hold ends; ask the hub for chunks missing after
        ``fetch_repair_s`` without progress (backing off)."""
        job = self.job
        if job is not None and job.stage == "held" and job.held is not None:
            rec, manifest, choice = job.held
            now = int(time.time())
            if hold_verdict(self.hold, job.ready_since or now, now, self.cfg.max_hold_minutes) is None:
                self._selftest_and_switch(rec, manifest, choice)  # tested again: it sat on disk meanwhile
            else:
                self._held(job, rec, manifest, choice)  # reports a renewed hold's new end
            return
        if job is not None and job.stage == "download" and job.download is None and job.deferred_until:
            if time.time() >= job.deferred_until:  # a new day's byte budget
                self._start_download(now_mono)
            return
        if job is not None and job.stage == "plan" and job.plan.bundle is not None:
            if now_mono - job.last_fetch >= self.cfg.fetch_repair_s * min(8, 2**job.fetch_rounds):
                self._request([])  # no chunk named: the hub publishes the plan again (hub.ingest)
                job.fetch_rounds += 1
            return
        if job is None or job.stage != "download" or job.download is None:
            return
        self._answered(job)
        if job.delta is not None:  # the broker is asked first here too (agent.stall): a slow one keeps the delta
            wait = stall.repair_wait(stall.DELTA_PATIENCE * self.cfg.fetch_repair_s, 0, job.slowest_round_trip)
            step = stall.next_step(now_mono, job.delta.last_chunk, wait, job.probe)
            if step is stall.Step.PROBE:
                self._probe(job, now_mono)
            elif step is stall.Step.REPAIR:
                assert job.probe is not None
                why = "the broker holds none for us" if job.probe.quiet else "the broker did not answer a probe"
                quiet = f"no delta chunk arrived for {now_mono - job.delta.last_chunk:.0f} s"
                self._delta_fallback(job, deltas.Fallback.STALLED, f"{quiet} and {why}")
            return
        wait = stall.repair_wait(self.cfg.fetch_repair_s, job.fetch_rounds, job.slowest_round_trip)
        step = stall.next_step(now_mono, max(job.last_chunk, job.last_fetch), wait, job.probe)
        if step is stall.Step.PROBE:
            self._probe(job, now_mono)
        elif step is stall.Step.REPAIR:
            missing = job.download.missing()
            if missing and self._narrow(job, missing):
                job.last_fetch = now_mono  # the broker's retained copies first; the hub if they bring nothing
            elif missing:
                self._request(missing)
                job.fetch_rounds += 1

    def _probe(self, job: Job, now_mono: float) -> None:
        job.probe_id = self.mqtt.probe(probe_filter(self.cfg.device_id))
        job.probe = stall.Probe(now_mono)

    def _answered(self, job: Job) -> None:
        """Take in the answer to the download's probe, if it came (agent.stall)."""
        if job.probe is None or job.probe_id is None:
            return
        answer = self.mqtt.probe_answer(job.probe_id)
        if answer is None:
            return
        job.probe_id = None
        job.probe = job.probe.answered(*answer)
        took = job.probe.round_trip or 0.0  # the wait is at least twice the slowest round trip
        job.slowest_round_trip = max(job.slowest_round_trip, took)
        if not answer[1]:
            log.info("download quiet, but the broker still had messages for us (round trip %.1f s): waiting on", took)

    def _narrow(self, job: Job, missing: list[int]) -> bool:
        """Before a repair request: per-index filters instead of the wildcard
        (:func:`agent.download.repair_subscription`), so other devices' repairs pass us by, and
        their retained replay brings what the broker still holds. Only after a stall (nothing is
        queued for us then: agent.stall), and not for more indexes than a request names. True
        when new filters went out: the hub is asked only if they bring nothing (its re-published
        chunks reach every device still holding the wildcard: docs/scale.md)."""
        assert job.plan.bundle is not None
        if len(missing) > MAX_REQUESTED:
            return False
        sub = repair_subscription(job.plan.bundle.archive.sha256, missing, job.filters)
        if sub.unsubscribe:
            self.mqtt.unsubscribe_all(list(sub.unsubscribe))
            job.filters -= set(sub.unsubscribe)
        if sub.subscribe and self.mqtt.subscribe_all(list(sub.subscribe), qos=1):
            job.filters |= set(sub.subscribe)
            log.info("asking for %d chunk(s) by index: other devices' repairs no longer reach us", len(sub.subscribe))
            return True
        return False

    def _request(self, missing: list[int]) -> None:
        job = self.job
        assert job is not None and job.plan.bundle is not None
        job.last_fetch = time.monotonic()
        req = FetchRequest(self.cfg.device_id, job.plan.bundle.archive.sha256, tuple(missing[:MAX_REQUESTED]))
        self.mqtt.publish(str(Topic.for_device(Kind.FETCH, self.cfg.device_id)), req.to_bytes(), qos=1)
        what = f"{len(req.missing)} missing chunk(s)" if missing else "the chunk plan"
        log.info("requested %s of %s", what, req.archive[:12])

    # verify, stage, self-test, switch, commit ----------------------------------------------
    def _finish_download(self) -> None:
        job = self.job
        assert job is not None and job.download is not None and job.plan.bundle is not None
        ref, dl, seq = job.plan.bundle, job.download, job.desired.seq
        log.info(
            "download of %s complete: %d chunks, %d bytes received, %d duplicate (%d bytes), "
            "%d chunks were on disk at start",
            ref.archive.sha256[:12],
            dl.total,
            job.received_bytes,
            job.duplicates,
            job.duplicate_bytes,
            dl.rechecked,
        )
        self.report(
            "download",
            "ok",
            Reason.OK,
            f"{ref.archive.size} bytes in {dl.total} chunks",
            seq,
            ref.digest,
            progress=1.0,
            metrics={
                "bad_chunks": job.bad_chunks,
                "received_bytes": job.received_bytes,
                "duplicate_chunks": job.duplicates,
                "duplicate_bytes": job.duplicate_bytes,
                "resumed_chunks": dl.rechecked,
                "delta": job.delta_outcome,
            },
        )
        job.stage = "verify"
        self.on_change()
        try:
            dl.verify()
        except VerificationError as exc:
            # not a final verdict: the chunks matched their signed hashes, so fetch it all again
            self.report("verify", "progress", exc.reason, f"{exc.detail}; fetching again", seq, ref.digest)
            job.stage = "download"
            job.filters_on = -1
            self._subscribe_chunks()
            return
        self._crash_point("verify")
        job.stage = "stage"
        self.on_change()
        try:
            require_fresh_root(self.root(), int(time.time()))
        except RootExpired as exc:  # the download is kept: a newer root can still stage it
            self._fail("verify", exc.reason, exc.detail)
            return
        try:
            manifest, digest, slot_dir = self.slots.stage(dl.path, ref.archive.size, self.root(), ref.members)
        except ProtocolError as exc:
            self._fail("verify", exc.reason, str(exc), remove_download=True)
            return
        except OSError as exc:
            reason = Reason.DISK_FULL if exc.errno == 28 else Reason.INTERNAL
            self._fail("stage", reason, f"cannot write the staged slot: {exc}")
            return
        if digest != ref.digest:
            shutil.rmtree(slot_dir, ignore_errors=True)
            self._fail(
                "verify",
                Reason.HASH_MISMATCH,
                f"archive holds bundle {digest[:12]}, desired names {ref.digest[:12]}",
                remove_download=True,
            )
            return
        self.report(
            "verify", "ok", Reason.OK, f"{manifest.name} {manifest.version} signature and hashes verified", seq, digest
        )
        choice = choose_artifact(manifest, self.inventory())
        if isinstance(choice, Rejection):
            shutil.rmtree(slot_dir, ignore_errors=True)
            self._fail(choice.stage, choice.reason, choice.detail, remove_download=True)
            return
        self.report(
            "stage", "ok", Reason.OK, f"staged; will serve {choice.artifact.name} on {choice.runtime}", seq, digest
        )
        self._crash_point("stage")
        rec = SlotRecord(digest, manifest.name, manifest.version, choice.artifact.name, choice.runtime, seq)
        self._selftest_and_switch(rec, manifest, choice)

    def _selftest_and_switch(self, rec: SlotRecord, manifest: Manifest, choice: Choice) -> None:
        job = self.job
        assert job is not None
        seq = job.desired.seq
        job.stage = "selftest"
        self.on_change()
        model, result = selftest_slot(self.slots, rec, manifest, self.cfg.threads)
        if model is None or not result.ok:
            shutil.rmtree(self.slots.path(rec.digest), ignore_errors=True)
            self.report("selftest", "failed", result.reason, result.detail, seq, rec.digest, metrics=result.metrics())
            active = self.serving.model
            if job.shadow:
                self.report("shadow", "failed", result.reason, "shadow candidate failed its self-test", seq, rec.digest)
            else:
                self.report(
                    "rollback",
                    "ok",
                    result.reason,
                    f"staged bundle discarded; still serving {active.info.digest[:12] if active else 'nothing'}",
                    seq,
                    rec.digest,
                )
            if model is not None:
                model.close()
            self._remove_download()
            self._finish_job(f"failed:{result.reason.value}")
            return
        self.report("selftest", "ok", Reason.OK, result.detail, seq, rec.digest, metrics=result.metrics())
        if job.shadow:
            assert model is not None
            benchmark.on_staged(job.desired.extra, seq, rec.digest, model, self.serving.model, self.report)
            old_shadow = self.serving.set_shadow(model, job.desired.shadow_sample)
            if old_shadow is not None:
                old_shadow.close()
            self.report(
                "shadow",
                "ok",
                Reason.OK,
                f"running {rec.name} {rec.version} beside the active model "
                f"on {job.desired.shadow_sample:.0%} of requests",
                seq,
                rec.digest,
            )
            self._remove_download()
            self._finish_job("shadow:running")
            return
        assert model is not None
        if self._held(job, rec, manifest, choice):
            model.close()  # reopened and tested again when the hold ends
            return
        job.stage = "switch"
        before = self.slots.load()
        self.slots.save(
            SlotsState(
                active=rec,
                previous=before.active,
                trial=True,
                probation=0 if self.cfg.probation_inferences > 0 else None,
            )
        )
        old = self.serving.swap(model, (self.cfg.probation_inferences, self.cfg.probation_max_errors))
        if old is not None:
            old.close()
        self.report(
            "switch", "ok", Reason.OK, f"now serving {rec.name} {rec.version} on {rec.runtime}", seq, rec.digest
        )
        self._crash_point("switch")
        self.commit(rec, seq)

    def commit(self, rec: SlotRecord, seq: int) -> None:
        st = self.slots.load()
        self.slots.save(SlotsState(active=st.active, previous=st.previous, trial=False, probation=st.probation))
        self._crash_point("commit")
        self.slots.gc(self.slots.load(), self._keep())
        self._remove_download()
        self.report("commit", "ok", Reason.OK, f"{rec.name} {rec.version} committed", seq, rec.digest)
        if self.job is not None:
            self._finish_job("installed")
        self.on_change()

    def _switch_back(self, desired: Desired) -> None:
        """The hub asked for the bundle kept in the previous slot: self-test it, then switch."""
        st = self.slots.load()
        prev = st.previous
        assert prev is not None and desired.bundle is not None
        try:
            manifest = self.slots.check(prev.digest, self.root())
        except (ProtocolError, OSError) as exc:
            # the kept copy is gone or damaged: fetch it like any other bundle
            log.warning("kept slot %s unusable (%s); downloading it", prev.digest[:12], exc)
            assert self.job is not None
            self.job.plan = Plan("install", desired.seq, desired.bundle)
            self._start_download(time.time())
            return
        rec = SlotRecord(prev.digest, prev.name, prev.version, prev.artifact, prev.runtime, desired.seq)
        self.report(
            "stage", "ok", Reason.OK, f"using the kept slot for {prev.name} {prev.version}", desired.seq, prev.digest
        )
        choice = choose_artifact(manifest, self.inventory())
        if isinstance(choice, Rejection):
            self._fail(choice.stage, choice.reason, choice.detail)
            return
        self._selftest_and_switch(rec, manifest, choice)

    def rollback(self, reason: Reason, detail: str) -> bool:
        """Switch back to the previous slot (probation failure, operator command)."""
        st = self.slots.load()
        if st.previous is None:
            self.report(
                "rollback",
                "failed",
                reason,
                f"{detail}; no previous slot to roll back to",
                bundle=st.active.digest if st.active else None,
            )
            return False
        prev = st.previous
        try:
            manifest = self.slots.check(prev.digest, self.root())
            model = open_model(self.slots, prev, manifest, self.cfg.threads)
        except (ProtocolError, ModelError, OSError) as exc:
            self.report("rollback", "failed", reason, f"{detail}; previous slot unusable: {exc}", bundle=prev.digest)
            return False
        abandoned_seq = st.active.desired_seq if st.active is not None else prev.desired_seq
        self.slots.save(SlotsState(active=prev, previous=None, trial=False))
        old = self.serving.swap(model)
        if old is not None:
            old.close()
        self.slots.gc(self.slots.load(), self._keep())
        # desired_seq names the install being abandoned, so the hub can fail it in its rollout
        self.report(
            "rollback",
            "ok",
            reason,
            f"{detail}; back to {prev.name} {prev.version}",
            desired_seq=abandoned_seq,
            bundle=prev.digest,
        )
        self.on_change()
        return True

    def _keep(self) -> set[str]:
        sh = self.serving.shadow
        return {sh.info.digest} if sh is not None else set()

    # failure ---------------------------------------------------------------------------------
    def _fail(self, stage: str, reason: Reason, detail: str, remove_download: bool = False) -> None:
        job = self.job
        seq = job.desired.seq if job else 0
        digest = job.plan.bundle.digest if job and job.plan.bundle else None
        log.warning("install of %s failed at %s: %s: %s", digest[:12] if digest else "-", stage, reason.value, detail)
        self.report(stage, "failed", reason, detail, seq, digest)
        if remove_download:
            self._remove_download()
        self._finish_job(f"failed:{reason.value}")

    def _remove_download(self) -> None:
        job = self.job
        if job and job.download:
            job.download.remove()
        if job and job.plan.bundle is not None:
            self._plan_file(job.plan.bundle).unlink(missing_ok=True)  # kept only beside a partial download

    @property
    def state(self) -> str:
        if self.job is None:
            return "idle"
        return "download" if self.job.stage == "plan" else self.job.stage  # fetching its chunk list first

    @property
    def staged(self) -> BundleInfo | None:
        if self.job and self.job.plan.bundle:
            b = self.job.plan.bundle
            return BundleInfo(b.digest, b.name, b.version)
        return None


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
