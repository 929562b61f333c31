"""Serving decisions with real LiteRT models: probation rollback signal, request parsing, model
switches under load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.errors import InputError, ModelError, Unavailable
from agent.runtime import LiteRTBackend, Model
from agent.serve import Answer, Request, Serving, parse_request
from agent.telemetry import Recorder
from protocol.messages import BundleInfo

from .bundles import MNV1, MNV1_TPU


class FailingAfter(LiteRTBackend):
    """A real MobileNet whose invokes start failing: the failure mode a self-test cannot see."""

    def __init__(self, path, ok_calls: int) -> None:
        super().__init__(path)
        self.ok_calls = ok_calls

    def invoke_raw(self, x: np.ndarray) -> np.ndarray:
        self.ok_calls -= 1
        if self.ok_calls < 0:
            raise ModelError("invoke failed: device lost")
        return super().invoke_raw(x)


def _model(backend) -> Model:
    return Model(
        backend,
        BundleInfo("a" * 64, "mnv1", "1"),
        {"kind": "image", "height": 128, "width": 128, "channels": 3, "scale": 1 / 128, "offset": -1.0},
        labels=[f"c{i}" for i in range(1001)],
    )


def test_errors_during_probation_ask_for_a_rollback_once(coral_models):
    calls = []
    s = Serving(Recorder(), None, None, lambda digest, why: calls.append((digest, why)))
    s.swap(_model(FailingAfter(coral_models / MNV1, ok_calls=2)), probation=(10, 3))
    img = (coral_models / "cat_720p.jpg").read_bytes()
    results = []
    for _ in range(6):
        try:
            results.append(s.predict(Request(image=img))["served_by"])
        except Unavailable:
            results.append("unavailable")
    assert results == ["cpu", "cpu", "unavailable", "unavailable", "unavailable", "unavailable"]
    assert len(calls) == 1 and calls[0][0] == "a" * 64 and "3 of the first 5" in calls[0][1]


def test_a_model_that_keeps_working_passes_probation(coral_models):
    calls = []
    s = Serving(Recorder(), None, None, lambda d, w: calls.append(d))
    s.swap(_model(LiteRTBackend(coral_models / MNV1)), probation=(3, 1))
    img = (coral_models / "cat_720p.jpg").read_bytes()
    for _ in range(5):
        assert s.predict(Request(image=img))["served_by"] == "cpu"
    assert calls == []


def test_the_next_request_is_routed_knowing_the_last_latency_before_its_bookkeeping_runs(coral_models):
    """The HTTP handler settles an answer's bookkeeping after sending it, so the app's next
    request can arrive first: it must still see the local path over budget (CI once saw it go
    local again)."""
    from agent.serve import CloudClient

    down = CloudClient("http://127.0.0.1:9", None, timeout=2.0)  # port 9 (discard): refused at once
    s = Serving(Recorder(), down, 0.000001, lambda d, w: None)
    s.swap(_model(LiteRTBackend(coral_models / MNV1)))
    img = (coral_models / "cat_720p.jpg").read_bytes()
    first = s.respond(Request(image=img))  # answered locally; its bookkeeping not yet run
    assert first.fields["served_by"] == "cpu"
    with pytest.raises(Unavailable, match="local latency over budget"):
        s.respond(Request(image=img))  # over budget -> the cloud, which is down here
    first.settle()


def test_edgetpu_model_is_never_given_to_the_cpu_interpreter(coral_models):
    with pytest.raises(ModelError, match="compiled for the Edge TPU"):
        LiteRTBackend(coral_models / MNV1_TPU)


def test_tensor_input_is_quantized_with_the_tensor_scale_and_zero_point(coral_models):
    m = _model(LiteRTBackend(coral_models / MNV1))
    x = m.tensor_to_input(np.full((1, 128, 128, 3), -1.0).tolist())
    raw = m.quantize(x)
    assert raw.dtype == np.uint8 and int(raw.min()) == 0  # -1.0 / 0.0078125 + 128 = 0
    assert m.quantize(np.full((1, 128, 128, 3), 5.0)).max() == 255  # clipped, not wrapped
    with pytest.raises(InputError, match="needs 49152"):
        m.tensor_to_input([1.0, 2.0])


def test_multipart_json_and_raw_image_bodies_parse():
    r = parse_request(
        "multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="c.jpg"\r\n\r\nJPEG\r\n--b--\r\n',
    )
    assert r.image == b"JPEG" and r.filename == "c.jpg"
    assert parse_request("application/json", b'{"inputs": [[1]]}').inputs == [[1]]
    assert parse_request("image/jpeg", b"raw").image == b"raw"
    with pytest.raises(InputError, match="unsupported Content-Type"):
        parse_request("text/csv", b"a,b")


def test_binary_uint8_tensor_is_fed_raw_and_float32_is_quantized(coral_models):
    from PIL import Image

    s = Serving(Recorder(), None, None, lambda d, w: None)
    s.swap(_model(LiteRTBackend(coral_models / MNV1)))
    img = Image.open(coral_models / "cat_720p.jpg").convert("RGB").resize((128, 128), Image.Resampling.BILINEAR)
    px = np.asarray(img, dtype=np.uint8)[None]
    raw = s.predict(parse_request("application/octet-stream", px.tobytes(), "1,128,128,3", "uint8"))
    flt = s.predict(
        parse_request("application/octet-stream", (px.astype(np.float32) / 128 - 1).tobytes(), "1,128,128,3", None)
    )
    assert raw["top"][0]["index"] == flt["top"][0]["index"] == 283  # 283 = "tiger cat" (Coral README)
    assert np.allclose(raw["predictions"], flt["predictions"])


@pytest.mark.parametrize(
    "shape, dtype, body, needle",
    [
        ("1,two", "uint8", b"\0\0", "comma-separated"),
        ("1,4", "float64", b"\0" * 32, "must be one of"),
        ("1,4", "float32", b"\0" * 15, "needs 16"),
        ("0,4", "uint8", b"", "needs 0"),
    ],
)
def test_bad_binary_tensor_is_refused_with_the_reason(shape, dtype, body, needle):
    with pytest.raises(InputError, match=needle):
        parse_request("application/octet-stream", body, shape, dtype)


def test_a_model_switch_closes_the_window_so_no_window_mixes_two_models():
    from agent.telemetry import Recorder

    r = Recorder()
    r.set_bundle("a" * 64, None, {})
    r.record("cpu", 0.010, True)
    r.record("cpu", 0.012, True)
    r.set_bundle("b" * 64, None, {})
    r.record("cpu", 0.100, True)
    windows = r.rotate()
    assert [(w["bundle"], w["counts"]["inferences"]) for w in windows] == [("a" * 64, 2), ("b" * 64, 1)]
    assert "end" in windows[0] and windows[0]["latency"]["n"] == 2
    assert [w["counts"]["inferences"] for w in r.rotate()] == [0]


def test_switching_with_an_empty_window_closes_nothing():
    from agent.telemetry import Recorder

    r = Recorder()
    r.set_bundle("a" * 64, None, {})
    r.set_bundle("b" * 64, None, {})
    assert [w["bundle"] for w in r.rotate()] == ["b" * 64]


def test_answer_body_reads_back_as_its_document_in_float32(coral_models):
    """The body is written by orjson: every score reads back to the exact float32 served."""
    m = _model(LiteRTBackend(coral_models / MNV1))
    s = Serving(Recorder(), None, None, lambda d, w: None)
    s.swap(m)
    answer = s.answer(Request(image=(coral_models / "cat_720p.jpg").read_bytes()))
    got, want = json.loads(answer.body()), answer.doc()
    assert list(got) == ["predictions", "task", "top", "served_by", "bundle", "latency_ms"]
    assert np.array_equal(np.asarray(got["predictions"], np.float32), answer.scores[None])  # [N, K], one row
    assert {k: v for k, v in got.items() if k != "predictions"} == {k: v for k, v in want.items() if k != "predictions"}
    assert got["top"][0]["index"] == int(np.argmax(answer.scores))
    odd = np.array([[np.nan, 0.1, np.inf]], np.float32)[:, ::2]  # not contiguous: orjson hands it back
    assert json.loads(Answer(None, {"predictions": odd, "top": [], "n": np.int64(3)}).body()) == {
        "predictions": [[None, None]],
        "top": [],
        "n": 3,
    }


def test_table_dequantize_gives_the_arithmetic_float32_values(coral_models):
    m = _model(LiteRTBackend(coral_models / MNV1))
    scale, zp = m.backend.output_quant
    for dtype in (np.uint8, np.int8, np.uint8):  # switching dtypes rebuilds the table
        raw = np.arange(256, dtype=np.uint8).view(dtype).reshape(1, 256)
        got = m.dequantize(raw)
        want = (raw.astype(np.float32) - zp) * scale
        assert got.dtype == np.float32 and got.shape == raw.shape and np.array_equal(got, want)
    assert np.array_equal(m.dequantize(np.array([0.5, -1.0], np.float32)), [0.5, -1.0])


def _post_twice(port: int, body: bytes) -> list[tuple[int, dict]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(2):  # the same keep-alive connection
        conn.request("POST", "/v1/predict", body, {"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        out.append((resp.status, json.loads(resp.read())))
    conn.close()
    return out


def _served(serving: Serving):
    import threading

    from agent.localapi import make_server

    srv = make_server("127.0.0.1", 0, serving, lambda: {})
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _two_answers(recorder: Recorder, coral_models) -> list[tuple[int, dict]]:
    """Two image requests on one connection to a real local API server around ``recorder``."""
    s = Serving(recorder, None, None, lambda d, w: None)
    s.swap(_model(LiteRTBackend(coral_models / MNV1)))
    srv = _served(s)
    try:
        return _post_twice(srv.server_address[1], (coral_models / "cat_720p.jpg").read_bytes())
    finally:
        srv.shutdown()
        srv.server_close()


def test_bookkeeping_runs_after_the_answer_and_is_counted(coral_models):
    rec = Recorder()
    answers = _two_answers(rec, coral_models)
    assert [code for code, _ in answers] == [200, 200]
    import time

    windows, deadline = [], time.monotonic() + 10
    while sum(w["counts"]["inferences"] for w in windows) < 2 and time.monotonic() < deadline:
        windows += rec.rotate()  # the second answer's bookkeeping may still be running
        time.sleep(0.01)
    assert sum(w["counts"]["inferences"] for w in windows) == 2
    assert sum(w["counts"]["cpu"] for w in windows) == 2 and sum(w["latency"]["n"] for w in windows) == 2


def test_a_failing_bookkeeping_step_does_not_cost_the_answer_or_the_connection(coral_models, caplog):
    class Broken(Recorder):
        def record(self, *args, **kwargs):
            if args[2]:  # successful requests only: their bookkeeping runs after the answer
                raise RuntimeError("telemetry store broke")
            super().record(*args, **kwargs)

    answers = _two_answers(Broken(), coral_models)
    assert [code for code, _ in answers] == [200, 200]
    assert answers[0][1]["top"] == answers[1][1]["top"]
    assert "bookkeeping after a prediction failed" in caplog.text


def _mnv1(coral_models, digest_char: str) -> Model:
    m = _model(LiteRTBackend(coral_models / MNV1))
    m.info = BundleInfo(digest_char * 64, "mnv1", digest_char)
    return m


def test_a_request_that_picked_the_old_model_completes_on_it_after_the_switch(coral_models):
    """The updater swaps a new model in and closes the old one while a request holds the old
    one (here: waiting for the interpreter another request is using). The request must finish
    on the old interpreter, which is closed only when its last user lets it go."""
    import threading

    rec = Recorder()
    s = Serving(rec, None, None, lambda d, w: None)
    old = _mnv1(coral_models, "a")
    s.swap(old)
    body = np.zeros((1, 128, 128, 3), np.uint8).tobytes()
    req = parse_request("application/octet-stream", body, "1,128,128,3", "uint8")
    out: list[object] = []
    with old._lock:  # another request is running on the old interpreter
        t = threading.Thread(target=lambda: out.append(_try(s.predict, req)))
        t.start()
        assert rec.invoking.wait(10)  # the request holds the old model and waits for the interpreter
        replaced = s.swap(_mnv1(coral_models, "b"))
        assert replaced is old
        replaced.close()  # what the updater does right after the swap
    t.join(10)
    assert len(out) == 1 and isinstance(out[0], dict), out
    assert out[0]["bundle"]["digest"] == "a" * 64 and out[0]["served_by"] == "cpu"
    assert s.predict(req)["bundle"]["digest"] == "b" * 64
    with pytest.raises(ModelError, match="closed"):  # nobody holds it any more: it is closed now
        old.invoke_raw(np.zeros((1, 128, 128, 3), np.uint8))


def _try(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # the test reports what a request got instead of an answer
        return exc


def switch_under_load(coral_models, switches: int = 100, clients: int = 4) -> tuple[int, list[str]]:
    """Clients keep the real local API busy (keep-alive connections, tensors and JPEGs) while
    the active model is switched ``switches`` times the way the updater does it: load the new
    model, swap it in, close the old one; at least 3 requests meet every switch. Returns
    (requests answered, what each failed request got). Used by the reliability suite too."""
    import http.client
    import threading
    import time

    s = Serving(Recorder(), None, None, lambda d, w: None)
    s.swap(_mnv1(coral_models, "0"))
    srv = _served(s)
    port = srv.server_address[1]
    tensor = np.zeros((1, 128, 128, 3), np.uint8).tobytes()
    jpeg = (coral_models / "cat_720p.jpg").read_bytes()
    stop = threading.Event()
    codes: list[int] = []
    failures: list[str] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while not stop.is_set():
            if (n + i) % 4:
                conn.request(
                    "POST",
                    "/v1/predict",
                    tensor,
                    {
                        "Content-Type": "application/octet-stream",
                        "X-Tensor-Shape": "1,128,128,3",
                        "X-Tensor-Dtype": "uint8",
                    },
                )
            else:
                conn.request("POST", "/v1/predict", jpeg, {"Content-Type": "image/jpeg"})
            resp = conn.getresponse()
            data = resp.read()
            codes.append(resp.status)
            if resp.status != 200:
                failures.append(f"{resp.status} {data[:200]!r}")
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    try:
        for k in range(switches):
            new = _mnv1(coral_models, "ab"[k % 2])
            seen, deadline = len(codes), time.monotonic() + 10
            while len(codes) < seen + 3 and time.monotonic() < deadline:  # requests meet every switch
                time.sleep(0.0005)
            old = s.swap(new)
            assert old is not None
            old.close()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        srv.shutdown()
        srv.server_close()
    return len(codes), failures


def test_zero_failed_requests_while_the_model_is_switched_a_hundred_times(coral_models):
    """Every request gets a 200 from one of the models while the model is switched 100 times."""
    answered, failures = switch_under_load(coral_models, 100)
    assert failures == [], f"{len(failures)} of {answered} requests failed: {failures[:3]}"
    assert answered >= 300


class _CloudThatMustNotBeAsked:
    """The cloud fallback's client: asked without a model name, the cloud answers with its default model."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def predict(self, req, model_name):
        self.asked.append(model_name)
        return {"predictions": [[1.0]], "top": [{"label": "the default channel's answer"}]}


def test_a_channel_with_no_model_yet_refuses_instead_of_the_cloud_answering_with_another_channels_model():
    cloud = _CloudThatMustNotBeAsked()
    detector = Serving(Recorder(), cloud, None, lambda d, w: None, channel="detector")  # type: ignore[arg-type]
    with pytest.raises(Unavailable, match="channel 'detector' has no model yet"):
        detector.respond(parse_request("image/jpeg", b"\xff\xd8\xff jpeg"))
    assert cloud.asked == []
    default = Serving(Recorder(), cloud, None, lambda d, w: None)  # type: ignore[arg-type]
    default.respond(parse_request("image/jpeg", b"\xff\xd8\xff jpeg"))  # the cloud's default model is this one's
    assert cloud.asked == [None]


def test_a_request_without_query_or_session_is_what_the_full_parse_gives():
    """parse_request's shortcut for the usual request (no query string, no session headers)
    returns the Request that parsing an empty query and no session would build."""
    body = b'{"inputs": [[1]]}'
    quick = parse_request("application/json", body)
    full = parse_request("application/json", body, reset="false")  # a header forces the full parse
    assert quick == full
    assert (quick.query, quick.session, quick.reset) == ({}, None, False)
