"""One simulated device: the agent's install and telemetry rules over an in-memory state.

What is the agent's own code (imported, not re-implemented): :func:`protocol.messages.verify_desired`
(signature, device, seq, expiry), :func:`agent.install.require_fresh_root`, :func:`agent.install.plan`,
:func:`agent.install.choose_artifact`, :func:`agent.install.probation_verdict`,
:func:`agent.download.chunk_subscription`, :func:`agent.download.repair_subscription`,
:meth:`protocol.bundle.ChunkPlan.check_chunk`,
:func:`protocol.bundle.read_archive` (through :class:`sim.archives.Archives`), the slot records
(:class:`agent.slots.SlotsState`) and every wire message (:mod:`protocol.messages`).

What is simulated: the disk (slots, the download bitmap and the report/telemetry backlog live in
memory), the self-test (passes unless ``selftest_fails``), and inference (:class:`sim.config.Inference`).
The daemon's event order is kept: desired -> plan -> download (chunks, bitmap, repair requests
after ``fetch_repair_s`` without progress, backing off x2 up to x8) -> verify -> stage -> selftest
-> switch (trial, probation) -> commit; every step reported like the agent reports it, with the
same stages, reasons and report sequence numbers, resent until the hub acks them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from agent import AGENT_VERSION, stall
from agent.backlog import resend_wait
from agent.download import MAX_REQUESTED, chunk_subscription, progress_due, repair_subscription
from agent.install import (
    Current,
    Inventory,
    Plan,
    Rejection,
    choose_artifact,
    plan,
    probation_verdict,
    require_fresh_root,
)
from agent.slots import SlotRecord, SlotsState
from protocol import planref
from protocol.device import Health, Inventory as WireInventory, Shadow
from protocol.errors import BadPayload, ProtocolError, Reason, VerificationError
from protocol.messages import (
    COUNT_KEYS,
    BundleInfo,
    Desired,
    FetchRequest,
    Report,
    Status,
    Telemetry,
    parse_ack,
    verify_desired,
)
from protocol.signing import Root
from protocol.sketch import LatencySketch
from protocol.topics import Kind, Topic, probe_filter

from .archives import Archives, Verified
from .config import Inference, SimConfig
from .link import Link


@dataclass
class Job:
    desired: Desired
    plan: Plan
    bits: bytearray
    stage: str = "download"
    filters: set[str] = field(default_factory=set)
    filters_on: int = -1
    lost: set[int] = field(default_factory=set)  # chunks whose first delivery was lost (Faults.lost_chunks)
    last_chunk: float = 0.0
    last_fetch: float = 0.0
    fetch_rounds: int = 0
    probe: stall.Probe | None = None  # the agent's probe of a quiet download (agent.stall)
    probe_id: int | None = None
    slowest_round_trip: float = 0.0
    reported_decile: int = -1
    reported_at: float = 0.0
    received_bytes: int = 0
    duplicates: int = 0
    duplicate_bytes: int = 0
    bad_chunks: int = 0

    @property
    def missing(self) -> list[int]:
        return [i for i, b in enumerate(self.bits) if not b]


TRACE_MAX = 48


@dataclass
class Counters:
    """What the fleet sums up for benches and tests."""

    desired_at: float | None = None  # monotonic time the newest desired document was accepted
    committed_at: float | None = None  # ... and the install it started was committed
    first_chunk_at: float | None = None  # ... and the first chunk of that install's download arrived
    chunk_bytes: int = 0  # every chunk payload that reached this device
    duplicate_bytes: int = 0  # of them, chunks it already held
    fetch_requests: int = 0  # asking for missing chunks
    probes: int = 0  # asking the broker whether anything is still queued for us (agent.stall)
    plan_requests: int = 0  # asking for a chunk plan read by reference (protocol.planref)
    rejected: list[str] = field(default_factory=list)  # reason codes of installs that failed
    ack_lags: list[float] = field(default_factory=list)  # telemetry: publish -> the hub's ack, seconds
    ack_sent: list[float] = field(default_factory=list)  # ... and when each of those windows was first sent
    telemetry_sent: int = 0
    reports_sent: int = 0  # install reports made (each once; resends not counted)
    resent: int = 0  # reports and telemetry windows sent again, unacked (agent.backlog.resend_wait)
    # what this device's newest install went through, for benches that ask which devices are late
    # and why: (monotonic time, event), at most TRACE_MAX (later ones counted, not kept)
    trace: list[tuple[float, str]] = field(default_factory=list)
    trace_dropped: int = 0
    max_chunk_gap: float = 0.0  # the longest wait between two chunks of that download, seconds
    last_chunk_at: float = 0.0

    def note(self, event: str, at: float | None = None) -> None:
        if len(self.trace) < TRACE_MAX:
            self.trace.append((time.monotonic() if at is None else at, event))
        else:
            self.trace_dropped += 1


class SimDevice:
    def __init__(
        self,
        device_id: str,
        cfg: SimConfig,
        root: Root,
        archives: Archives,
        rng: random.Random,
        inference: Inference | None = None,
    ) -> None:
        self.id = device_id
        self.cfg = cfg
        self.root = root
        self.archives = archives
        self.rng = rng
        self.inference = inference or cfg.inference
        # what a bundle does on this device instead of ``inference`` (an injected regression), by digest
        self.per_bundle: dict[str, Inference] = {}
        self._served: dict[str, dict[str, dict[str, list[int]]]] = {}  # serve(): digest -> drift refs
        self.selftest_fails = False
        self.link: Link | None = None
        self.inventory = Inventory(board=cfg.board, free_disk=cfg.free_disk, agent_version=AGENT_VERSION)
        self.trusted_seq = 0
        self.slots = SlotsState()
        self.verified: dict[str, Verified] = {}  # digest -> what its archive held (kept for the slots)
        self.job: Job | None = None
        self.probation: tuple[int, int] | None = None  # (inferences, errors) since the switch
        self._seq = {"report": 0, "telemetry": 0}
        # payload, first sent, last sent, sends (resent after agent.backlog.resend_wait, as the agent)
        self.unacked: dict[tuple[str, int], tuple[bytes, float, float, int]] = {}
        self.counters = Counters()
        self._window_start = int(time.time())
        self._next_tel = time.monotonic() + rng.uniform(0, cfg.telemetry_interval_s)
        self.telemetry_stopped = False  # no new windows (a bench counting every window sent)
        self._next_status = 0.0
        self._dirty = True
        self._carry = 0.0  # fractional inferences carried to the next tick
        self._reset_window()

    # identity ------------------------------------------------------------------------------------
    def topic(self, kind: Kind) -> str:
        return str(Topic.for_device(kind, self.id))

    def will(self) -> tuple[str, bytes]:
        st = Status(self.id, False, int(time.time()), AGENT_VERSION, WireInventory(board=self.cfg.board))
        return self.topic(Kind.STATUS), st.to_bytes()

    @property
    def active(self) -> str | None:
        return self.slots.active.digest if self.slots.active else None

    # link events ---------------------------------------------------------------------------------
    def on_connected(self, session_present: bool) -> None:
        assert self.link is not None
        if self.job is not None:
            self.counters.note(f"connected session_present={int(session_present)}")
        self.link.subscribe([self.topic(Kind.DESIRED), self.topic(Kind.ACK)])
        if self.job is not None and self.job.stage == "plan" and self.job.plan.bundle is not None:
            self.link.subscribe([str(Topic.plan(self.job.plan.bundle.archive.sha256))])
        if self.job is not None and self.job.stage == "download":
            self._subscribe_chunks()
            self.job.last_chunk = time.monotonic()
        self._publish_status()
        self._flush(force=True)

    def on_disconnected(self) -> None:
        self._dirty = True
        if self.job is not None:
            self.counters.note("disconnected")

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            t = Topic.parse(topic)
        except BadPayload:
            return
        if t.kind is Kind.CHUNK:
            self._on_chunk(t, payload)
        elif t.kind is Kind.PLAN and payload:
            self._on_plan(t, payload)
        elif t.kind is Kind.DESIRED and t.device == self.id and payload:
            self._on_desired(payload)
        elif t.kind is Kind.ACK and t.device == self.id:
            try:
                ack = parse_ack(payload)
            except BadPayload:
                return
            now = time.monotonic()
            for s in ack.seqs:
                entry = self.unacked.pop((ack.kind, s), None)
                if entry is not None and ack.kind == "telemetry":
                    self.counters.ack_lags.append(now - entry[1])
                    self.counters.ack_sent.append(entry[1])

    # reports, status, telemetry --------------------------------------------------------------------
    def report(
        self,
        stage: str,
        status: str,
        reason: Reason = Reason.OK,
        detail: str = "",
        desired_seq: int | None = None,
        bundle: str | None = None,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self._seq["report"] += 1
        seq = self._seq["report"]
        self.counters.reports_sent += 1
        msg = Report(
            self.id,
            seq,
            int(time.time()),
            stage,
            status,
            reason.value,
            detail[:2000],
            self.trusted_seq if desired_seq is None else desired_seq,
            bundle,
            progress,
            metrics or {},
        )
        self._send("report", seq, msg.to_bytes())

    def _send(self, kind: str, seq: int, payload: bytes) -> None:
        now = time.monotonic()
        topic = self.topic(Kind.REPORT if kind == "report" else Kind.TELEMETRY)
        sent = self.link is not None and self.link.publish(topic, payload)
        self.unacked[(kind, seq)] = (payload, now, now if sent else 0.0, 1 if sent else 0)

    def _flush(self, force: bool = False) -> None:
        if not self.unacked or self.link is None or not self.link.connected:
            return  # the usual case, checked every tick on every device: keep it cheap
        now = time.monotonic()
        after = self.cfg.resend_after_s
        due = [kv for kv in self.unacked.items() if force or now - kv[1][2] >= resend_wait(after, kv[1][3])]
        if not due:
            return
        for (kind, seq), (payload, first, _last, sends) in sorted(due, key=lambda kv: kv[1][1])[:200]:
            topic = self.topic(Kind.REPORT if kind == "report" else Kind.TELEMETRY)
            if not self.link.publish(topic, payload):
                break
            self.unacked[(kind, seq)] = (payload, first, now, sends + 1)
            self.counters.resent += 1 if sends else 0

    def _status(self, online: bool) -> Status:
        active = self.slots.active
        staged = self.job.plan.bundle if self.job and self.job.plan.bundle else None
        inv = WireInventory(
            board=self.cfg.board,
            agent_version=AGENT_VERSION,
            edgetpu=False,
            free_disk=self.cfg.free_disk,
            mqtt="v5",
            served_by="cpu" if active else None,
            features=(planref.FEATURE,) if self.cfg.plan_by_reference else (),
        )
        return Status(
            self.id,
            online,
            int(time.time()),
            AGENT_VERSION,
            inv,
            BundleInfo(active.digest, active.name, active.version) if active else None,
            BundleInfo(staged.digest, staged.name, staged.version) if staged else None,
            ("download" if self.job.stage == "plan" else self.job.stage)
            if self.job
            else ("serving" if active else "idle"),
            self.trusted_seq,
        )

    def _publish_status(self) -> None:
        if self.link is not None and self.link.connected:
            if self.link.publish(self.topic(Kind.STATUS), self._status(True).to_bytes(), retain=True):
                self._dirty = False
                self._next_status = time.monotonic() + self.cfg.status_interval_s

    def _reset_window(self) -> None:
        self._sketch = LatencySketch()
        self._counts = {k: 0 for k in COUNT_KEYS}
        self._shadow = [0, 0]  # agreed, compared
        refs = self._refs()
        self._drift = {side: {n: [0] * len(r) for n, r in feats.items()} for side, feats in refs.items() if feats}
        # cumulative reference counts, once per window rather than once per simulated inference
        self._cum = [(side, n, list(itertools.accumulate(r))) for side, f in refs.items() for n, r in f.items() if r]

    def _refs(self) -> dict[str, dict[str, list[int]]]:
        a = self.active
        if a is None:
            return {}
        return self.verified[a].refs if a in self.verified else self._served.get(a, {})

    def serve(self, record: SlotRecord, refs: dict[str, dict[str, list[int]]]) -> None:
        """Serve ``record`` as if installed (no transfer, no verification), the one before kept as
        previous: for benches that judge what a bundle's telemetry says, not how it got there
        (``bench/gates.py``). ``refs``: its drift baseline's counts, side -> feature -> counts."""
        self._telemetry_switch()
        self._served[record.digest] = refs
        self.slots = SlotsState(active=record, previous=self.slots.active, trial=False)
        self._reset_window()

    def window(self, now: int | None = None) -> Telemetry:
        """Close the current telemetry window and return it (what :meth:`tick` sends)."""
        now = int(time.time()) if now is None else now
        self._seq["telemetry"] += 1
        seq = self._seq["telemetry"]
        agreed, compared = self._shadow
        msg = Telemetry(
            self.id,
            seq,
            self._window_start,
            max(self._window_start, now),
            self.active,
            dict(self._counts),
            self._sketch.to_dict(),
            {s: {n: list(c) for n, c in f.items()} for s, f in self._drift.items()},
            Shadow(compared, 0, agreed / compared) if compared else None,
            Health(),
            {"pending": len(self.unacked)},
        )
        self._window_start = max(self._window_start, now)
        self._reset_window()
        return msg

    def _telemetry(self) -> None:
        msg = self.window()
        self.counters.telemetry_sent += 1
        self._send("telemetry", msg.seq, msg.to_bytes())

    # simulated inference -----------------------------------------------------------------------------
    def infer(self, n: int) -> None:
        """``n`` simulated requests on the active model (none without one)."""
        if self.active is None:
            return
        inf = self.per_bundle.get(self.active, self.inference)
        mu = math.log(max(1e-6, inf.latency_ms * inf.slowdown / 1000.0))
        rand = self.rng.random
        for _ in range(n):
            self._counts["inferences"] += 1
            ok = rand() >= inf.error_rate
            if ok:
                # draw only for what is simulated, so a run without cloud or shadow draws as before
                self._counts["cloud" if inf.cloud_rate and rand() < inf.cloud_rate else "cpu"] += 1
                if inf.shadow_agreement is not None:
                    self._shadow[0] += rand() < inf.shadow_agreement
                    self._shadow[1] += 1
                self._sketch.add(self.rng.lognormvariate(mu, inf.sigma))
                for side, name, cum in self._cum:
                    self._drift[side][name][self._sample_bin(cum, inf.drift)] += 1
            else:
                self._counts["errors"] += 1
            if self.probation is not None:
                done, errs = self.probation
                self.probation = (done + 1, errs + (0 if ok else 1))
        self._check_probation()

    def _sample_bin(self, cum: list[int], drift: float) -> int:
        """A bin drawn from the reference (``cum``: its cumulative counts), shifted by ``drift``."""
        i = bisect.bisect_right(cum, self.rng.random() * cum[-1]) if cum[-1] else 0
        if drift:
            whole = math.floor(drift)
            i += whole + (1 if drift > whole and self.rng.random() < drift - whole else 0)
        return min(len(cum) - 1, max(0, i))

    def _check_probation(self) -> None:
        if self.probation is None:
            return
        done, errs = self.probation
        verdict = probation_verdict(done, errs, self.cfg.probation_inferences, self.cfg.probation_max_errors)
        if verdict == "pass":
            self.probation = None
        elif verdict == "rollback":
            self.probation = None
            self.rollback(Reason.INFERENCE_FAILED, f"{errs} errors in the first {done} inferences on probation")

    # timers ------------------------------------------------------------------------------------------
    def tick(self, now: float, dt: float) -> None:
        """Everything the daemon's main loop does on a timer; ``dt`` seconds since the last tick."""
        want = self.inference.rate * dt + self._carry
        n = int(want)
        self._carry = want - n
        if n:
            self.infer(n)
        job = self.job
        if job is not None and job.stage == "plan" and self.link is not None and self.link.connected:
            if now - job.last_fetch >= self.cfg.fetch_repair_s * min(8, 2**job.fetch_rounds):
                assert job.plan.bundle is not None  # no chunk named: the hub publishes the plan again
                job.last_fetch = now
                job.fetch_rounds += 1
                req = FetchRequest(self.id, job.plan.bundle.archive.sha256, ())
                self.link.publish(self.topic(Kind.FETCH), req.to_bytes())
                self.counters.plan_requests += 1
        if job is not None and job.stage == "download" and self.link is not None and self.link.connected:
            self._quiet_download(job, now)
        if now >= self._next_tel and not self.telemetry_stopped:
            self._next_tel = now + self.cfg.telemetry_interval_s
            self._telemetry()
            self._dirty = True
        self._flush()
        if self._dirty or now >= self._next_status:
            self._publish_status()

    def _quiet_download(self, job: Job, now: float) -> None:
        """The agent's rule for a download gone quiet (agent.stall): probe the broker, and ask the
        hub for the missing chunks only when the broker had nothing queued for us."""
        assert self.link is not None
        if job.probe is not None and job.probe_id is not None:
            answer = self.link.probe_answer(job.probe_id)
            if answer is not None:
                job.probe_id = None
                job.probe = job.probe.answered(*answer)
                rt = job.probe.round_trip or 0.0
                self.counters.note(f"probe answered {'quiet' if job.probe.quiet else 'busy'} in {rt:.2f} s")
                job.slowest_round_trip = max(job.slowest_round_trip, job.probe.round_trip or 0.0)
        wait = stall.repair_wait(self.cfg.fetch_repair_s, job.fetch_rounds, job.slowest_round_trip)
        step = stall.next_step(now, max(job.last_chunk, job.last_fetch), wait, job.probe)
        if step is stall.Step.PROBE:
            if job.probe_id is not None and job.probe is not None:
                self.counters.note(f"the probe sent {now - job.probe.sent_at:.1f} s ago went unanswered")
            where = self.link.state()  # before the probe: its own UNSUBSCRIBE is not what was waiting
            job.probe_id = self.link.probe(probe_filter(self.id))
            job.probe = stall.Probe(now)
            self.counters.probes += 1
            self.counters.note(
                f"probe after {now - max(job.last_chunk, job.last_fetch):.1f} s quiet, {len(job.missing)} missing; "
                + where
            )
            return
        missing = job.missing
        if step is stall.Step.REPAIR and missing and job.plan.bundle is not None:
            job.last_fetch = now
            if self._narrow(job, missing):  # the broker's retained copies first (the agent's rule)
                self.counters.note(f"narrowed to {len(missing)} per-index filters")
                return
            job.fetch_rounds += 1
            req = FetchRequest(self.id, job.plan.bundle.archive.sha256, tuple(missing[:MAX_REQUESTED]))
            self.link.publish(self.topic(Kind.FETCH), req.to_bytes())
            self.counters.fetch_requests += 1
            self.counters.note(f"asked the hub for {len(req.missing)} chunks")

    # install ---------------------------------------------------------------------------------------
    def _on_desired(self, payload: bytes) -> None:
        now = int(time.time())
        try:
            desired = verify_desired(payload, self.root, self.id, self.trusted_seq, now)
            require_fresh_root(self.root, now)
        except (VerificationError, BadPayload) as exc:
            if exc.reason is Reason.REPLAYED:
                return
            self.report("verify", "failed", exc.reason, f"desired document rejected: {exc}", 0)
            return
        self.trusted_seq = desired.seq
        self._dirty = True
        self.counters.desired_at = time.monotonic()
        self.counters.committed_at = None
        self.counters.first_chunk_at = None
        self.counters.trace.clear()
        self.counters.trace_dropped = 0
        self.counters.max_chunk_gap = 0.0
        self.counters.note(f"desired seq {desired.seq} accepted", self.counters.desired_at)
        self.accept(desired, now)

    def accept(self, desired: Desired, now: int) -> None:
        if self.job is not None:
            self._drop_filters(self.job)
            if self.job.stage == "plan" and self.job.plan.bundle is not None and self.link is not None:
                self.link.unsubscribe([str(Topic.plan(self.job.plan.bundle.archive.sha256))])
            self.job = None
        ref = desired.bundle
        result = plan(
            Current(self.active, self.slots.previous.digest if self.slots.previous else None, 0),
            desired,
            self.inventory,
            now,
        )
        digest = ref.digest if ref else None
        if isinstance(result, Rejection):
            self.counters.rejected.append(result.reason.value)
            self.report(result.stage, "failed", result.reason, result.detail, desired.seq, digest)
            return
        if result.action == "idle":
            self.report("idle", "ok", Reason.OK, "nothing to install", desired.seq)
            self.counters.committed_at = time.monotonic()
        elif result.action == "noop":
            self.report("commit", "ok", Reason.OK, "already active", desired.seq, digest)
            self.counters.committed_at = time.monotonic()
        elif result.action == "switch_back":
            prev = self.slots.previous
            assert prev is not None
            self.job = Job(desired, result, bytearray(), stage="stage")
            self.report(
                "stage",
                "ok",
                Reason.OK,
                f"using the kept slot for {prev.name} {prev.version}",
                desired.seq,
                prev.digest,
            )
            self._selftest_and_switch(
                SlotRecord(prev.digest, prev.name, prev.version, prev.artifact, prev.runtime, desired.seq)
            )
        else:
            assert ref is not None
            self.job = Job(desired, result, bytearray(len(ref.archive.chunks)))
            self.job.last_chunk = self.job.last_fetch = time.monotonic()
            if ref.unresolved:  # the chunk list is read once per archive (protocol.planref)
                self.job.stage = "plan"
                if self.link is not None and self.link.connected:
                    self.link.subscribe([str(Topic.plan(ref.archive.sha256))])
                return
            self._begin_download()

    def _on_plan(self, t: Topic, payload: bytes) -> None:
        job = self.job
        ref = job.plan.bundle if job is not None else None
        if job is None or job.stage != "plan" or ref is None or t.digest != ref.archive.sha256:
            return
        try:
            full = ref.resolve(payload)
        except VerificationError:
            return  # not the plan the signed document names: wait for it, ask again on the timer
        if self.link is not None:
            self.link.unsubscribe([str(t)])
        job.plan = replace(job.plan, bundle=full)
        job.bits = bytearray(len(full.archive.chunks))
        job.stage = "download"
        job.fetch_rounds = 0
        job.last_chunk = job.last_fetch = time.monotonic()
        self._begin_download()

    def _begin_download(self) -> None:
        job = self.job
        assert job is not None and job.plan.bundle is not None
        ref = job.plan.bundle
        self.report(
            "download",
            "progress",
            Reason.OK,
            f"{len(ref.archive.chunks)} of {len(ref.archive.chunks)} chunks to fetch",
            job.desired.seq,
            ref.digest,
            progress=0.0,
        )
        job.reported_decile, job.reported_at = 0, time.monotonic()
        self._dirty = True
        self._subscribe_chunks()

    def _subscribe_chunks(self) -> None:
        job, link = self.job, self.link
        if job is None or job.plan.bundle is None or link is None or not link.connected:
            return
        if job.filters_on == link.connection:
            return
        missing = job.missing
        sub = chunk_subscription(
            job.plan.bundle.archive.sha256,
            missing,
            len(job.bits),
            job.filters,
            link.session_present and job.filters_on >= 0,
            True,
            link.confirmed,
        )
        if sub.unsubscribe:
            link.unsubscribe(list(sub.unsubscribe))
        if link.subscribe(list(sub.subscribe), only_new=sub.only_new):
            job.filters = (job.filters - set(sub.unsubscribe)) | set(sub.subscribe)
            job.filters_on = link.connection

    def _narrow(self, job: Job, missing: list[int]) -> bool:
        """The agent's rule before a repair request (agent.download.repair_subscription); True
        when new filters went out (the hub is asked only if their retained replay brings nothing)."""
        if job.plan.bundle is None or self.link is None or len(missing) > MAX_REQUESTED:
            return False
        sub = repair_subscription(job.plan.bundle.archive.sha256, missing, job.filters)
        if sub.unsubscribe:
            self.link.unsubscribe(list(sub.unsubscribe))
            job.filters -= set(sub.unsubscribe)
        if sub.subscribe and self.link.subscribe(list(sub.subscribe)):
            job.filters |= set(sub.subscribe)
            return True
        return False

    def _drop_filters(self, job: Job) -> None:
        if job.filters and self.link is not None:
            self.link.unsubscribe(sorted(job.filters))
        job.filters = set()

    def _on_chunk(self, topic: Topic, payload: bytes) -> None:
        self.counters.chunk_bytes += len(payload)
        job = self.job
        ref = job.plan.bundle if job else None
        if job is None or ref is None or topic.digest != ref.archive.sha256 or topic.index is None:
            self.counters.duplicate_bytes += len(payload)
            return
        job.received_bytes += len(payload)
        i = topic.index
        if job.stage != "download" or (0 <= i < len(job.bits) and job.bits[i]):
            job.duplicates += 1
            job.duplicate_bytes += len(payload)
            self.counters.duplicate_bytes += len(payload)
            return
        if i in self.cfg.faults.lost_chunks and i not in job.lost:  # acknowledged, never written
            job.lost.add(i)
            return
        arrived = time.monotonic()
        if self.counters.first_chunk_at is None:
            self.counters.first_chunk_at = arrived
            self.counters.note(f"first chunk ({i})", arrived)
        else:
            self.counters.max_chunk_gap = max(self.counters.max_chunk_gap, arrived - self.counters.last_chunk_at)
        self.counters.last_chunk_at = job.last_chunk = arrived
        try:
            if not self.archives.known(ref.archive, i, payload):  # equal to checked bytes: same verdict
                ref.archive.check_chunk(i, payload)
        except VerificationError as exc:
            job.bad_chunks += 1
            self.report(
                "download",
                "progress",
                exc.reason,
                f"chunk {i} rejected and re-requested: {exc.detail}",
                job.desired.seq,
            )
            return
        job.bits[i] = 1
        self.archives.keep(ref.archive, i, payload)
        one = str(topic)
        if one in job.filters and self.link is not None:
            job.filters.discard(one)
            self.link.unsubscribe([one])
        held = sum(job.bits)
        done = held == len(job.bits)
        now = time.monotonic()
        decile = progress_due(
            held, len(job.bits), job.reported_decile, job.reported_at, now, self.cfg.progress_interval_s
        )
        if decile is not None:  # never once done: the end is its own report
            job.reported_decile, job.reported_at = decile, now
            self.report(
                "download",
                "progress",
                Reason.OK,
                f"{held}/{len(job.bits)} chunks",
                job.desired.seq,
                ref.digest,
                progress=held / max(1, len(job.bits)),
            )
        if done:
            self._drop_filters(job)
            self._finish_download()

    def _finish_download(self) -> None:
        job = self.job
        assert job is not None and job.plan.bundle is not None
        ref, seq = job.plan.bundle, job.desired.seq
        self.report(
            "download",
            "ok",
            Reason.OK,
            f"{ref.archive.size} bytes in {len(job.bits)} chunks",
            seq,
            ref.digest,
            progress=1.0,
            metrics={
                "bad_chunks": job.bad_chunks,
                "received_bytes": job.received_bytes,
                "duplicate_chunks": job.duplicates,
                "duplicate_bytes": job.duplicate_bytes,
                "resumed_chunks": 0,
            },
        )
        job.stage = "verify"
        try:
            require_fresh_root(self.root, int(time.time()))
            v = self.archives.verify(ref.archive, self.root)
        except ProtocolError as exc:
            self._fail("verify", exc.reason, str(exc))
            return
        if v.digest != ref.digest:
            self._fail(
                "verify", Reason.HASH_MISMATCH, f"archive holds bundle {v.digest[:12]}, desired names {ref.digest[:12]}"
            )
            return
        self.report(
            "verify",
            "ok",
            Reason.OK,
            f"{v.manifest.name} {v.manifest.version} signature and hashes verified",
            seq,
            v.digest,
        )
        choice = choose_artifact(v.manifest, self.inventory)
        if isinstance(choice, Rejection):
            self._fail(choice.stage, choice.reason, choice.detail)
            return
        job.stage = "stage"
        self.verified[v.digest] = v
        self.report(
            "stage", "ok", Reason.OK, f"staged; will serve {choice.artifact.name} on {choice.runtime}", seq, v.digest
        )
        self._selftest_and_switch(
            SlotRecord(v.digest, v.manifest.name, v.manifest.version, choice.artifact.name, choice.runtime, seq)
        )

    def _selftest_and_switch(self, rec: SlotRecord) -> None:
        job = self.job
        assert job is not None
        seq = job.desired.seq
        if self.selftest_fails:
            self.report("selftest", "failed", Reason.SELFTEST_FAILED, "simulated self-test failure", seq, rec.digest)
            active = self.slots.active
            self.report(
                "rollback",
                "ok",
                Reason.SELFTEST_FAILED,
                f"staged bundle discarded; still serving {active.digest[:12] if active else 'nothing'}",
                seq,
                rec.digest,
            )
            self.counters.rejected.append(Reason.SELFTEST_FAILED.value)
            self.job = None
            return
        self.report("selftest", "ok", Reason.OK, "simulated self-test passed", seq, rec.digest)
        before = self.slots
        self.slots = SlotsState(active=rec, previous=before.active, trial=True, probation=0)
        self.probation = (0, 0) if self.cfg.probation_inferences > 0 else None
        self._telemetry_switch()
        self.report(
            "switch", "ok", Reason.OK, f"now serving {rec.name} {rec.version} on {rec.runtime}", seq, rec.digest
        )
        self.slots = SlotsState(active=rec, previous=before.active, trial=False, probation=0)
        self._gc()
        self.report("commit", "ok", Reason.OK, f"{rec.name} {rec.version} committed", seq, rec.digest)
        self.job = None
        self.counters.committed_at = time.monotonic()
        self.counters.note("committed", self.counters.committed_at)
        self._dirty = True

    def _telemetry_switch(self) -> None:
        """No window mixes two models (as the agent's recorder closes one at a switch)."""
        if any(self._counts.values()):
            self._telemetry()
        else:
            self._reset_window()

    def _gc(self) -> None:
        keep = {r.digest for r in (self.slots.active, self.slots.previous) if r is not None}
        self.verified = {d: v for d, v in self.verified.items() if d in keep}

    def rollback(self, reason: Reason, detail: str) -> bool:
        st = self.slots
        if st.previous is None:
            self.report("rollback", "failed", reason, f"{detail}; no previous slot to roll back to", bundle=self.active)
            return False
        prev = st.previous
        abandoned = st.active.desired_seq if st.active is not None else prev.desired_seq
        self._telemetry_switch()
        self.slots = SlotsState(active=prev, previous=None, trial=False)
        self._reset_window()
        self._gc()
        self.report(
            "rollback",
            "ok",
            reason,
            f"{detail}; back to {prev.name} {prev.version}",
            desired_seq=abandoned,
            bundle=prev.digest,
        )
        self._dirty = True
        return True

    def _fail(self, stage: str, reason: Reason, detail: str) -> None:
        job = self.job
        seq = job.desired.seq if job else 0
        digest = job.plan.bundle.digest if job and job.plan.bundle else None
        self.counters.rejected.append(reason.value)
        self.report(stage, "failed", reason, detail, seq, digest)
        if job is not None:
            self._drop_filters(job)
        self.job = None
        self._dirty = True

    # churn -----------------------------------------------------------------------------------------
    def wipe(self) -> None:
        """The device is replaced by a fresh one with the same id: nothing installed, no trust
        state. Its report and telemetry sequence numbers keep counting: the hub drops a (device,
        seq) it stored before as a duplicate, so a replacement restarting at 1 would go unheard
        (a real replacement device has the same problem; see docs/scale.md)."""
        self.trusted_seq = 0
        self.slots = SlotsState()
        self.verified = {}
        self.job = None
        self.probation = None
        self.unacked = {}
        self._reset_window()
        self._dirty = True
