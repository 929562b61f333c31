"""The device view of a bundle: the same signed manifest, only the artifacts a device uses.

Every bundle carries its model several times (``tflite_int8``, the ``tflite_float`` reference,
the ``onnx`` twin; ADR 0016). A device picks one (``agent.install.choose_artifact``: Edge TPU,
else ``tflite_int8``, else ``tflite_float``, else ``onnx`` with onnxruntime) and never opens the
others, yet the full archive makes it download all of them. :func:`needed` names what a device
does use; rules, in this order, on the manifest alone:

1. ``tflite_float`` is dropped when the bundle has a ``tflite_int8`` (chosen before it, and the
   Edge TPU watchdog's CPU twin is the int8 one too);
2. ``onnx`` is dropped when the bundle has a CPU TFLite model (``tflite_int8`` or
   ``tflite_float``): the agent chooses either before the twin. An Edge-TPU-only bundle keeps
   its twin: a device without a TPU serves it on onnxruntime;
3. ``report`` and ``model_card`` are dropped: JSON and Markdown for people, which the hub shows
   from its own store and no part of the agent reads;
4. everything else is kept: the Edge TPU model(s), ``baseline`` (drift telemetry), ``selftest``
   (self-test, benchmark stage, restart recovery), ``labels`` (answers).

A **device-view archive** is packed like the full archive (``protocol.bundle.pack_archive`` with
``only``): ``EFB1``, the *same* signed envelope, then only the kept artifacts in manifest order.
The manifest, and so the bundle's digest, is unchanged: reports, status, telemetry and rollouts
name the same bundle whichever archive a device fetched. The hub names a view in the signed
desired document (``BundleRef.view``: the member names and the view archive's own chunk plan) to
agents that announced :data:`FEATURE` in their inventory; the agent checks that the view holds
every artifact :func:`needed` names before it writes a byte of one (:func:`check_members`), then
every artifact's signed size and hash as for a full archive.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any

from . import bundle
from .bundle import ChunkPlan, check_name
from .codec import extra_fields, field
from .errors import BadPayload

_KNOWN = {"artifacts", "size", "sha256", "chunk_size", "chunks"}
FEATURE = "device_view"  # in Inventory.features: this agent installs device-view archives
# the rules (module docstring) live beside the archive code that applies them (protocol.bundle
# reads a view's members while it verifies an archive), re-exported here where they are described
CPU_MODELS, FOR_PEOPLE = bundle.VIEW_CPU_MODELS, bundle.VIEW_FOR_PEOPLE
needed, check_members = bundle.view_needed, bundle.view_check_members


@dataclass(frozen=True)
class BundleView:
    """A device-view archive of a bundle in a desired document: its members and chunk plan."""

    artifacts: tuple[str, ...]  # member names, in manifest order
    plan: ChunkPlan
    extra: dict[str, Any] = dc_field(default_factory=dict, hash=False, compare=False)  # unknown fields, kept

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "artifacts": list(self.artifacts),
            "size": self.plan.size,
            "sha256": self.plan.sha256,
            "chunk_size": self.plan.chunk_size,
            "chunks": list(self.plan.chunks),
        }

    @classmethod
    def from_dict(cls, obj: Any) -> BundleView:
        what = "bundle view"
        if not isinstance(obj, dict):
            raise BadPayload(what, f"must be an object, got {obj!r:.60}")
        names = field(obj, "artifacts", list, what)
        for n in names:
            check_name(n)
        if len(set(names)) != len(names):
            raise BadPayload(what, f"artifacts {names!r:.80} name one twice")
        return cls(tuple(names), ChunkPlan.from_fields(obj, what), extra_fields(obj, _KNOWN))
