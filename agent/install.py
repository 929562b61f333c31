"""Install decisions: pure functions over data, no I/O, no clock reads.

The updater (``agent/updater.py``) is the I/O shell that executes what these functions decide.

Install pipeline (one job per accepted ``Desired``; every arrow is reported on the report topic
with the stage name and a :class:`protocol.errors.Reason`)::

    desired --verify_desired--> plan() --Rejection--> report(verify, failed, reason)  [active untouched]
                                   |
                                   +--Plan(noop)-----> report(commit, ok)            [already running it]
                                   +--Plan(switch_back) -> switch to the kept slot -> commit
                                   +--Plan(install)--> download (chunks, bitmap, repair requests)
                                                     -> verify (archive sha, manifest signature)
                                                     -> choose_artifact() --Rejection--> failed
                                                     -> stage (extract into slots/<digest>.tmp, rename)
                                                     -> selftest (vectors on the artifact to serve)
                                                     -> switch (slots.json rename + fsync; trial)
                                                     -> commit (slots.json: trial=false)

After a crash, :func:`recover` decides from the persisted slot record what the agent runs:
a trial (switched, uncommitted) model that passes its self-test again is committed, one that
fails is rolled back to the kept slot; an active model whose files are damaged is replaced by
the kept slot; a download resumes from its bitmap.

Trust root expiry (python-tuf's rule for the final root): an expired root verifies nothing new
(:func:`require_fresh_root`): desired documents are refused and reported ``expired`` naming the
root's expiry, and no downloaded bundle is staged. It still verifies a root rotation (the newer
root chains from it) and the slots already installed, so the device keeps serving its model.

App hold (after ``selftest``, before ``switch``): while an app on the device holds updates
(:func:`hold_verdict`), a ready install waits in stage ``held`` and reports ``switch
progress`` with the hold (until, reason); it switches when the hold ends, is cleared, or has
lasted ``max_hold_minutes`` for this install. Rollbacks (probation, ``switch_back`` to a kept
slot ordered by the hub) are not held: they are how a bad model leaves.

Probation (after a switch, until the first ``probation_inferences`` succeeded): errors in
``probation_max_errors`` of them roll back (:func:`probation_verdict`); so do more than
``probation_max_crashes`` restarts without a clean shutdown (:func:`crash_verdict`), which is
how a model that segfaults the runtime (a mismatched libedgetpu) gets rolled back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from protocol.bundle import Artifact, Manifest, Requirements
from protocol.compat import DeviceFacts, Fit, fit
from protocol.errors import Reason
from protocol.messages import BundleRef, Desired
from protocol.signing import Root

from .errors import HoldRefused, RootExpired

RUNTIMES = ("edgetpu", "cpu", "onnx")


@dataclass(frozen=True)
class Inventory:
    """What this device can do, as probed at start (see ``agent/inventory.py``)."""

    board: str
    edgetpu: bool = False
    edgetpu_runtime: int | None = None
    onnx: bool = False
    free_disk: int = 0
    agent_version: str = ""

    def fit(self, req: Requirements) -> Fit:
        """:func:`protocol.compat.fit` on this device's own facts: an unknown one does not fit."""
        facts = DeviceFacts(self.board, self.edgetpu, self.edgetpu_runtime, self.agent_version)
        return fit(req, facts, unknown_fits=False)


@dataclass(frozen=True)
class Current:
    """What the device runs and keeps: digests of the active and the kept (previous) slot."""

    active: str | None = None
    previous: str | None = None
    downloaded: int = 0  # bytes of the wanted archive already verified on disk (resume)


@dataclass(frozen=True)
class Plan:
    action: str  # install | switch_back | noop | idle
    desired_seq: int
    bundle: BundleRef | None = None
    need_bytes: int = 0


@dataclass(frozen=True)
class Rejection:
    reason: Reason
    detail: str
    stage: str = "verify"

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


@dataclass(frozen=True)
class Choice:
    artifact: Artifact
    runtime: str  # one of RUNTIMES


def disk_needed(ref: BundleRef, already: int, reserve: int) -> int:
    """Bytes of free disk an install needs: the rest of the archive plus its extracted copy."""
    return max(0, ref.archive.size - already) + ref.archive.size + reserve


def plan(current: Current, desired: Desired, inventory: Inventory, now: int, reserve: int = 0) -> Plan | Rejection:
    """Decide what to do with a verified desired document. Never raises."""
    if desired.expires <= now:
        return Rejection(Reason.EXPIRED, f"desired seq {desired.seq} expired at {desired.expires}, now {now}")
    if desired.action == "idle" or desired.bundle is None:
        return Plan("idle", desired.seq)
    ref = desired.bundle.fetched()  # the device view when the hub named one (protocol.view)
    if ref.digest == current.active:
        return Plan("noop", desired.seq, ref)
    fits = inventory.fit(ref.requirements)
    if not fits.ok:
        return Rejection(fits.reason, f"bundle {ref.name} {ref.version}: {fits.detail}")
    if ref.digest == current.previous:
        return Plan("switch_back", desired.seq, ref)
    need = disk_needed(ref, current.downloaded, reserve)
    if inventory.free_disk < need:
        return Rejection(
            Reason.DISK_FULL, f"need {need} bytes free for a {ref.archive.size}-byte bundle, have {inventory.free_disk}"
        )
    return Plan("install", desired.seq, ref, need)


def require_fresh_root(root: Root, now: int) -> None:
    """Gatekeeper before anything new is trusted: raise :class:`RootExpired` naming the root's
    expiry when ``root`` has expired at ``now``."""
    if root.expires <= now:
        raise RootExpired(
            Reason.EXPIRED,
            f"trust root v{root.version} expired at {_utc(root.expires)} "
            f"({root.expires}), now {now}: it verifies nothing new until "
            "a newer root arrives",
        )


def _utc(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def choose_artifact(manifest: Manifest, inventory: Inventory) -> Choice | Rejection:
    """Pick the model artifact this device will serve: Edge TPU, else CPU int8/float, else ONNX.

    Never hands an Edge-TPU-compiled model to a CPU interpreter.
    """
    req = manifest.requirements
    fits = inventory.fit(req)  # again: the manifest is what the device verified
    if not fits.ok:
        return Rejection(fits.reason, f"{manifest.name} {manifest.version}: {fits.detail}", "verify")
    tpu = manifest.artifact("tflite_edgetpu")
    rt_ok = req.min_edgetpu_runtime is None or (inventory.edgetpu_runtime or 0) >= req.min_edgetpu_runtime
    if tpu is not None and inventory.edgetpu and rt_ok:
        return Choice(tpu, "edgetpu")
    if req.edgetpu == "required":
        return Rejection(
            Reason.UNSUPPORTED_RUNTIME,
            f"{manifest.name} {manifest.version} requires an Edge TPU"
            + ("" if inventory.edgetpu else "; none present"),
            "verify",
        )
    for role in ("tflite_int8", "tflite_float"):
        art = manifest.artifact(role)
        if art is not None:
            return Choice(art, "cpu")
    onnx = manifest.artifact("onnx")
    if onnx is not None and inventory.onnx:
        return Choice(onnx, "onnx")
    if tpu is not None:
        return Rejection(
            Reason.UNSUPPORTED_RUNTIME,
            f"{manifest.name} {manifest.version} has only an Edge TPU model and this device has no Edge TPU",
            "verify",
        )
    return Rejection(
        Reason.MISSING_ARTIFACT, f"{manifest.name} {manifest.version} has no model this device can run", "verify"
    )


@dataclass(frozen=True)
class Recovery:
    action: str  # empty | keep | commit | rollback | broken
    reason: Reason = Reason.OK
    detail: str = ""


def recover(
    active: str | None, trial: bool, active_ok: bool | None, previous: str | None, previous_ok: bool | None
) -> Recovery:
    """What to run after a (re)start, given the slot record and health checks of both slots.

    ``active_ok`` is the integrity check for a committed model and the self-test for a trial one.
    """
    if active is None:
        return Recovery("empty")
    if active_ok:
        return Recovery("commit" if trial else "keep")
    why = Reason.SELFTEST_FAILED if trial else Reason.HASH_MISMATCH
    if previous is not None and previous_ok:
        return Recovery("rollback", why, f"active {active[:12]} failed its check; back to {previous[:12]}")
    return Recovery("broken", why, f"active {active[:12]} failed its check and no working slot is kept")


def crash_verdict(probation: int | None, clean_shutdown: bool, max_crashes: int) -> tuple[int | None, bool]:
    """At start-up: the new probation count, and whether to roll back because the model on
    probation keeps taking the process down (restarts without a clean shutdown)."""
    if probation is None:
        return None, False
    count = probation if clean_shutdown else probation + 1
    return count, count > max_crashes


def probation_verdict(inferences: int, errors: int, window: int, max_errors: int) -> str:
    """During the first ``window`` inferences after a switch: ``rollback`` once ``errors``
    reach ``max_errors``, ``pass`` when the window ends, else ``watch``."""
    if errors >= max_errors:
        return "rollback"
    if inferences >= window:
        return "pass"
    return "watch"


def describe(result: Plan | Rejection) -> dict[str, Any]:
    if isinstance(result, Rejection):
        return {"rejected": result.reason.value, "detail": result.detail}
    return {"action": result.action, "bundle": result.bundle.digest if result.bundle else None}


# ---- app-controlled deferral ----------------------------------------------------------------
@dataclass(frozen=True)
class AppHold:
    """An app on this device asked (local API ``POST /v1/update/hold``) that no new bundle be
    switched to before ``until`` (unix seconds)."""

    until: int
    reason: str = ""


def hold_request(minutes: Any, reason: Any, now: int, max_minutes: int) -> AppHold:
    """An app's hold request, checked: ``minutes`` an int from 1 to ``max_minutes`` (the agent's
    ``max_hold_minutes``), ``reason`` a short string. Raises :class:`HoldRefused` naming the value.
    A new request replaces the current hold (an app ends one early with ``DELETE``)."""
    if max_minutes <= 0:
        raise HoldRefused("update holds are disabled on this device (max_hold_minutes = 0)")
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= max_minutes:
        raise HoldRefused(f"minutes must be a whole number from 1 to {max_minutes}, got {minutes!r:.40}")
    if not isinstance(reason, str) or len(reason) > 200:
        raise HoldRefused(f"reason must be a string of at most 200 characters, got {reason!r:.40}")
    return AppHold(now + minutes * 60, reason)


def hold_verdict(hold: AppHold | None, ready_since: int, now: int, max_minutes: int) -> AppHold | None:
    """Does an app's hold stop the switch to an install that has been ready (downloaded,
    verified, self-tested) since ``ready_since``? The hold in force, with its end capped at
    ``ready_since + max_minutes``: however often an app renews its hold, one install waits at
    most ``max_minutes``, so no app can stall its device's updates (and the fleet's rollout)
    for good. None: switch now."""
    if hold is None:
        return None
    until = min(hold.until, ready_since + max_minutes * 60)
    return AppHold(until, hold.reason) if now < until else None
