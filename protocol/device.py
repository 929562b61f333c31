"""What a device says about itself inside its messages: :class:`Inventory` (in the retained
``Status``), :class:`Health` and :class:`Shadow` (in each ``Telemetry`` window).

Each is a frozen dataclass with ``from_dict(obj, what)`` and ``to_dict()``, after python-tuf's
``MetaFile.from_dict``: the known fields are checked and typed, the fields this version does not
know are kept in ``extra`` and written back, so what a newer agent says survives the hub. A known
field of the wrong type raises :class:`BadPayload` naming the field and the value.

A fact the device does not know is ``None``; writers leave it out, readers take an absent key and
``null`` alike. :class:`Shadow` is the exception: its four fields are always written.

Memory is ``mem_available_mb`` / ``mem_total_mb`` (MiB, as the agent's health always sent it)
in both the inventory and the health. Agents 0.1.x sent the inventory's as ``mem_available`` /
``mem_total`` in bytes; :meth:`Inventory.from_dict` still reads those (in MiB, under the new names).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field as dc_field, fields
from typing import Any

from .codec import extra_fields, field, nonneg_int
from .errors import BadPayload

MIB = 2**20


def _opt(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    return field(obj, key, kind, what, None, allow_none=True)


def _opt_count(obj: dict[str, Any], key: str, what: str) -> int | None:
    value: int | None = _opt(obj, key, int, what)
    if value is not None and value < 0:
        raise BadPayload(what, f"field {key!r} must be >= 0, got {value}")
    return value


_NAMES: dict[type, tuple[str, ...]] = {}
_KNOWN: dict[tuple[type, tuple[str, ...]], frozenset[str]] = {}


def _names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names (``fields()`` is slow, and the hub asks per telemetry window)."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in fields(cls))
    return names


def _facts(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The known fields that are set, then ``extra`` under them (a known name always wins)."""
    out = dict(obj.extra)
    for name in _names(type(obj)):
        value = getattr(obj, name)
        if name not in ("extra", *skip) and value is not None:
            out[name] = value
    return out


def _known(cls: type, *more: str) -> frozenset[str]:
    """Wire keys a type reads: its fields (not ``extra``, nor ``edgetpu_info``) and ``more``."""
    known = _KNOWN.get((cls, more))
    if known is None:
        known = _KNOWN[(cls, more)] = frozenset(_names(cls)) - {"extra", "edgetpu_info"} | set(more)
    return known


def _check_object(obj: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise BadPayload(what, f"expected an object, got {obj!r:.60}")
    return obj


def _features(obj: dict[str, Any], what: str) -> tuple[str, ...] | None:
    raw = _opt(obj, "features", list, what)
    if raw is None:
        return None
    if not all(isinstance(f, str) and 0 < len(f) <= 64 for f in raw) or len(raw) > 64:
        raise BadPayload(what, f"field 'features' must be up to 64 names of 1-64 chars, got {raw!r:.80}")
    return tuple(raw)


@dataclass(frozen=True)
class Inventory:
    """What the device is and can run, as the agent probed it at start (``Status.inventory``).

    The hub decides compatibility from ``board``, ``edgetpu``, ``edgetpu_runtime`` and
    ``agent_version`` (:func:`protocol.compat.fit`); the rest is shown to the operator.
    ``edgetpu`` arrives as a bool or as an object ``{"present": bool, ...}``; the object's other
    keys are kept in ``edgetpu_info`` and the object is written back as it came.
    """

    board: str | None = None
    arch: str | None = None
    python: str | None = None
    agent_version: str | None = None
    edgetpu: bool | None = None
    edgetpu_detail: str | None = None  # why there is none (probe error, disabled by config)
    edgetpu_runtime: int | None = None
    edgetpu_info: Mapping[str, Any] | None = dc_field(default=None, hash=False)
    litert: str | None = None
    onnxruntime: bool | None = None
    free_disk: int | None = None  # bytes free in the agent's state directory
    mem_available_mb: int | None = None
    mem_total_mb: int | None = None
    cloud_fallback: bool | None = None
    http_port: int | None = None
    mqtt: str | None = None  # "v5" or "v3.1.1"
    served_by: str | None = None  # edgetpu | cpu | cloud
    # what this agent can do that older ones cannot, e.g. protocol.view.FEATURE (device-view archives)
    features: tuple[str, ...] | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = _facts(self, skip=("edgetpu_info",))
        if self.features is not None:
            out["features"] = list(self.features)
        if self.edgetpu_info is not None:
            present = {} if self.edgetpu is None else {"present": self.edgetpu}
            out["edgetpu"] = {**self.edgetpu_info, **present}
        return out

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str = "inventory") -> Inventory:
        obj = dict(_check_object(obj, what))
        tpu, info = obj.get("edgetpu"), None
        if isinstance(tpu, Mapping):
            info = {k: v for k, v in tpu.items() if k != "present"}
            tpu = _opt(dict(tpu), "present", bool, f"{what} edgetpu")
        elif tpu is not None and not isinstance(tpu, bool):
            raise BadPayload(what, f"field 'edgetpu' must be bool or an object with 'present', got {tpu!r:.60}")
        mem: dict[str, int | None] = {}
        for name in ("mem_available", "mem_total"):
            mb = _opt_count(obj, f"{name}_mb", what)
            old = _opt_count(obj, name, what)  # agents 0.1.x: bytes
            mem[name] = mb if mb is not None or old is None else old // MIB
        return cls(
            board=_opt(obj, "board", str, what),
            arch=_opt(obj, "arch", str, what),
            python=_opt(obj, "python", str, what),
            agent_version=_opt(obj, "agent_version", str, what),
            edgetpu=tpu,
            edgetpu_detail=_opt(obj, "edgetpu_detail", str, what),
            edgetpu_runtime=_opt_count(obj, "edgetpu_runtime", what),
            edgetpu_info=info,
            litert=_opt(obj, "litert", str, what),
            onnxruntime=_opt(obj, "onnxruntime", bool, what),
            free_disk=_opt_count(obj, "free_disk", what),
            mem_available_mb=mem["mem_available"],
            mem_total_mb=mem["mem_total"],
            cloud_fallback=_opt(obj, "cloud_fallback", bool, what),
            http_port=_opt_count(obj, "http_port", what),
            mqtt=_opt(obj, "mqtt", str, what),
            served_by=_opt(obj, "served_by", str, what),
            features=_features(obj, what),
            extra=extra_fields(obj, _known(cls, "mem_available", "mem_total")),
        )


@dataclass(frozen=True)
class Health:
    """The device's load when a telemetry window closed (``Telemetry.health``)."""

    load1: float | None = None
    cpu_temp_c: float | None = None
    mem_available_mb: int | None = None
    mem_total_mb: int | None = None
    rss_mb: float | None = None  # the agent process
    disk_free_mb: int | None = None  # the agent's state directory
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return _facts(self)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str = "health") -> Health:
        obj = dict(_check_object(obj, what))
        return cls(
            load1=_opt(obj, "load1", float, what),
            cpu_temp_c=_opt(obj, "cpu_temp_c", float, what),
            mem_available_mb=_opt_count(obj, "mem_available_mb", what),
            mem_total_mb=_opt_count(obj, "mem_total_mb", what),
            rss_mb=_opt(obj, "rss_mb", float, what),
            disk_free_mb=_opt_count(obj, "disk_free_mb", what),
            extra=extra_fields(obj, _known(cls)),
        )


@dataclass(frozen=True)
class Shadow:
    """A shadow model's record over one telemetry window (``Telemetry.shadow``): ``samples``
    answers compared with the served model's, ``agreement`` the mean agreement (``None`` with
    no samples): for classifiers the share with the same top-1, for other tasks the mean of
    :func:`protocol.taskstats.agreement` (IoU-matched detection F1, pixel agreement...);
    ``errors`` shadow runs that failed, ``latency_delta_ms`` the mean extra time; ``bundle`` the
    candidate's digest (absent from agents older than it: the hub then counts by time alone)."""

    samples: int = 0
    errors: int = 0
    agreement: float | None = None
    latency_delta_ms: float | None = None
    bundle: str | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    @property
    def agreed(self) -> int:
        """How many of ``samples`` agreed (the agent sends the share: its count divided by samples)."""
        return round(self.agreement * self.samples) if self.agreement is not None else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "samples": self.samples,
            "errors": self.errors,
            "agreement": self.agreement,
            "latency_delta_ms": self.latency_delta_ms,
            **({"bundle": self.bundle} if self.bundle is not None else {}),
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], what: str = "shadow") -> Shadow:
        obj = dict(_check_object(obj, what))
        samples = nonneg_int(obj, "samples", what, 0)
        agreement = _opt(obj, "agreement", float, what)
        if agreement is not None and not 0.0 <= agreement <= 1.0:
            raise BadPayload(what, f"agreement must be within 0..1, got {agreement}")
        if agreement is None and samples:
            raise BadPayload(what, f"agreement is missing for {samples} samples")
        delta = _opt(obj, "latency_delta_ms", float, what)
        return cls(
            samples,
            nonneg_int(obj, "errors", what, 0),
            float(agreement) if agreement is not None else None,
            float(delta) if delta is not None else None,
            _opt(obj, "bundle", str, what),
            extra_fields(obj, _known(cls)),
        )


__all__ = ["Health", "Inventory", "Shadow"]
