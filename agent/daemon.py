"""The agent daemon: one event loop that owns all state; threads only feed it.

Threads:
* network (this module): connects with jittered exponential backoff, reconnects after any
  drop, and queues ``connected`` / ``disconnected`` events; paho's own thread queues messages;
* HTTP (``agent/serve.py``): serves predictions, records telemetry, may queue a rollback;
* main: everything else, in order: desired documents, chunks, acks, timers (telemetry window,
  fetch repair, backlog resend, status).

Start-up: read the pinned root (or a newer rotated one), recover the slots (``install.recover``),
load the active model, start HTTP, then the network; resume an unfinished install job.

An expired trust root does not stop the agent (it would brick a device whose root expired while
it was off): it logs an error naming the expiry, keeps serving the installed model, refuses
every new desired document (reported ``expired``, naming the root's expiry) and holds the last
one; a root rotation on ``ef/v1/root`` chains from the expired root, and the held document is
then verified again under the new root (``install.require_fresh_root``).
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from protocol.channels import DEFAULT, ChannelStatus
from protocol.commands import Command
from protocol.device import Inventory
from protocol.errors import BadPayload, ProtocolError, Reason, VerificationError
from protocol.messages import Desired, Hold, Report, Status, Telemetry, parse_ack, parse_desired_payload, verify_desired
from protocol.samples import parse_receipt
from protocol.signing import Envelope, Root, load_root_unverified, rotate_root, targets_rotated
from protocol.topics import PREFIX, Kind, Topic

from . import AGENT_VERSION, commands, diagnostics, inventory, watchdog
from .backlog import Backlog
from .budget import Meter
from .channels import Channel, accepted, channel_config, due, installed
from .config import AgentConfig
from .durable import fsync_dir, read_checked, read_json, write_atomic, write_json
from .errors import ConnectError, RootExpired, StartupError
from .hardexamples import HardExamples
from .install import crash_verdict, recover, require_fresh_root
from .localapi import make_server, make_unix_server
from .metrics import AgentMetrics
from .notify import Notifier
from .request import Request
from .runtime import Model
from .serve import Answer, CloudClient, Serving
from .sessions import Sessions
from .slots import Slots, SlotsState
from .telemetry import Recorder, health
from .transport import Incoming, Transport
from .updater import Updater, open_model, selftest_slot

log = logging.getLogger(__name__)


def load_root(cfg: AgentConfig) -> Root:
    try:
        pinned = load_root_unverified(cfg.root.read_bytes())
    except (OSError, ProtocolError) as exc:
        raise StartupError(f"root {str(cfg.root)!r}: {exc}") from None
    rotated = cfg.state_dir / "root.json"
    if rotated.exists():
        try:
            newer = read_checked(rotated, load_root_unverified, (ProtocolError,))  # torn: the previous one
            if newer.version > pinned.version:
                return newer
        except (OSError, ProtocolError) as exc:
            log.warning("ignoring rotated root %s: %s", rotated, exc)
    return pinned


BUNDLE_TOPICS = f"{PREFIX}/bundle/"


class Agent:
    def __init__(
        self, cfg: AgentConfig, log_ring: diagnostics.LogRing | None = None, config_path: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.log_ring = log_ring  # the recent log lines a ``logs`` command answers with
        self.config_path = config_path  # agent.toml, for the doctor's permission check (diagnostics)
        try:
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"state_dir {str(cfg.state_dir)!r}: {exc.strerror}") from None
        self.root = load_root(cfg)
        self.events: queue.Queue[Any] = queue.Queue()  # Incoming messages or (name, *args) tuples
        self.stop_event = threading.Event()
        self.notifier = Notifier(cfg.notify_socket, cfg.watchdog_s)  # systemd Type=notify; no-op without
        self.backlog = Backlog(cfg.state_dir / "backlog.sqlite", cfg.backlog_max_rows, cfg.backlog_max_bytes)
        self.slots = Slots(cfg.state_dir)
        self.metrics = AgentMetrics() if cfg.http_metrics else None
        self.recorder = Recorder(self.metrics)
        watchdog.configure(watchdog.settings_for(cfg))  # before the probe and any Edge TPU model
        self.probed = inventory.probe(cfg)
        self.cloud = cloud = (
            CloudClient(cfg.cloud_url, cfg.cloud_api_key, cfg.cloud_timeout_s) if cfg.cloud_url else None
        )
        self.serving = Serving(
            self.recorder,
            cloud,
            cfg.latency_budget_ms,
            lambda digest, why: self.events.put(("probation_failed", digest, why)),
            lambda digest: self.events.put(("probation_passed", digest)),
            Sessions(cfg.max_sessions, cfg.session_idle_s),
            cfg.escalation,
        )
        # hard examples (agent.hardexamples): off unless agent.toml or the active bundle turns them on
        self.hard = HardExamples(cfg.state_dir / "hard-examples", cfg.device_id, cfg.hard_examples)
        self.serving.on_local = self._offer_hard_example
        topic = str(Topic.for_device(Kind.STATUS, cfg.device_id))
        # the last will: the broker publishes it (retained) if this process dies or the link drops
        will = Status(cfg.device_id, False, int(time.time()), AGENT_VERSION, Inventory(board=cfg.board))
        self.meter = Meter(cfg.state_dir / "budget.json", cfg.daily_byte_budget, cfg.download_rate_bytes_s)
        self.transport = Transport(cfg, topic, will.to_bytes(), self._incoming)
        self.trust_file = cfg.state_dir / "trust.json"
        self.clean_file = cfg.state_dir / "clean-shutdown"
        trusted = read_json(self.trust_file, {}) or {}
        self.trusted_seq = int(trusted.get("desired_seq", 0))
        self.accepted = accepted(trusted)  # per channel, the seq of the entry it last accepted
        # never believe a clock earlier than the newest document accepted (a device without an
        # RTC boots in 1970; expired documents must not become fresh again)
        self.clock_floor = int(trusted.get("issued_max", 0))
        self._held: bytes | None = None  # a desired document refused for the root: expired, or a key it lacks yet
        self._manifests: dict[str, bytes] = {}  # re-signed slot manifests waiting for a rotated root
        self.seen_file = cfg.state_dir / "commands.json"  # ids of accepted commands, until they expire
        seen = read_json(self.seen_file, {}) or {}
        self._seen: dict[str, int] = {str(k): int(v) for k, v in seen.items()} if isinstance(seen, dict) else {}
        self.restart_requested = False
        try:
            require_fresh_root(self.root, self._now())
        except VerificationError as exc:
            log.error(
                "%s; serving the installed model and refusing new desired documents and bundles "
                "until a rotated root arrives on %s",
                exc.detail,
                Topic.root(),
            )
        self.updater = Updater(
            cfg,
            lambda: self.root,
            self.slots,
            self.serving,
            lambda: inventory.current(cfg, self.probed),
            self.report,
            self.transport,
            self._changed,
            self.meter,
        )
        self._dirty = True
        self._window_start = int(time.time())
        # model channels (agent.channels): default is the objects above; others keep state below
        self.channels = {
            DEFAULT: Channel(
                DEFAULT, self.slots, self.serving, self.recorder, self.updater, self.report, self._window_start
            )
        }
        for name in installed(cfg):
            self._add_channel(name)
        self.http_port = 0
        self._server: Any = None
        self._unix: Any = None

    def _offer_hard_example(self, req: Request, ans: Answer, model: Model) -> str | None:
        """After each local answer (agent.hardexamples: nothing unless a policy applies)."""
        extra = model.signature.extra if model.signature is not None else None
        return self.hard.offer(req, ans.doc, ans.scores, model.info.name, model.info.digest, extra)

    # reports, status, telemetry --------------------------------------------------------------
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
        hold: Hold | None = None,
        channel: str = DEFAULT,
    ) -> None:
        """``desired_seq`` None = the last verified document's (the channel's entry); 0 = no
        verified document (the hub matches a report to a rollout by this seq, so only a signed
        seq may be named)."""
        seq = self.backlog.next_seq("report")
        msg = Report(
            self.cfg.device_id,
            seq,
            int(time.time()),
            stage,
            status,
            reason.value,
            detail[:2000],
            self.accepted.get(channel, 0) if desired_seq is None else desired_seq,
            bundle,
            progress,
            metrics or {},
            hold,
            channel=channel,
        )
        log.log(
            logging.WARNING if status == "failed" else logging.INFO,
            "report %s%s %s %s %s",
            "" if channel == DEFAULT else f"[{channel}] ",
            stage,
            status,
            reason.value,
            detail,
        )
        self.backlog.add("report", seq, msg.to_bytes(), time.time())
        if self.metrics is not None:
            self.metrics.install(stage, status, reason.value)
        self._flush()

    def _add_channel(self, name: str) -> Channel:
        """A non-default channel: its own slots, job, serving and recorder (agent.channels). Its
        telemetry is not on /metrics, which keeps describing the default channel."""
        cfg = channel_config(self.cfg, name)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        slots = Slots(cfg.state_dir)
        recorder = Recorder(None)
        serving = Serving(
            recorder,
            self.cloud,
            cfg.latency_budget_ms,
            lambda digest, why: self.events.put(("probation_failed", digest, why, name)),
            lambda digest: self.events.put(("probation_passed", digest, name)),
            Sessions(cfg.max_sessions, cfg.session_idle_s),
            cfg.escalation,
            channel=name,
        )
        serving.on_local = self.serving.on_local  # hard examples: one store for all channels, by bundle

        report = functools.partial(self.report, channel=name)  # this channel's reports

        updater = Updater(
            cfg,
            lambda: self.root,
            slots,
            serving,
            lambda: inventory.current(self.cfg, self.probed),
            report,
            self.transport,
            self._changed,
            self.meter,
        )
        ch = self.channels[name] = Channel(name, slots, serving, recorder, updater, report, int(time.time()))
        log.info("model channel %r at %s", name, cfg.state_dir)
        return ch

    def _channel_status(self, ch: Channel) -> ChannelStatus:
        model, upd = ch.serving.model, ch.updater
        return ChannelStatus(
            model.info.to_dict() if model else None,
            upd.staged.to_dict() if upd.staged else None,
            upd.state if upd.job else ("serving" if model else "idle"),
        )

    def _status(self, online: bool) -> Status:
        model = self.serving.model
        upd = self.updater
        state = upd.state if upd.job else ("serving" if model else "idle")
        inv = inventory.describe(
            self.cfg,
            self.probed,
            self.http_port,
            self.transport.protocol,
            model.served_by if model is not None else None,
        )
        return Status(
            self.cfg.device_id,
            online,
            int(time.time()),
            AGENT_VERSION,
            inv,
            model.info if model else None,
            upd.staged,
            state,
            self.trusted_seq,
            channels={n: self._channel_status(ch) for n, ch in self.channels.items() if n != DEFAULT},
        )

    def _incoming(self, msg: Incoming) -> None:
        """In the MQTT network thread: chunks are counted and paced to the download rate cap
        here, before the broker gets their ack (agent.budget), then everything is queued."""
        if msg.topic.startswith(BUNDLE_TOPICS):  # chunks (and a re-signed manifest): bundle bytes
            self.meter.chunk(len(msg.payload))
        self.events.put(msg)

    def _changed(self) -> None:
        self._dirty = True

    def _publish_status(self) -> None:
        if self.transport.alive():
            topic = str(Topic.for_device(Kind.STATUS, self.cfg.device_id))
            if self.transport.publish(topic, self._status(True).to_bytes(), qos=1, retain=True):
                self._dirty = False

    def _telemetry(self) -> None:
        for ch in list(self.channels.values()):
            self._channel_telemetry(ch)
        self._flush()

    def _channel_telemetry(self, ch: Channel) -> None:
        now = int(time.time())
        for fields in ch.recorder.rotate():  # one window per model that served in the interval
            end = max(ch.window_start, min(now, int(fields.get("end", now))))
            seq = self.backlog.next_seq("telemetry")
            msg = Telemetry(
                self.cfg.device_id,
                seq,
                ch.window_start,
                end,
                fields["bundle"],
                fields["counts"],
                fields["latency"],
                fields["drift"],
                fields["shadow"],
                health(self.cfg.state_dir),
                self.backlog.stats(now),
                self._accelerator() if ch.name == DEFAULT else None,
                self.meter.usage(),
                channel=ch.name,
            )
            ch.window_start = end
            self.backlog.add("telemetry", seq, msg.to_bytes(), time.time())

    def _accelerator(self) -> Any:
        """The Edge TPU watchdog's state (agent.watchdog), None unless an Edge TPU model serves."""
        model = self.serving.model
        guard = model.backend if model is not None else None
        return guard.accelerator() if isinstance(guard, watchdog.GuardedBackend) else None

    def _flush(self, force: bool = False) -> None:
        if not self.transport.alive():
            return
        now = time.time()
        due = self.backlog.due(now, 0.0 if force else self.cfg.resend_after_s, limit=200)
        sent = []
        for kind, seq, payload in due:  # reports first (agent.backlog)
            if kind == "telemetry" and not self.meter.allows("telemetry", len(payload)).send:
                break  # today's byte budget is spent: telemetry waits in the (bounded) backlog
            topic = str(Topic.for_device(Kind.REPORT if kind == "report" else Kind.TELEMETRY, self.cfg.device_id))
            if not self.transport.publish(topic, payload, qos=1):
                break
            self.meter.spend(kind, len(payload))
            sent.append((kind, seq))
        if sent:
            self.backlog.mark_sent(sent, now)
        if len(sent) == len(due):  # nothing of the backlog held back: hard examples may use the link
            topic = str(Topic.for_device(Kind.SAMPLE, self.cfg.device_id))
            self.hard.pump(
                lambda payload: self.transport.publish(topic, payload, qos=1),
                lambda n: self.meter.allows("samples", n).send,
                lambda n: self.meter.spend("samples", n),
                time.monotonic(),
            )

    def status_doc(self) -> dict[str, Any]:
        st = self._status(True)
        return {
            "device": st.device,
            "state": st.state,
            "agent_version": st.agent_version,
            "active": st.active.to_dict() if st.active else None,
            "staged": st.staged.to_dict() if st.staged else None,
            "desired_seq": st.desired_seq,
            "inventory": st.inventory.to_dict(),
            "connected": self.transport.alive(),
            "backlog": self.backlog.stats(time.time()),
            "chunks_received": {"messages": self.updater.chunks_received, "bytes": self.updater.chunk_bytes_received},
            "update_hold": self.updater.hold_status(),
            "accelerator": acc.to_dict() if (acc := self._accelerator()) is not None else None,
            "bytes_today": self.meter.usage(),
            "channels": {n: self._channel_status(ch).to_dict() for n, ch in self.channels.items() if n != DEFAULT},
            "hard_examples": self.hard.status(),
        }

    # start-up ------------------------------------------------------------------------------------
    def recover_slots(self) -> None:
        clean = self.clean_file.exists()
        self.clean_file.unlink(missing_ok=True)
        fsync_dir(self.cfg.state_dir)  # else a power cut could bring the marker back: a crash counted as clean
        for ch in list(self.channels.values()):
            self._recover_channel(ch, clean)

    def _recover_channel(self, ch: Channel, clean: bool) -> None:
        st = ch.slots.load()
        for tmp in ch.slots.dir.glob("*.tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
        probation, crashed = crash_verdict(st.probation, clean, self.cfg.probation_max_crashes)
        if crashed and st.active is not None and st.previous is not None:
            # decided before the model is even loaded: loading it may be what crashes
            if ch.updater.rollback(
                Reason.INFERENCE_FAILED,
                f"{st.active.name} {st.active.version} on probation: the agent restarted "
                f"{probation} times without a clean shutdown",
            ):
                return
        if probation != st.probation:
            st = SlotsState(st.active, st.previous, st.trial, probation)
            ch.slots.save(st)  # counted before loading the model, so a crash while loading counts too

        def check(rec: Any, run_selftest: bool) -> tuple[bool | None, Any]:
            if rec is None:
                return None, None
            try:
                manifest = ch.slots.check(rec.digest, self.root)
                if run_selftest:
                    model, res = selftest_slot(ch.slots, rec, manifest, self.cfg.threads)
                    return (model is not None and res.ok), model
                return True, open_model(ch.slots, rec, manifest, self.cfg.threads)
            except (ProtocolError, OSError, Exception) as exc:  # any failure means "not usable"
                log.warning("slot %s unusable: %s", rec.digest[:12], exc)
                return False, None

        active_ok, model = check(st.active, st.trial)
        decision = recover(
            st.active.digest if st.active else None,
            st.trial,
            active_ok,
            st.previous.digest if st.previous else None,
            None if active_ok else check(st.previous, False)[0],
        )
        log.info("start-up recovery: %s %s", decision.action, decision.detail)
        if decision.action in ("keep", "commit"):
            on_probation = st.probation is not None
            ch.serving.swap(
                model, (self.cfg.probation_inferences, self.cfg.probation_max_errors) if on_probation else None
            )
            if decision.action == "commit":
                assert st.active is not None
                ch.slots.save(SlotsState(st.active, st.previous, False, st.probation))
                ch.report(
                    "commit",
                    "ok",
                    Reason.OK,
                    f"{st.active.name} {st.active.version} passed its self-test again after a restart; committed",
                    st.active.desired_seq,
                    st.active.digest,
                )
        elif decision.action == "rollback":
            if model is not None:
                model.close()
            ch.updater.rollback(decision.reason, decision.detail)
        elif decision.action == "broken":
            ch.report(
                "rollback", "failed", decision.reason, decision.detail, bundle=st.active.digest if st.active else None
            )
        if ch.serving.model is not None:
            log.info(
                "%s: serving %s %s on %s",
                ch.name,
                ch.serving.model.info.name,
                ch.serving.model.info.version,
                ch.serving.model.served_by,
            )

    def start_http(self) -> None:
        """Open every listener, then announce the port (``http.port`` means: ready)."""
        try:
            self._server = make_server(
                self.cfg.http_host,
                self.cfg.http_port,
                self.serving,
                self.status_doc,
                self.metrics,
                self.updater,
                self._channel_serving,
            )
        except OSError as exc:
            raise StartupError(f"http {self.cfg.http_host}:{self.cfg.http_port}: {exc.strerror}") from None
        if self.cfg.http_socket is not None:
            try:
                self._unix = make_unix_server(
                    self.cfg.http_socket,
                    self.serving,
                    self.status_doc,
                    self.metrics,
                    self.updater,
                    self._channel_serving,
                )
            except OSError as exc:
                raise StartupError(f"http_socket {str(self.cfg.http_socket)!r}: {exc.strerror}") from None
            threading.Thread(target=self._unix.serve_forever, name="http-unix", daemon=True).start()
            log.info("local API on unix:%s", self.cfg.http_socket)
        self.http_port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
        write_atomic(self.cfg.http_port_file, f"{self.http_port}\n".encode())
        log.info("local API on http://%s:%d", self.cfg.http_host, self.http_port)

    def _channel_serving(self, name: str) -> Serving | None:
        ch = self.channels.get(name)
        return ch.serving if ch is not None else None

    def resume_job(self) -> None:
        for ch in list(self.channels.values()):
            self._resume_channel(ch)

    def _resume_channel(self, ch: Channel) -> None:
        pending = ch.updater.pending_envelope()
        if pending is None:
            return
        seq, env = pending  # seq: the channel's entry (agent.channels), env: the document that carried it
        try:
            desired = self._verify(env, seq - 1, self._now())
        except ProtocolError as exc:
            reason = exc.reason
            if isinstance(exc, RootExpired):  # kept, not failed: a rotated root resumes it (_on_root)
                self._held = env
                ch.report("verify", "failed", reason, f"resuming seq {seq}: {exc}", seq)
                return
            ch.updater._save_job(env, seq, True, f"failed:{reason.value}")
            ch.report("verify", "failed", reason, f"resuming seq {seq}: {exc}", seq)
            return
        one = desired.channel(ch.name)
        if one is None or one.seq != seq:
            log.warning("%s: the saved job's document has no entry seq %d for it; not resuming", ch.name, seq)
            return
        log.info("%s: resuming the install job for desired seq %d", ch.name, seq)
        ch.updater.accept(one, env, self._now())

    # network thread ----------------------------------------------------------------------------
    def _network(self) -> None:
        delay = 0.5
        up = False
        while not self.stop_event.is_set():
            if self.transport.alive():
                time.sleep(0.1)
                continue
            if up:
                up = False
                self.events.put(("disconnected",))
            try:
                self.transport.connect()
            except ConnectError as exc:
                wait = delay / 2 + random.uniform(0, delay / 2)  # equal jitter
                log.warning("%s; retrying in %.1fs", exc, wait)
                self.stop_event.wait(wait)
                delay = min(delay * 2, self.cfg.extra.get("reconnect_max_s", 30.0))
                continue
            delay = 0.5
            up = True
            self.events.put(("connected",))

    # event handling ---------------------------------------------------------------------------
    def _on_connected(self) -> None:
        dev = self.cfg.device_id
        for kind in (Kind.DESIRED, Kind.ACK, Kind.COMMAND, Kind.SAMPLED):
            self.transport.subscribe(str(Topic.for_device(kind, dev)), qos=1)
        self.hard.reconnected()
        self.transport.subscribe(str(Topic.root()), qos=1)
        self._subscribe_manifests()
        for ch in self.channels.values():
            ch.updater.resubscribe()
        self._publish_status()
        self._flush(force=True)

    def _on_message(self, msg: Incoming) -> None:
        try:
            topic = Topic.parse(msg.topic)
        except BadPayload as exc:
            log.warning("ignoring message: %s", exc)
            return
        if topic.kind in (Kind.CHUNK, Kind.DELTA):
            for ch in list(self.channels.values()):  # each updater takes the chunks of its own job
                ch.updater.on_chunk(topic, msg.payload)
        elif topic.kind is Kind.PLAN and msg.payload:
            for ch in list(self.channels.values()):
                ch.updater.on_plan(topic, msg.payload)
        elif topic.kind is Kind.DESIRED and topic.device == self.cfg.device_id:
            if msg.payload:
                self._on_desired(msg.payload)
        elif topic.kind is Kind.ACK and topic.device == self.cfg.device_id:
            try:
                ack = parse_ack(msg.payload)
            except BadPayload as exc:
                log.warning("ignoring ack: %s", exc)
                return
            self.backlog.ack(ack.kind, ack.seqs)
        elif topic.kind is Kind.SAMPLED and topic.device == self.cfg.device_id and msg.payload:
            try:
                self.hard.on_receipt(parse_receipt(msg.payload))
            except BadPayload as exc:
                log.warning("ignoring hard-example receipt: %s", exc)
        elif topic.kind is Kind.COMMAND and topic.device == self.cfg.device_id and msg.payload:
            self._on_command(msg.payload)
        elif topic.kind is Kind.ROOT and msg.payload:
            self._on_root(msg.payload)
        elif topic.kind is Kind.MANIFEST and topic.digest and msg.payload:
            self._on_manifest(topic.digest, msg.payload)

    def _now(self) -> int:
        return max(int(time.time()), self.clock_floor)

    def _verify(self, payload: bytes, trusted_seq: int, now: int) -> Desired:
        """verify_desired, then the root's own expiry: checked after the signature, so the seq
        of a document refused for it is signed."""
        desired = verify_desired(payload, self.root, self.cfg.device_id, trusted_seq, now)
        require_fresh_root(self.root, now)
        return desired

    def _on_desired(self, payload: bytes) -> None:
        now = self._now()
        try:
            desired = self._verify(payload, self.trusted_seq, now)
        except (VerificationError, BadPayload) as exc:
            if exc.reason is Reason.REPLAYED:
                # the retained document we already accepted: normally its jobs are running or done;
                # if a crash fell between persisting a channel's seq and its job, start the job now
                if any(
                    n not in self.channels
                    or self.channels[n].updater.job is None
                    and not self.channels[n].updater.job_done(seq)
                    for n, seq in self.accepted.items()
                    if seq > 0
                ):
                    try:
                        desired = self._verify(payload, self.trusted_seq - 1, now)
                    except (VerificationError, BadPayload) as again:
                        if isinstance(again, RootExpired):
                            self._held = payload
                        return
                    for name, one in due(desired, {}):
                        ch = self.channels.get(name) or self._add_channel(name)
                        if one.seq == self.accepted.get(name) and ch.updater.job is None:
                            if not ch.updater.job_done(one.seq):
                                ch.updater.accept(one, payload, now)
                return
            seq, digest = _unverified_hint(payload)
            if isinstance(exc, RootExpired) or exc.reason is Reason.UNKNOWN_KEY:
                # verified again once a rotated root arrives (_on_root): after a key rotation the
                # hub's re-signed document may come before the root that trusts its key
                self._held = payload
            if exc.reason is not Reason.EXPIRED:
                # Only an expired document's seq is signed (expiry is checked after the
                # signature). Any other claim is the sender's: naming it would let a forged
                # document fail the install the hub really issued under that seq.
                self.report(
                    "verify",
                    "failed",
                    exc.reason,
                    f"desired document rejected: {exc} (it claimed seq {seq}, bundle {digest})",
                    0,
                )
                return
            self.report("verify", "failed", exc.reason, f"desired document rejected: {exc}", seq, digest)
            return
        self.trusted_seq = desired.seq
        self.clock_floor = max(self.clock_floor, desired.issued)
        jobs = due(desired, self.accepted)  # only the channels whose entry changed (agent.channels)
        self.accepted.update({name: one.seq for name, one in jobs})
        self._save_trust()
        self._dirty = True
        for name, one in jobs:
            ch = self.channels.get(name) or self._add_channel(name)
            ch.updater.accept(one, payload, now)
        if desired.shadow is not None:
            log.info("shadow mode requested for %s (sample %.2f)", desired.shadow.digest[:12], desired.shadow_sample)

    def _save_trust(self) -> None:
        write_json(
            self.trust_file,
            {"desired_seq": self.trusted_seq, "issued_max": self.clock_floor, "channels": self.accepted},
        )

    def _on_command(self, payload: bytes) -> None:
        """Remote diagnostics (rules in :mod:`agent.commands`): verify, remember the id before
        running (a crash mid-command must not let it run twice), run, answer on our result
        topic. ``restart`` answers first, then stops the loop: a clean exit the supervisor
        restarts."""
        decision = commands.decide(payload, self.root, self.cfg.device_id, self._seen, self._now())
        if isinstance(decision, commands.Ignore):
            log.warning("%s", decision.why)
            return
        if isinstance(decision, commands.Answer):
            log.warning("command %s refused: %s", decision.result.id, decision.result.detail)
            result = decision.result
        else:
            cmd: Command = decision.command
            self._seen = commands.remember(self._seen, cmd.id, cmd.expires, self._now())
            write_json(self.seen_file, self._seen)
            log.info("command %s %s from the hub", cmd.name, cmd.id)
            result = diagnostics.execute(self, cmd)
        topic = str(Topic.for_device(Kind.RESULT, self.cfg.device_id))
        self.transport.publish(topic, result.to_bytes(), qos=1, wait_s=5.0)
        if isinstance(decision, commands.Run) and decision.command.name == "restart" and result.status == "ok":
            log.warning("restarting on the hub's command %s: clean exit", decision.command.id)
            self.restart_requested = True
            self.stop_event.set()

    def _on_root(self, payload: bytes) -> None:
        try:
            new = rotate_root(self.root, payload, int(time.time()))
        except ProtocolError as exc:
            if exc.reason not in (Reason.REPLAYED, Reason.DOWNGRADE):
                log.warning("root rotation refused: %s", exc)
            return
        old, self.root = self.root, new
        if targets_rotated(old, new):
            # documents signed by the old targets keys may come from a compromised online key
            # that fast-forwarded seq or issued: forget both, so the hub's next documents count
            log.warning(
                "trust root v%d replaces the targets keys: forgetting desired seq %d and issued %d "
                "learnt under the old keys",
                new.version,
                self.trusted_seq,
                self.clock_floor,
            )
            self.trusted_seq, self.clock_floor = 0, 0
            self.accepted = {name: 0 for name in self.accepted}
            self._save_trust()
            self._dirty = True
        write_atomic(self.cfg.state_dir / "root.json", payload, keep_previous=True)
        log.info("trust root rotated to version %d", new.version)
        for digest, env in list(self._manifests.items()):
            self._on_manifest(digest, env)
        self._subscribe_manifests()  # the retained re-signed manifests come (again) now
        held, self._held = self._held, None
        if held is not None:
            self._on_desired(held)

    def _subscribe_manifests(self) -> None:
        """Re-signed manifests of the slots held: after the hub's online key changed, the slots
        installed under the old key must keep verifying at start."""
        for ch in list(self.channels.values()):
            st = ch.slots.load()
            for rec in (st.active, st.previous):
                if rec is not None:
                    self.transport.subscribe(str(Topic.manifest(rec.digest)), qos=1)

    def _on_manifest(self, digest: str, env: bytes) -> None:
        try:
            if any([ch.slots.refresh_manifest(digest, env, self.root) for ch in list(self.channels.values())]):
                log.info("slot %s: manifest signed again by the hub's current key", digest[:12])
            self._manifests.pop(digest, None)
        except ProtocolError as exc:
            if exc.reason is Reason.UNKNOWN_KEY:
                self._manifests[digest] = env  # signed by a key a rotated root will bring
            else:
                log.warning("refused manifest for slot %s: %s", digest[:12], exc)

    def _on_probation_failed(self, digest: str, why: str, channel: str = DEFAULT) -> None:
        ch = self.channels.get(channel)
        model = ch.serving.model if ch is not None else None
        if ch is None or model is None or model.info.digest != digest:
            return
        ch.updater.rollback(Reason.INFERENCE_FAILED, f"{digest[:12]} on probation: {why}")

    def _on_probation_passed(self, digest: str, channel: str = DEFAULT) -> None:
        ch = self.channels.get(channel)
        if ch is None:
            return
        st = ch.slots.load()
        if st.active is not None and st.active.digest == digest and st.probation is not None:
            ch.slots.save(SlotsState(st.active, st.previous, st.trial, None))
            log.info("%s: %s passed probation", channel, digest[:12])

    # main loop --------------------------------------------------------------------------------
    def run(self) -> None:
        self.recover_slots()
        self.start_http()
        net = threading.Thread(target=self._network, name="network", daemon=True)
        net.start()
        self.resume_job()
        self.notifier.ready(f"local API on port {self.http_port}")
        next_tel = time.monotonic() + self.cfg.telemetry_interval_s
        next_resend = time.monotonic() + 1.0
        try:
            while not self.stop_event.is_set():
                try:
                    ev = self.events.get(timeout=0.2)
                except queue.Empty:
                    ev = None
                if ev is not None:
                    self._dispatch(ev)
                now = time.monotonic()
                self.notifier.watchdog(now)  # a main loop that stops turning is restarted by systemd
                for ch in list(self.channels.values()):
                    ch.updater.tick(now)
                if now >= next_tel:
                    next_tel = now + self.cfg.telemetry_interval_s
                    self._telemetry()
                    self._dirty = True
                if now >= next_resend:
                    next_resend = now + 1.0
                    self._flush()
                if self._dirty:
                    self._publish_status()
        finally:
            self.shutdown()

    def _dispatch(self, ev: Any) -> None:
        try:
            if isinstance(ev, Incoming):
                self._on_message(ev)
            elif ev[0] == "connected":
                self._on_connected()
            elif ev[0] == "disconnected":
                log.warning("disconnected from the broker; reconnecting")
            elif ev[0] == "probation_failed":
                self._on_probation_failed(*ev[1:])
            elif ev[0] == "probation_passed":
                self._on_probation_passed(*ev[1:])
        except Exception:  # one bad event must never stop the daemon
            log.exception("error handling %r", ev if not isinstance(ev, Incoming) else ev.topic)

    def shutdown(self) -> None:
        self.stop_event.set()
        self.notifier.stopping()
        for srv in (self._server, self._unix):
            if srv is not None:
                srv.shutdown()
        topic = str(Topic.for_device(Kind.STATUS, self.cfg.device_id))
        self.transport.disconnect(topic, self._status(False).to_bytes())
        self.backlog.close()
        self.meter.save()
        write_atomic(self.clean_file, b"")  # the next start knows this was not a crash


def _unverified_hint(payload: bytes) -> tuple[int, str | None]:
    """For the rejection report only: the seq and bundle a (rejected) document claims."""
    try:
        d = parse_desired_payload(Envelope.parse(payload).payload)
        return d.seq, d.bundle.digest if d.bundle else None
    except ProtocolError:
        return 0, None
