"""The drift baseline (``baseline.json``, bundle role ``baseline``), read and written in one place.

The compiler writes it (:meth:`Baseline.to_dict`), the agent bins live traffic on its edges, and
the hub judges windows against its reference counts; all three read it with :func:`parse` (bytes)
or :meth:`Baseline.from_dict` (a JSON object). Schema 1::

    {"schema": 1, "samples": 360,
     "inputs":  {"brightness": {"edges": [0.26, 0.27, ...], "ref": [35, 37, ...]}, ...},
     "outputs": {"top1_class": {"edges": [0.5, 1.5, ...], "ref": [...],
                                "thresholds": {"psi_alert": 0.5}}, ...},
     "thresholds": {"psi_warn": 0.1, "psi_alert": 0.25, "min_samples": 100}}

* ``schema``: int >= 1, required (a newer schema is read as far as this one knows it);
  ``samples``: the reference sample count, int >= 0, required.
* ``inputs`` / ``outputs``: feature name -> feature; either may be absent (no features).
* a feature: ``edges`` (the k interior cut points, finite numbers, ascending) and ``ref`` (the
  k + 1 reference bin counts, ints >= 0), both required; ``thresholds`` optional.
* ``thresholds`` (model-wide, and per feature): any of ``psi_warn``, ``psi_alert`` and
  ``ks_alpha`` (numbers; ``ks_alpha`` within 0..1, exclusive) and ``min_samples`` (int >= 0);
  an absent key inherits (:meth:`Baseline.thresholds_for`).
* ``task`` (schema 2, optional): what the per-task output features (:mod:`protocol.taskstats`)
  need besides edges: ``{"task": "detection", "classes": [1, 3], "centroid": [floats] | null}``
  (``classes``: the ids with per-class features; ``centroid``: an embedding model's reference
  centroid). Absent for a classifier and in schema 1 baselines (no per-task features).
* Unknown keys, at every level, are kept in ``extra`` and written back by ``to_dict``, so what
  a newer compiler wrote survives an older hub.

A field of the wrong type or value raises :class:`BadPayload` naming the field and the value
(``bad baseline: field 'inputs.brightness.ref' must hold ints >= 0, found -1``); a missing
required field says where (``bad baseline inputs.brightness: missing field 'ref'``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dc_field, fields, replace
from typing import Any

from .codec import extra_fields, field, load_object, nonneg_int
from .errors import BadPayload
from .sketch import DriftThresholds, DriftVerdict, drift_verdict

SCHEMA = 2  # 2: the optional ``task`` section
SIDES = ("inputs", "outputs")
WHAT = "baseline"
MAX_BASELINE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Thresholds:
    """Drift thresholds as ``baseline.json`` states them: ``None`` = not stated (inherit)."""

    psi_warn: float | None = None
    psi_alert: float | None = None
    min_samples: int | None = None
    ks_alpha: float | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def stated(self) -> dict[str, Any]:
        """The thresholds this object sets (``{"psi_alert": 0.5}``), without ``extra``."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.extra, **self.stated()}

    @classmethod
    def from_dict(cls, obj: Any, path: str = "thresholds") -> Thresholds:
        d = _object(obj, path)
        out: dict[str, Any] = {}
        for name in ("psi_warn", "psi_alert", "ks_alpha"):
            value = _opt_number(d, name, path)
            if value is not None and value < 0:
                raise BadPayload(WHAT, f"field '{path}.{name}' must be >= 0, got {value}")
            out[name] = value
        alpha = out["ks_alpha"]
        if alpha is not None and not 0 < alpha < 1:
            raise BadPayload(WHAT, f"field '{path}.ks_alpha' must be within 0..1 (exclusive), got {alpha}")
        ms = d.get("min_samples")
        if ms is not None:
            out["min_samples"] = nonneg_int(d, "min_samples", f"{WHAT} {path}")
        return cls(**out, extra=extra_fields(d, {"psi_warn", "psi_alert", "min_samples", "ks_alpha"}))


@dataclass(frozen=True)
class Feature:
    """One drift feature: ``edges`` (k interior cut points) and ``ref`` (k + 1 counts)."""

    edges: tuple[float, ...]
    ref: tuple[int, ...]
    thresholds: Thresholds | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {**self.extra, "edges": list(self.edges), "ref": list(self.ref)}
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds.to_dict()
        return out

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Feature:
        d = _object(obj, path)
        edges = field(d, "edges", list, f"{WHAT} {path}")
        for i, e in enumerate(edges):
            if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
                raise BadPayload(WHAT, f"field '{path}.edges' must hold finite numbers, found {e!r:.40}")
            if i and e < edges[i - 1]:
                raise BadPayload(WHAT, f"field '{path}.edges' must ascend, found {e} after {edges[i - 1]}")
        ref = field(d, "ref", list, f"{WHAT} {path}")
        for c in ref:
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise BadPayload(WHAT, f"field '{path}.ref' must hold ints >= 0, found {c!r:.40}")
        if len(ref) != len(edges) + 1:
            raise BadPayload(
                WHAT, f"field '{path}.ref' must hold {len(edges) + 1} counts (one more than edges), got {len(ref)}"
            )
        th = d.get("thresholds")
        return cls(
            tuple(float(e) for e in edges),
            tuple(ref),
            Thresholds.from_dict(th, f"{path}.thresholds") if th is not None else None,
            extra_fields(d, {"edges", "ref", "thresholds"}),
        )


@dataclass(frozen=True)
class TaskSection:
    """What a non-classifier's output features need (:mod:`protocol.taskstats`)."""

    task: str
    classes: tuple[int, ...] = ()
    centroid: tuple[float, ...] | None = None
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "task": self.task,
            "classes": list(self.classes),
            "centroid": None if self.centroid is None else list(self.centroid),
        }

    @classmethod
    def from_dict(cls, obj: Any, path: str = "task") -> TaskSection:
        d = _object(obj, path)
        task = field(d, "task", str, f"{WHAT} {path}")
        classes = field(d, "classes", list, f"{WHAT} {path}", [])
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                raise BadPayload(WHAT, f"field '{path}.classes' must hold ints >= 0, found {c!r:.40}")
        centroid = d.get("centroid")
        if centroid is not None:
            if not isinstance(centroid, list) or not centroid:
                raise BadPayload(
                    WHAT, f"field '{path}.centroid' must be a non-empty list or null, got {centroid!r:.40}"
                )
            for v in centroid:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise BadPayload(WHAT, f"field '{path}.centroid' must hold finite numbers, found {v!r:.40}")
        return cls(
            task,
            tuple(classes),
            None if centroid is None else tuple(float(v) for v in centroid),
            extra_fields(d, {"task", "classes", "centroid"}),
        )


@dataclass(frozen=True)
class Baseline:
    """A bundle's drift baseline. ``inputs`` / ``outputs``: feature name -> :class:`Feature`."""

    samples: int
    inputs: Mapping[str, Feature] = dc_field(default_factory=dict, hash=False)
    outputs: Mapping[str, Feature] = dc_field(default_factory=dict, hash=False)
    thresholds: Thresholds | None = None
    schema: int = SCHEMA
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)
    task: TaskSection | None = None

    def features(self) -> dict[str, Feature]:
        """Every feature by its key, ``"inputs.brightness"``, in key order."""
        keyed = {f"{side}.{name}": feat for side in SIDES for name, feat in getattr(self, side).items()}
        return dict(sorted(keyed.items()))

    def refs(self) -> dict[str, list[int]]:
        """Reference counts by feature key: ``{"inputs.brightness": [35, 37, ...]}``."""
        return {key: list(f.ref) for key, f in self.features().items()}

    def thresholds_for(self, key: str, overrides: Mapping[str, Thresholds] | None = None) -> DriftThresholds:
        """The thresholds that judge feature ``key``: the defaults, then the model's, the hub's
        fleet-wide ``overrides["*"]``, the feature's own, the hub's ``overrides[key]``; each
        stated value replaces the one before (the more specific wins)."""
        feat = self.features().get(key)
        over = overrides or {}
        th = DriftThresholds()
        for layer in (self.thresholds, over.get("*"), feat.thresholds if feat else None, over.get(key)):
            if layer is not None:
                th = replace(th, **layer.stated())
        return th

    def verdict(
        self, key: str, counts: Sequence[int], overrides: Mapping[str, Thresholds] | None = None
    ) -> DriftVerdict:
        """Window ``counts`` of feature ``key`` judged by :func:`protocol.sketch.drift_verdict`
        with :meth:`thresholds_for` ``key``. Raises :class:`BadPayload` when ``key`` is no
        feature of this baseline or ``counts`` has another number of bins."""
        feat = self.features().get(key)
        if feat is None:
            raise BadPayload("drift counts", f"{key!r} is not a feature of this baseline")
        if len(counts) != len(feat.ref):
            raise BadPayload("drift counts", f"{key}: window has {len(counts)} bins, baseline has {len(feat.ref)}")
        return drift_verdict(feat.ref, counts, self.thresholds_for(key, overrides))

    def edges(self, side: str) -> dict[str, list[float]]:
        """The bin edges of one side's features (what the agent bins live traffic on)."""
        return {name: list(f.edges) for name, f in getattr(self, side).items()}

    def to_dict(self) -> dict[str, Any]:
        out = {
            **self.extra,
            "schema": self.schema,
            "samples": self.samples,
            "inputs": {name: f.to_dict() for name, f in self.inputs.items()},
            "outputs": {name: f.to_dict() for name, f in self.outputs.items()},
        }
        if self.thresholds is not None:
            out["thresholds"] = self.thresholds.to_dict()
        if self.task is not None:
            out["task"] = self.task.to_dict()
        return out

    @classmethod
    def from_dict(cls, obj: Any) -> Baseline:
        d = _object(obj, "the document")
        schema = field(d, "schema", int, WHAT)
        if schema < 1:
            raise BadPayload(WHAT, f"field 'schema' must be >= 1, got {schema}")
        sides: dict[str, dict[str, Feature]] = {}
        for side in SIDES:
            feats = field(d, side, dict, WHAT, {})
            sides[side] = {str(name): Feature.from_dict(spec, f"{side}.{name}") for name, spec in feats.items()}
        th = d.get("thresholds")
        task = d.get("task")
        return cls(
            samples=nonneg_int(d, "samples", WHAT),
            inputs=sides["inputs"],
            outputs=sides["outputs"],
            thresholds=Thresholds.from_dict(th) if th is not None else None,
            schema=schema,
            extra=extra_fields(d, {"schema", "samples", *SIDES, "thresholds", "task"}),
            task=TaskSection.from_dict(task) if task is not None else None,
        )


def parse(data: bytes) -> Baseline:
    """``baseline.json`` bytes -> :class:`Baseline`, or :class:`BadPayload` naming the field."""
    return Baseline.from_dict(load_object(data, WHAT, MAX_BASELINE_BYTES))


def _object(obj: Any, path: str) -> dict[str, Any]:
    if not isinstance(obj, Mapping):
        raise BadPayload(WHAT, f"{path} must be an object, got {obj!r:.60}")
    return dict(obj)


def _opt_number(d: dict[str, Any], key: str, path: str) -> float | None:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadPayload(WHAT, f"field '{path}.{key}' must be a finite number, got {value!r:.40}")
    return float(value)
