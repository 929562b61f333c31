"""Bulk actions on devices, for the device list's selection and the CLI: tag, untag, set the
group, retry failed installs. At most :data:`MAX_IDS` ids per request, and one result per id,
in the order asked: ``ok``, ``unknown`` (no such device) or ``refused`` with the reason. Never
a silent partial: an id is ``ok`` only if the change was made (or was already so).

* ``tag`` / ``untag`` / ``set_group``: one transaction, one audit entry (``device.bulk.<action>``)
  naming every device changed; then the changed devices' rollouts re-target them
  (:func:`hub.rollouts.converge`), as a single device's edit does.
* ``retry``: a device's install is retried in the rollout it follows (the newest non-terminal
  one it belongs to) when it is ``failed`` or ``timed_out`` there and that rollout may issue
  (:data:`hub.rollout.COMMAND_PHASES`); :func:`retry_verdict` decides, purely. The retries of
  one rollout go to its machine as one ``retry`` command (:func:`hub.rollouts.command`, which
  audits ``rollout.retry`` with the devices), and each id's result is read back from the
  rollout's rows afterwards, so a device whose state moved meanwhile is reported as refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from . import rollouts
from .errors import HubError, Invalid
from .fleet import Fleet
from .models import Device, Rollout, RolloutDevice
from .rollout import COMMAND_PHASES, RETRY_FROM, TERMINAL_PHASES

MAX_IDS = 1000
ACTIONS = ("tag", "untag", "set_group", "retry")
CHUNK = 500  # ids per IN (...) query


@dataclass(frozen=True)
class Result:
    device: str
    status: str  # ok | unknown | refused
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"device": self.device, "status": self.status, "detail": self.detail}


def retry_verdict(device: str, rollout: str | None, phase: str, state: str) -> Result | None:
    """Why ``device`` cannot be retried in ``rollout`` (its newest non-terminal rollout, in
    ``phase``, the device ``state`` there), or None when it can."""
    if rollout is None:
        return Result(device, "refused", "not in a running or completed rollout: nothing to retry")
    if state not in RETRY_FROM:
        return Result(device, "refused", f"nothing to retry: its install in rollout {rollout} is {state}")
    if phase not in COMMAND_PHASES["retry"]:
        return Result(
            device,
            "refused",
            f"rollout {rollout} is {phase}; a retry needs it {' or '.join(COMMAND_PHASES['retry'])} (resume it first)",
        )
    return None


def _ids(ids: Sequence[str]) -> list[str]:
    unique = list(dict.fromkeys(ids))
    if not unique:
        raise Invalid("devices", "name at least one device id")
    if len(unique) > MAX_IDS:
        raise Invalid("devices", f"at most {MAX_IDS} ids per request, got {len(unique)}")
    return unique


def _rows(s: Session, ids: Sequence[str]) -> dict[str, Device]:
    out: dict[str, Device] = {}
    for i in range(0, len(ids), CHUNK):
        out.update((d.id, d) for d in s.exec(select(Device).where(col(Device.id).in_(ids[i : i + CHUNK]))).all())
    return out


def apply(
    fleet: Fleet, action: str, ids: Sequence[str], actor: str, tag: str | None = None, group: str | None = None
) -> dict[str, Any]:
    """Run ``action`` on ``ids``; ``{"action", "results": [...], "ok", "unknown", "refused"}``.
    Raises :class:`Invalid` for a bad action, id list or missing tag/group."""
    if action not in ACTIONS:
        raise Invalid("action", f"{action!r} is not one of {ACTIONS}")
    unique = _ids(ids)
    if action in ("tag", "untag") and not (tag or "").strip():
        raise Invalid("tag", f"{action} needs a non-empty tag, got {tag!r}")
    if action == "set_group" and group is None:
        raise Invalid("group", "set_group needs a group ('' to clear it)")
    results = _retry(fleet, unique, actor) if action == "retry" else _edit(fleet, action, unique, actor, tag, group)
    return {
        "action": action,
        "results": [r.to_dict() for r in results],
        **{k: sum(r.status == k for r in results) for k in ("ok", "unknown", "refused")},
    }


def _edit(fleet: Fleet, action: str, ids: list[str], actor: str, tag: str | None, group: str | None) -> list[Result]:
    tag = (tag or "").strip()
    changed: list[str] = []
    results: list[Result] = []
    with fleet.session() as s:
        rows = _rows(s, ids)
        for did in ids:
            d = rows.get(did)
            if d is None:
                results.append(Result(did, "unknown", "no such device"))
                continue
            tags = list(d.tags or [])
            if action == "tag":
                new_tags, new_group = list(dict.fromkeys([*tags, tag])), d.group
            elif action == "untag":
                new_tags, new_group = [t for t in tags if t != tag], d.group
            else:
                new_tags, new_group = tags, group or ""
            if new_tags == tags and new_group == d.group:
                results.append(Result(did, "ok", "unchanged: already so"))
                continue
            if len(new_tags) > 64:
                results.append(Result(did, "refused", f"a device has at most 64 tags, this one has {len(tags)}"))
                continue
            d.tags, d.group = new_tags, new_group
            s.add(d)
            changed.append(did)
            results.append(Result(did, "ok", "changed"))
        if changed:
            what = {"tag": tag} if action != "set_group" else {"group": group or ""}
            fleet.audit(s, actor, f"device.bulk.{action}", f"{len(changed)} device(s)", devices=changed, **what)
        s.commit()
    rollouts.converge(fleet, changed)  # tags and groups are rollout targets
    return results


def _retry(fleet: Fleet, ids: list[str], actor: str) -> list[Result]:
    verdicts: dict[str, Result] = {}
    per_rollout: dict[str, list[str]] = {}
    with fleet.session() as s:
        known = _rows(s, ids)
        follows: dict[str, tuple[str, str, str]] = {}  # device -> (rollout, phase, state), newest first
        for i in range(0, len(ids), CHUNK):
            q = (
                select(RolloutDevice.device_id, Rollout.id, Rollout.phase, RolloutDevice.state)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .where(col(RolloutDevice.device_id).in_(ids[i : i + CHUNK]), col(Rollout.phase).notin_(TERMINAL_PHASES))
                .order_by(col(Rollout.serial).desc())
            )
            for did, rid, phase, state in s.exec(q).all():
                follows.setdefault(did, (rid, phase, state))
    for did in ids:
        if did not in known:
            verdicts[did] = Result(did, "unknown", "no such device")
            continue
        rid, phase, state = follows.get(did, ("", "", ""))
        refused = retry_verdict(did, rid or None, phase, state)
        if refused is not None:
            verdicts[did] = refused
        else:
            per_rollout.setdefault(rid, []).append(did)
    for rid, devs in per_rollout.items():
        try:
            rollouts.command(fleet, rid, "retry", actor, devs)
        except HubError as exc:  # the rollout moved on since we looked (paused, cancelled...)
            verdicts.update((d, Result(d, "refused", str(exc))) for d in devs)
            continue
        with fleet.session() as s:
            rows = s.exec(
                select(RolloutDevice).where(RolloutDevice.rollout_id == rid, col(RolloutDevice.device_id).in_(devs))
            ).all()
            after = {r.device_id: r.state for r in rows}
        for d in devs:
            st = after.get(d, "gone")
            if st in ("issued", "waiting"):
                verdicts[d] = Result(d, "ok", f"re-issued in rollout {rid} ({st})")
            else:
                verdicts[d] = Result(d, "refused", f"not re-issued: its install in rollout {rid} is {st}")
    return [verdicts[d] for d in ids]
