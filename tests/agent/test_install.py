"""install.plan / choose_artifact / recover: pure decisions, table-tested."""

from __future__ import annotations

import pytest

from agent.errors import RootExpired
from agent.install import (
    Current,
    Inventory,
    Plan,
    Rejection,
    choose_artifact,
    disk_needed,
    plan,
    probation_verdict,
    recover,
    require_fresh_root,
)
from protocol.bundle import Artifact, ChunkPlan, Manifest, Requirements
from protocol.errors import Reason
from protocol.messages import BundleRef, Desired

NOW = 1_000_000
A = "a" * 64
B = "b" * 64
MB = 1 << 20


def ref(digest: str = B, size: int = 10 * MB, **req: object) -> BundleRef:
    n = -(-size // 65536)
    return BundleRef(digest, "m", "2", ChunkPlan(size, "c" * 64, 65536, ("d" * 64,) * n), Requirements(**req))


def desired(r: BundleRef | None = None, action: str = "install", expires: int = NOW + 60) -> Desired:
    return Desired("dev1", 5, NOW - 10, expires, action, r if r is not None or action == "idle" else ref())


INV = Inventory("rpi4", edgetpu=False, free_disk=100 * MB, agent_version="0.1.0")
TPU = Inventory("rpi4", edgetpu=True, edgetpu_runtime=14, free_disk=100 * MB, agent_version="0.1.0")


@pytest.mark.parametrize(
    "name, current, d, inv, expect",
    [
        ("fresh device installs", Current(), desired(), INV, "install"),
        ("bundle already active is a noop", Current(active=B), desired(), INV, "noop"),
        ("bundle kept in previous slot switches back", Current(active=A, previous=B), desired(), INV, "switch_back"),
        ("idle document", Current(active=A), desired(None, "idle"), INV, "idle"),
        ("expired document", Current(), desired(expires=NOW), INV, Reason.EXPIRED),
        ("bundle for another board", Current(), desired(ref(boards=("coral-devboard",))), INV, Reason.WRONG_HARDWARE),
        ("board listed", Current(), desired(ref(boards=("rpi4", "rpi5"))), INV, "install"),
        ("edge tpu required without one", Current(), desired(ref(edgetpu="required")), INV, Reason.UNSUPPORTED_RUNTIME),
        ("edge tpu required with one", Current(), desired(ref(edgetpu="required")), TPU, "install"),
        ("edge tpu optional without one", Current(), desired(ref(edgetpu="optional")), INV, "install"),
        (
            "runtime too old",
            Current(),
            desired(ref(edgetpu="required", min_edgetpu_runtime=15)),
            TPU,
            Reason.UNSUPPORTED_RUNTIME,
        ),
        ("agent too old", Current(), desired(ref(min_agent="0.2")), INV, Reason.UNSUPPORTED_RUNTIME),
        ("disk too small", Current(), desired(ref(size=60 * MB)), INV, Reason.DISK_FULL),
        ("half downloaded fits", Current(downloaded=45 * MB), desired(ref(size=50 * MB)), INV, "install"),
    ],
)
def test_plan_table(name: str, current: Current, d: Desired, inv: Inventory, expect: object):
    got = plan(current, d, inv, NOW)
    if isinstance(expect, Reason):
        assert isinstance(got, Rejection) and got.reason is expect, (name, got)
    else:
        assert isinstance(got, Plan) and got.action == expect, (name, got)


def test_disk_need_counts_archive_and_extracted_copy():
    assert disk_needed(ref(size=10 * MB), 0, MB) == 21 * MB
    assert disk_needed(ref(size=10 * MB), 10 * MB, 0) == 10 * MB


def _manifest(*roles: str, **req: object) -> Manifest:
    arts = tuple(Artifact(f"{r}.bin", r, "0" * 64, 1) for r in roles)
    return Manifest("m", "1", 0, arts, Requirements(**req))


@pytest.mark.parametrize(
    "roles, req, inv, expect",
    [
        (("tflite_edgetpu", "tflite_int8"), {}, TPU, ("tflite_edgetpu", "edgetpu")),
        (("tflite_edgetpu", "tflite_int8"), {}, INV, ("tflite_int8", "cpu")),
        (("tflite_edgetpu",), {}, INV, Reason.UNSUPPORTED_RUNTIME),
        (("tflite_edgetpu", "tflite_int8"), {"edgetpu": "required"}, INV, Reason.UNSUPPORTED_RUNTIME),
        (("tflite_float",), {}, INV, ("tflite_float", "cpu")),
        (("onnx",), {}, Inventory("rpi4", onnx=True), ("onnx", "onnx")),
        (("onnx",), {}, INV, Reason.MISSING_ARTIFACT),
        (("labels",), {}, INV, Reason.MISSING_ARTIFACT),
        (("tflite_int8",), {"boards": ("jetson",)}, INV, Reason.WRONG_HARDWARE),
    ],
)
def test_choose_artifact_never_gives_an_edgetpu_model_to_the_cpu(roles, req, inv, expect):
    got = choose_artifact(_manifest(*roles, **req), inv)
    if isinstance(expect, Reason):
        assert isinstance(got, Rejection) and got.reason is expect
    else:
        assert not isinstance(got, Rejection)
        assert (got.artifact.role, got.runtime) == expect


@pytest.mark.parametrize(
    "active, trial, active_ok, previous, previous_ok, expect",
    [
        (None, False, None, None, None, "empty"),
        (A, False, True, None, None, "keep"),
        (A, True, True, B, True, "commit"),
        (A, True, False, B, True, "rollback"),
        (A, False, False, B, True, "rollback"),
        (A, True, False, None, None, "broken"),
        (A, False, False, B, False, "broken"),
    ],
)
def test_recover_after_restart_keeps_a_working_model(active, trial, active_ok, previous, previous_ok, expect):
    assert recover(active, trial, active_ok, previous, previous_ok).action == expect


@pytest.mark.parametrize(
    "n, errors, verdict", [(1, 0, "watch"), (5, 3, "rollback"), (20, 2, "pass"), (3, 3, "rollback")]
)
def test_probation_verdict(n: int, errors: int, verdict: str):
    assert probation_verdict(n, errors, 20, 3) == verdict


@pytest.mark.parametrize(
    "probation, clean, expect",
    [
        (None, False, (None, False)),  # not on probation: crashes are not the model's fault here
        (0, True, (0, False)),  # clean restarts do not count
        (0, False, (1, False)),
        (2, False, (3, True)),  # third crash while the new model is on probation: roll back
        (2, True, (2, False)),
    ],
)
def test_crash_verdict(probation, clean, expect):
    from agent.install import crash_verdict

    assert crash_verdict(probation, clean, 2) == expect


@pytest.mark.parametrize("expires, fresh", [(NOW + 1, True), (NOW, False), (NOW - 86400, False)])
def test_a_root_verifies_nothing_new_from_the_second_it_expires(trust, expires, fresh):
    """The same boundary as edgefleet-cloud (``expires <= now`` is expired), named in the error."""
    from dataclasses import replace

    root = replace(trust.root, expires=expires)
    if fresh:
        require_fresh_root(root, NOW)
        return
    with pytest.raises(RootExpired, match=rf"trust root v1 expired at \S+Z \({expires}\), now {NOW}") as exc:
        require_fresh_root(root, NOW)
    assert exc.value.reason is Reason.EXPIRED
