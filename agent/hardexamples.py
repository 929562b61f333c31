"""Hard examples, the I/O half: keep low-confidence inputs on disk, upload them to the hub.

The rules (off by default, threshold, per-minute/hour/day and disk caps) are
:mod:`agent.sampling`'s; this shell runs them and does the I/O.

Keeping (:meth:`HardExamples.offer`, in the HTTP thread after the answer was sent, so an app
never waits for it): a local answer's confidence is measured, the sampler decides, and a kept
input is written to ``state_dir/hard-examples/`` as ``{id}.bin`` (the input's bytes: the image as
sent, a binary tensor as ``.npy``, JSON inputs as JSON) then ``{id}.json`` (the head: bundle,
time, content type, size, sha256, the answer, the confidence), each atomically and fsynced
(:mod:`agent.durable`); the head is the commit: a ``.bin`` without its head is removed at start.
The cap counts are saved with every sample, so a restart does not reset them.

Uploading (:meth:`HardExamples.pump`, from the daemon's main loop once a second): chunks
(:mod:`protocol.samples`) on ``ef/v1/dev/{device}/sample``, oldest example first, only when
the daemon's backlog has nothing due (install reports and telemetry go first), at most
``PUMP_BYTES`` per call and within the metered daily byte budget (:mod:`agent.budget`, kind
``samples``). A chunk not confirmed after ``resend_after_s`` is sent again; the hub's receipt
(``ef/v1/dev/{device}/sampled``) says which chunks it holds (persisted in the head, so a restart
resends only the missing ones) and, once the hub stored the whole input (sha256 checked),
``done``: the files are deleted. The hub stores an example once per (device, id): exactly once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocol import samples
from protocol.codec import canonical
from protocol.errors import BadPayload

from . import sampling
from .durable import read_json, write_atomic, write_json
from .errors import ConfigError
from .request import Request

log = logging.getLogger(__name__)

PUMP_BYTES = 256 * 1024  # per pump, at most one pump a second: a slow link is never flooded by examples
PUMP_EVERY_S = 1.0
RESEND_AFTER_S = 30.0
MAX_ANSWER_BYTES = 12 * 1024
COUNTS = sampling.DECISIONS + ("not_applicable", "unsupported", "failed", "uploaded", "refused")


def content_of(req: Request) -> tuple[str, bytes] | None:
    """The request's input as (content type, bytes), or None for an image format the hub does not
    take (counted as ``unsupported``: never stored under a wrong type)."""
    if req.image is not None:
        b = req.image
        if b[:3] == b"\xff\xd8\xff":
            return "image/jpeg", b
        if b[:8] == b"\x89PNG\r\n\x1a\n":
            return "image/png", b
        if b[:2] == b"BM":
            return "image/bmp", b
        if b[:4] == b"GIF8":
            return "image/gif", b
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            return "image/webp", b
        return None
    if req.tensor is not None:
        buf = io.BytesIO()
        np.save(buf, req.tensor, allow_pickle=False)
        return "application/x-npy", buf.getvalue()
    if req.inputs is not None:
        return "application/json", json.dumps({"inputs": req.inputs}).encode()
    return None


def answer_meta(doc: dict[str, Any]) -> dict[str, Any]:
    """What of the answer travels with the example: all of it but a classifier's full score
    vector (its ``top`` stays); an answer still over ``MAX_ANSWER_BYTES`` keeps its task, who
    served it and ``truncated``."""
    out = {k: v for k, v in doc.items() if k != "predictions"}
    if len(canonical(out)) <= MAX_ANSWER_BYTES:
        return out
    keep: dict[str, Any] = {k: out[k] for k in ("task", "served_by", "bundle", "confidence") if k in out}
    return {**keep, "truncated": True}


@dataclass(frozen=True)
class Pending:
    id: str
    head: dict[str, Any]


class HardExamples:
    def __init__(self, directory: Path, device: str, config_policy: sampling.Policy | None) -> None:
        self.dir = directory
        self.device = device
        self.config_policy = config_policy
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._caps = sampling.Caps.from_dict(read_json(self.dir / "caps.json", {}))
        self._bundle_policies: dict[str, sampling.Policy | None] = {}
        self.counts = dict.fromkeys(COUNTS, 0)
        self._sent: dict[tuple[str, int], float] = {}  # (id, chunk) -> when sent (monotonic)
        self._pumped_at: float | None = None
        for b in self.dir.glob("*.bin"):
            if not b.with_suffix(".json").exists():  # kept without its head: never committed
                b.unlink(missing_ok=True)
        self.disk_used = sum(p.stat().st_size for p in self.dir.glob("*.bin"))

    # keeping (HTTP threads) ------------------------------------------------------------------
    def policy_for(self, name: str, digest: str, signature_extra: dict[str, Any] | None) -> sampling.Policy | None:
        """The config's policy when it applies to this model, else the bundle's (``hard_examples``
        in its signature; a bad one is logged and not applied), else None (off)."""
        if self.config_policy is not None:
            return self.config_policy if self.config_policy.applies_to(name) else None
        if digest not in self._bundle_policies:
            table = (signature_extra or {}).get("hard_examples")
            policy = None
            if table is not None:
                try:
                    if not isinstance(table, dict):
                        raise ConfigError(f"signature.hard_examples: expected an object, got {table!r:.60}")
                    policy = sampling.Policy.from_dict(table, "signature.hard_examples")
                except ConfigError as exc:
                    log.error("bundle %s: hard-example policy not applied: %s", digest[:12], exc)
            self._bundle_policies[digest] = policy
        p = self._bundle_policies[digest]
        return p if p is not None and p.enabled else None

    def offer(
        self, req: Request, answer: Callable[[], dict[str, Any]], scores: Any, name: str, digest: str, extra: Any
    ) -> str | None:
        """A local answer: keep its input if the sampler says so. Returns the decision (None: off).
        ``answer`` builds the answer's document (a list per score), called only when a policy
        applies: with hard examples off, the default, a local answer costs one lookup here."""
        policy = self.policy_for(name, digest, extra)
        if policy is None or req.session is not None:
            return None
        doc = answer()
        try:
            conf = sampling.confidence(policy, doc, scores)
        except ConfigError:
            self._count("not_applicable")
            return "not_applicable"
        if conf >= policy.threshold:
            self._count("confident")
            return "confident"
        content = content_of(req)
        if content is None:
            self._count("unsupported")
            return "unsupported"
        ctype, data = content
        now = time.time()
        with self._lock:
            caps, decision = sampling.decide(policy, self._caps, conf, len(data), self.disk_used, now)
            if decision == "sample":
                self._caps = caps
                self.disk_used += len(data)
            else:  # a sample is counted once its files are written: status() never counts one not yet on disk
                self.counts[decision] += 1
        if decision != "sample":
            return decision
        sid = f"{time.time_ns():016x}{uuid.uuid4().hex[:16]}"  # sorts in the order they were kept
        meta = {
            "confidence": round(conf, 6),
            "measure": policy.measure,
            "threshold": policy.threshold,
            "answer": answer_meta(doc),
        }
        head = {
            "id": sid,
            "bundle": digest,
            "ts": int(now),
            "content_type": ctype,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "meta": meta,
            "have": [],
        }
        try:
            write_atomic(self.dir / f"{sid}.bin", data)
            write_json(self.dir / f"{sid}.json", head)
            with self._lock:
                write_json(self.dir / "caps.json", self._caps.to_dict())
                self.counts["sample"] += 1
        except OSError as exc:
            log.error("hard example not kept: %s", exc)
            with self._lock:
                self.disk_used -= len(data)
                self.counts["failed"] += 1
            return "failed"
        return decision

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    # uploading (daemon main thread) ------------------------------------------------------------
    def pending(self) -> list[Pending]:
        out = []
        for p in self.dir.glob("*.json"):
            if p.name == "caps.json":
                continue
            head = read_json(p)
            if isinstance(head, dict) and (self.dir / f"{p.stem}.bin").exists():
                out.append(Pending(p.stem, head))
        return sorted(out, key=lambda x: x.id)

    def pump(
        self,
        publish: Callable[[bytes], bool],
        allows: Callable[[int], bool],
        spend: Callable[[int], None],
        now: float,
        resend_after: float = RESEND_AFTER_S,
        max_bytes: int = PUMP_BYTES,
    ) -> int:
        """Send the chunks that are due, oldest example first; returns the bytes sent. Stops at
        ``max_bytes``, at the first chunk the byte budget refuses and at the first failed publish.
        The daemon flushes more often than once a second (after each report and telemetry
        window); a pump less than ``PUMP_EVERY_S`` after the last one sends nothing."""
        if self._pumped_at is not None and now - self._pumped_at < PUMP_EVERY_S:
            return 0
        self._pumped_at = now
        sent = 0
        for p in self.pending():
            h = p.head
            have = set(h.get("have", []))
            try:
                data = (self.dir / f"{p.id}.bin").read_bytes()
                chunks = samples.split(
                    self.device, p.id, h["bundle"], int(h["ts"]), h["content_type"], data, h.get("meta", {})
                )
                if chunks[0].sha256 != h["sha256"]:  # a damaged file would go up with a hash that matches it
                    raise ValueError(f"its file no longer matches the sha256 {h['sha256']} kept with it")
            except (OSError, KeyError, ValueError, BadPayload) as exc:
                log.error("hard example %s cannot be sent, dropped: %s", p.id, exc)
                self._forget(p.id)
                continue
            for c in chunks:
                if c.index in have:
                    continue
                at = self._sent.get((p.id, c.index))
                if at is not None and now - at < resend_after:
                    continue
                payload = c.to_bytes()
                if sent and sent + len(payload) > max_bytes:
                    return sent
                if not allows(len(payload)):
                    return sent
                if not publish(payload):
                    return sent
                spend(len(payload))
                self._sent[(p.id, c.index)] = now
                sent += len(payload)
        return sent

    def on_receipt(self, r: samples.Receipt) -> None:
        head_path = self.dir / f"{r.id}.json"
        if r.refused:
            if head_path.exists():
                self._count("refused")
                log.warning("hard example %s refused by the hub, dropped: %s", r.id, r.refused)
            self._forget(r.id)
            return
        if r.done:
            if head_path.exists():
                self._count("uploaded")
                log.info("hard example %s stored by the hub", r.id)
            self._forget(r.id)
            return
        head = read_json(head_path)
        if not isinstance(head, dict):
            return
        have = sorted(set(head.get("have", [])) | set(r.have))
        if have != head.get("have"):
            head["have"] = have
            write_json(head_path, head)

    def reconnected(self) -> None:
        """After a reconnect every unconfirmed chunk may be sent again at once."""
        self._sent.clear()

    def _forget(self, sid: str) -> None:
        b = self.dir / f"{sid}.bin"
        size = b.stat().st_size if b.exists() else 0
        with self._lock:  # before the files go: once status() sees none pending, the bytes are freed too
            self.disk_used = max(0, self.disk_used - size)
        for suffix in (".json", ".json.prev", ".bin"):
            (self.dir / f"{sid}{suffix}").unlink(missing_ok=True)
        self._sent = {k: v for k, v in self._sent.items() if k[0] != sid}

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
        pending = [p for p in self.dir.glob("*.json") if p.name != "caps.json"]
        return {
            "policy": self.config_policy.to_dict() if self.config_policy is not None else None,
            "pending": len(pending),
            "disk_bytes": self.disk_used,
            "counts": counts,
        }
