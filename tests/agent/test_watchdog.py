"""The Edge TPU watchdog: a hung or failing delegate moves serving to the CPU twin, no request
fails, the TPU is retried with backoff, and telemetry says why (agent/watchdog.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.errors import ModelError
from agent.runtime import LiteRTBackend
from agent.watchdog import GuardedBackend, Policy, Settings, Watch, backoff, step, temperature
from protocol.messages import Accelerator, Telemetry, parse_telemetry

from .bundles import MNV1, MNV1_TPU
from .faketpu import FakeTpu

P = Policy(timeout_s=0.5, max_errors=3, backoff_s=30.0, backoff_max_s=240.0, stable_s=600.0)
TPU = Watch(since=0.0)
CPU = Watch("cpu", "timeout", 0, 1, 130.0, False, 100.0, 1)


@pytest.mark.parametrize(
    "before, event, now, after, action",
    [
        (TPU, "ok", 1.0, TPU, "keep"),
        (TPU, "error", 1.0, Watch(errors=1), "keep"),
        (Watch(errors=1), "ok", 1.0, TPU, "keep"),  # errors must come in a row
        (Watch(errors=2), "error", 5.0, Watch("cpu", "errors", 0, 1, 35.0, False, 5.0, 1), "failover"),
        (TPU, "timeout", 7.0, Watch("cpu", "timeout", 0, 1, 37.0, False, 7.0, 1), "failover"),
        (TPU, "load_failed", 0.0, Watch("cpu", "load_failed", 0, 1, 30.0, False, 0.0, 1), "failover"),
        (TPU, "tick", 1.0, TPU, "keep"),
        (TPU, "probe_ok", 1.0, TPU, "keep"),
        # on the CPU: outcomes of CPU invokes do not concern the TPU; ticks retry when due
        (CPU, "ok", 120.0, CPU, "keep"),
        (CPU, "error", 120.0, CPU, "keep"),
        (CPU, "timeout", 120.0, CPU, "keep"),
        (CPU, "tick", 129.9, CPU, "keep"),
        (CPU, "tick", 130.0, Watch("cpu", "timeout", 0, 1, 130.0, True, 100.0, 1), "retry"),
        (
            Watch("cpu", "timeout", 0, 1, 130.0, True, 100.0, 1),
            "tick",
            200.0,
            Watch("cpu", "timeout", 0, 1, 130.0, True, 100.0, 1),
            "keep",
        ),  # one probe at a time
        (
            Watch("cpu", "timeout", 0, 1, 130.0, True, 100.0, 1),
            "probe_failed",
            131.0,
            Watch("cpu", "timeout", 0, 2, 191.0, False, 100.0, 1),
            "keep",
        ),
        (
            Watch("cpu", "timeout", 0, 3, 130.0, True, 100.0, 1),
            "probe_failed",
            131.0,
            Watch("cpu", "timeout", 0, 4, 371.0, False, 100.0, 1),
            "keep",
        ),  # capped
        (
            Watch("cpu", "timeout", 0, 2, 130.0, True, 100.0, 1),
            "probe_ok",
            131.0,
            Watch("tpu", None, 0, 2, None, False, 131.0, 1),
            "restore",
        ),
        (CPU, "probe_ok", 131.0, CPU, "keep"),  # a stale probe result without a probe running
        # back on the TPU: the backoff starts over only after it served stable_s
        (
            Watch("tpu", None, 0, 2, None, False, 131.0, 1),
            "ok",
            700.0,
            Watch("tpu", None, 0, 2, None, False, 131.0, 1),
            "keep",
        ),
        (
            Watch("tpu", None, 0, 2, None, False, 131.0, 1),
            "ok",
            731.0,
            Watch("tpu", None, 0, 0, None, False, 131.0, 1),
            "keep",
        ),
        (
            Watch("tpu", None, 0, 2, None, False, 131.0, 1),
            "timeout",
            140.0,
            Watch("cpu", "timeout", 0, 3, 260.0, False, 140.0, 2),
            "failover",
        ),
    ],
)
def test_watchdog_rules(before, event, now, after, action):
    assert step(before, event, now, P) == (after, action)


def test_backoff_doubles_up_to_its_cap():
    assert [backoff(n, P) for n in range(6)] == [30.0, 60.0, 120.0, 240.0, 240.0, 240.0]


@pytest.mark.parametrize(
    "text, want",
    [
        ("45250\n", 45.2),
        ("-87900\n", "invalid"),  # google-coral/edgetpu: a failed M.2 module reads -87.9 °C
        ("151000", "invalid"),
        ("-41000", "invalid"),
        ("", "invalid"),
        ("garbage", "invalid"),
        (None, None),  # no apex driver: no reading, not an invalid one
    ],
)
def test_an_implausible_tpu_temperature_is_reported_as_invalid_not_as_a_temperature(text, want):
    assert temperature(text) == want


def test_telemetry_carries_the_accelerator_and_keeps_what_it_does_not_know():
    t = Telemetry("dev1", 1, 10, 20, accelerator=Accelerator("cpu", "timeout", 2, "invalid"))
    doc = json.loads(t.to_bytes())
    doc["accelerator"]["usb_resets"] = 1
    back = parse_telemetry(json.dumps(doc).encode())
    assert back.accelerator == Accelerator("cpu", "timeout", 2, "invalid")
    assert back.accelerator.extra == {"usb_resets": 1}
    assert json.loads(back.to_bytes())["accelerator"]["usb_resets"] == 1
    assert parse_telemetry(Telemetry("dev1", 1, 10, 20).to_bytes()).accelerator is None


@pytest.mark.parametrize(
    "bad", [{"runtime": "gpu"}, {"runtime": "tpu", "temp_c": "hot"}, {"runtime": "tpu", "temp_c": True}]
)
def test_a_malformed_accelerator_is_refused_naming_the_field(bad):
    from protocol.errors import BadPayload

    doc = json.loads(Telemetry("dev1", 1, 10, 20).to_bytes())
    doc["accelerator"] = bad
    with pytest.raises(BadPayload, match="accelerator"):
        parse_telemetry(json.dumps(doc).encode())


# the I/O shell, in process, with the fake delegate -----------------------------------------------


@pytest.fixture
def slot(tmp_path, coral_models) -> tuple[Path, Path]:
    """An Edge TPU model and its CPU twin, as a slot holds them."""
    (tmp_path / "model_edgetpu.tflite").write_bytes((coral_models / MNV1_TPU).read_bytes())
    (tmp_path / "model_int8.tflite").write_bytes((coral_models / MNV1).read_bytes())
    return tmp_path / "model_edgetpu.tflite", tmp_path / "model_int8.tflite"


def _guard(slot, tmp_path, mode="ok", temp: str | None = None, **policy) -> tuple[GuardedBackend, FakeTpu, Path]:
    control = tmp_path / "tpu-mode"
    control.write_text(mode)
    fake = FakeTpu(control)
    temp_file = tmp_path / "temp"
    if temp is not None:
        temp_file.write_text(temp)
    conf = Settings(Policy(**{"timeout_s": 0.5, "backoff_s": 0.2, "backoff_max_s": 0.4, **policy}), fake, temp_file)
    return GuardedBackend(slot[0], slot[1], conf=conf), fake, control


def _inputs(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (1, 128, 128, 3), dtype=np.uint8) for _ in range(n)]


def _wait(pred, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_hung_tpu_invoke_is_answered_on_the_cpu_and_the_tpu_comes_back_after_a_retry(slot, tmp_path):
    g, fake, control = _guard(slot, tmp_path, temp="41000")
    cpu = LiteRTBackend(slot[1])
    xs = _inputs(4)
    try:
        assert np.array_equal(g.invoke_raw(xs[0]), cpu.invoke_raw(xs[0])) and g.name == "edgetpu"
        assert g.accelerator() == Accelerator("tpu", None, 0, 41.0)
        control.write_text("hang")
        out = g.invoke_raw(xs[1])  # hits the hang: answered on the CPU once the invoke timed out
        assert np.array_equal(out, cpu.invoke_raw(xs[1]))
        assert g.name == "cpu" and g.accelerator() == Accelerator("cpu", "timeout", 1, 41.0)
        before = fake.invokes
        assert np.array_equal(g.invoke_raw(xs[2]), cpu.invoke_raw(xs[2]))
        assert fake.invokes == before  # the next request does not wait for the TPU at all
        control.write_text("ok")  # "unplugged and plugged in again": the retry's probe passes
        _wait(lambda: g.name == "edgetpu", "the TPU retry")
        assert g.accelerator() == Accelerator("tpu", None, 1, 41.0)
        assert np.array_equal(g.invoke_raw(xs[3]), cpu.invoke_raw(xs[3])) and fake.invokes == before + 1
    finally:
        g.close()
        cpu.close()


def test_repeated_tpu_errors_fail_over_and_no_request_fails(slot, tmp_path):
    g, fake, control = _guard(slot, tmp_path, temp="-87900", backoff_s=3600.0, backoff_max_s=3600.0)
    cpu = LiteRTBackend(slot[1])
    try:
        control.write_text("error")
        for i, x in enumerate(_inputs(5)):
            assert np.array_equal(g.invoke_raw(x), cpu.invoke_raw(x)), i  # each one answered on the CPU
            assert g.name == ("edgetpu" if i < 2 else "cpu"), i
        assert fake.invokes == 3  # after the third error in a row the TPU is left alone
        assert g.accelerator() == Accelerator("cpu", "errors", 1, "invalid")
    finally:
        g.close()
        cpu.close()


def test_a_tpu_retry_that_fails_backs_off_and_keeps_serving_on_the_cpu(slot, tmp_path):
    g, fake, control = _guard(slot, tmp_path, backoff_s=0.1, backoff_max_s=0.2)
    try:
        control.write_text("hang")
        g.invoke_raw(_inputs(1)[0])
        control.write_text("absent")  # the retry's probe finds no TPU: it tries again later
        _wait(lambda: g._w.level >= 3, "two failed retries")
        assert g.name == "cpu" and g.accelerator().reason == "timeout"
        control.write_text("ok")
        _wait(lambda: g.name == "edgetpu", "the TPU retry")
    finally:
        g.close()


def test_an_edge_tpu_that_does_not_load_at_start_serves_on_the_cpu(slot, tmp_path):
    g, fake, _ = _guard(slot, tmp_path, mode="absent", backoff_s=3600.0, backoff_max_s=3600.0)
    try:
        assert g.name == "cpu" and g.accelerator() == Accelerator("cpu", "load_failed", 1, None)
        assert g.invoke_raw(_inputs(1)[0]).shape == (1, 1001)
    finally:
        g.close()


def test_without_a_cpu_twin_a_hung_tpu_fails_the_request_naming_why(slot, tmp_path):
    control = tmp_path / "tpu-mode"
    control.write_text("hang")
    conf = Settings(Policy(timeout_s=0.3, backoff_s=3600.0, backoff_max_s=3600.0), FakeTpu(control), tmp_path / "t")
    fake = FakeTpu(control)
    control.write_text("ok")
    g = GuardedBackend(slot[0], None, conf=Settings(conf.policy, _TwinFromPath(fake, slot[1]), conf.temp_path))
    try:
        control.write_text("hang")
        with pytest.raises(ModelError, match="no CPU model to fall back to"):
            g.invoke_raw(_inputs(1)[0])
    finally:
        control.write_text("ok")
        g.close()


class _TwinFromPath:
    """The fake driver for a bundle without a twin: it still needs a CPU model to wrap."""

    def __init__(self, fake: FakeTpu, cpu: Path) -> None:
        self.fake, self.cpu = fake, cpu

    def open(self, path, cpu_path, threads, feed):
        return self.fake.open(path, self.cpu, threads, feed)

    def probe(self):
        return self.fake.probe()


def test_concurrent_requests_during_a_hang_all_get_answers(slot, tmp_path):
    g, fake, control = _guard(slot, tmp_path, backoff_s=3600.0, backoff_max_s=3600.0)
    cpu = LiteRTBackend(slot[1])
    xs = _inputs(8)
    want = [cpu.invoke_raw(x) for x in xs]
    lock = threading.Lock()  # one interpreter is not thread-safe: agent.runtime.Model serializes like this
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def client(i: int) -> None:
        for _ in range(5):
            try:
                with lock:
                    out = g.invoke_raw(xs[i])
                got[i] = out
                assert np.array_equal(out, want[i])
            except BaseException as exc:  # collected: the test fails on any
                errors.append(exc)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads[:4]:
            t.start()
        control.write_text("hang")
        for t in threads[4:]:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(got) == 8
        assert g.accelerator().runtime == "cpu" and g.accelerator().reason == "timeout"
    finally:
        control.write_text("ok")
        g.close()
        cpu.close()


def test_the_edge_tpu_driver_hook_names_a_spec_that_does_not_load(tmp_path):
    from agent import watchdog
    from agent.errors import ConfigError

    from .test_budget import _config

    cfg = _config(tmp_path, "tpu_invoke_timeout_s = 0.5\n", {"EDGEFLEET_AGENT_EDGETPU_DRIVER": "tests.agent.nope:X"})
    with pytest.raises(ConfigError, match="tests.agent.nope:X"):
        watchdog.settings_for(cfg)
    s = watchdog.settings_for(_config(tmp_path, "tpu_invoke_timeout_s = 0.5\ntpu_retry_s = 10\n"))
    assert isinstance(s.driver, watchdog.LibEdgeTpu) and s.policy.timeout_s == 0.5 and s.policy.backoff_s == 10
