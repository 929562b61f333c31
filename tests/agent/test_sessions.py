"""Per-session state (agent/sessions.py): the rules as table tests on a fake clock, then the
traffic detector's LSTM state carried per X-Session-Id through the local API: two sessions
interleaved answer exactly as each run alone, a continued session differs from a reset one, and
every way of asking wrongly is a 422 naming what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import InputError, UnknownSession
from agent.sessions import Sessions, carry, check_id, initial, state_pairs
from protocol.signature import Quantization, Signature, TensorSpec
from tests.coral_imports import CASES, imported

from .test_tasks import ask, local_api

Q_IN, Q_OUT = Quantization(0.5, 10), Quantization(0.25, 0)
STATE_IN = TensorSpec("c_in", "uint8", (1, 2), "state", Q_IN)
STATE_OUT = TensorSpec("c_out", "uint8", (1, 2), "state", Q_OUT)
SIG = Signature(
    "detection",
    (TensorSpec("image", "uint8", (1, 2, 2, 3), "image"), STATE_IN),
    (TensorSpec("boxes", "float32", (1, 1, 4), "boxes"), STATE_OUT),
    stateful=True,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _state(v: int) -> tuple[np.ndarray, ...]:
    return (np.full((1, 2), v, np.uint8),)


def test_a_session_starts_only_with_a_reset_and_continues_from_what_its_last_request_left():
    s = Sessions(4, 60, Clock())
    with pytest.raises(UnknownSession, match="session 'a' is not held here .* send X-Session-Reset: true"):
        s.checkout("a", False, _state(0))
    a = s.checkout("a", True, _state(0))
    assert a.state[0].tolist() == [[0, 0]]
    assert s.checkin(a, _state(7)) == 1
    a = s.checkout("a", False, _state(0))
    assert a.state[0].tolist() == [[7, 7]] and s.checkin(a, _state(8)) == 2
    a = s.checkout("a", True, _state(0))  # a reset restarts it
    assert a.state[0].tolist() == [[0, 0]] and s.checkin(a, _state(1)) == 1


def test_a_failed_request_leaves_the_session_as_it_was():
    s = Sessions(4, 60, Clock())
    s.checkin(s.checkout("a", True, _state(0)), _state(5))
    s.abandon(s.checkout("a", False, _state(0)))
    a = s.checkout("a", False, _state(0))
    assert a.state[0].tolist() == [[5, 5]] and a.step == 1


def test_the_least_recently_used_session_is_evicted_past_the_bound_and_then_unknown():
    s = Sessions(2, 60, Clock())
    for sid in ("a", "b"):
        s.checkin(s.checkout(sid, True, _state(0)), _state(1))
    s.checkin(s.checkout("a", False, _state(0)), _state(2))  # a is now the more recent
    s.checkin(s.checkout("c", True, _state(0)), _state(3))
    assert len(s) == 2 and s.evicted == 1
    with pytest.raises(UnknownSession):
        s.checkout("b", False, _state(0))
    assert s.checkout("a", False, _state(0)).state[0].tolist() == [[2, 2]]


def test_a_session_unused_for_the_idle_timeout_is_dropped():
    clock = Clock()
    s = Sessions(4, 60, clock)
    s.checkin(s.checkout("old", True, _state(0)), _state(1))
    clock.now += 30
    s.checkin(s.checkout("new", True, _state(0)), _state(1))
    clock.now += 31  # old: 61 s unused, new: 31 s
    s.checkin(s.checkout("new", False, _state(0)), _state(2))
    assert s.expired == 1
    with pytest.raises(UnknownSession, match="unused for 60 s"):
        s.checkout("old", False, _state(0))


def test_a_model_swap_drops_every_session():
    s = Sessions(4, 60, Clock())
    s.checkin(s.checkout("a", True, _state(0)), _state(1))
    s.clear()
    with pytest.raises(UnknownSession):
        s.checkout("a", False, _state(0))


def test_state_outputs_pair_with_state_inputs_and_are_requantized_into_them():
    ((i, o),) = state_pairs(SIG)
    assert (i.name, o.name) == ("c_in", "c_out")
    assert initial(state_pairs(SIG))[0].tolist() == [[10, 10]]  # 0.0 is the input's zero point
    # 2.0 = 0.25 * 8 on the output side = 0.5 * (14 - 10) on the input side
    assert carry(STATE_OUT, STATE_IN, np.array([[8, 0]], np.uint8)).tolist() == [[14, 10]]
    same = np.array([[3, 4]], np.uint8)
    assert carry(STATE_IN, STATE_IN, same) is not None and carry(STATE_IN, STATE_IN, same).tolist() == [[3, 4]]
    bad = Signature("detection", SIG.inputs, (SIG.outputs[0],), stateful=True)
    with pytest.raises(ValueError, match="1 state inputs but 0 state outputs"):
        state_pairs(bad)


@pytest.mark.parametrize("sid", ["", " a", "x" * 129, "a\nb"])
def test_a_session_id_must_be_short_printable_text(sid):
    with pytest.raises(InputError, match="X-Session-Id"):
        check_id(sid)


# the real detector ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic(coral_models: Path) -> Path:
    return imported("traffic", coral_models)


def _frames(coral: Path) -> list[bytes]:
    return [(coral / f).read_bytes() for f in ("traffic_0001.bmp", "traffic_0002.bmp", "traffic_0001.bmp")]


def _run(api: Any, frames: list[bytes], sid: str) -> list[Any]:
    out = []
    for n, frame in enumerate(frames):
        headers = {"X-Session-Id": sid, **({"X-Session-Reset": "true"} if n == 0 else {})}
        code, doc = api.image(frame, "score_threshold=0", headers)
        assert code == 200, doc
        assert doc["state"] == "session" and doc["session"] == {"id": sid, "step": n + 1}
        out.append(doc["detections"])
    return out


@pytest.mark.slow
def test_two_sessions_interleaved_answer_as_each_run_alone_and_state_is_carried(
    traffic: Path, coral_models: Path
) -> None:
    frames = _frames(coral_models)
    with local_api(traffic) as api:
        alone = _run(api, frames, "alone")
        # interleaved: a and b take turns; each must see only its own history
        a: list[Any] = []
        b: list[Any] = []
        for n, frame in enumerate(frames):
            for sid, got in (("a", a), ("b", b)):
                headers = {"X-Session-Id": sid, **({"X-Session-Reset": "true"} if n == 0 else {})}
                code, doc = api.image(frame, "score_threshold=0", headers)
                assert code == 200, doc
                got.append(doc["detections"])
            # a request without a session in between changes neither
            assert api.image(frames[1], "score_threshold=0")[1]["state"] == "reset"
        fresh = ask(api, coral_models, CASES["traffic"], traffic, "score_threshold=0")
    assert a == alone and b == alone
    assert alone[0] == fresh["detections"]  # a session's first request is answered from the initial state


@pytest.mark.slow
def test_a_session_s_state_is_fed_back_to_its_own_requests_only(traffic: Path, coral_models: Path) -> None:
    """traffic_model's LSTM writes an all-zero state on every input tried here (LiteRT on the CPU,
    with and without XNNPACK), so carrying it changes no answer; a state it does read changes
    them (a random state moves boxes by up to 0.97 of the image). So: plant such a state in one
    session and check that exactly it reaches the model, for that session only."""
    frame = _frames(coral_models)[0]
    state = np.random.default_rng(7).integers(0, 256, (1, 8, 8, 320), dtype=np.uint8)
    want = _litert_with_state(_tflite(traffic), frame, state)
    with local_api(traffic) as api:
        for sid in ("planted", "other"):
            assert api.image(frame, "", {"X-Session-Id": sid, "X-Session-Reset": "true"})[0] == 200
        api.serving.sessions._held["planted"].state = (state, state)  # as if the LSTM had written it
        code, planted = api.image(frame, "score_threshold=0", {"X-Session-Id": "planted"})
        code2, other = api.image(frame, "score_threshold=0", {"X-Session-Id": "other"})
        reset = api.image(frame, "score_threshold=0")[1]
    assert code == code2 == 200 and planted["session"]["step"] == 2
    assert [d["score"] for d in planted["detections"]] == pytest.approx(want["scores"])
    assert planted["detections"][0]["box_normalized"] == pytest.approx(want["box0"], abs=1e-6)
    assert other["detections"] == reset["detections"] != planted["detections"]


def _tflite(bundle: Path) -> Path:
    (path,) = [p for p in bundle.iterdir() if p.suffix == ".tflite"]
    return path


def _litert_with_state(model: Path, frame: bytes, state: np.ndarray) -> dict[str, Any]:
    """The detector run directly with ``state`` as both LSTM inputs, on the image as the agent decodes it."""
    import io

    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    px = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC))
    it = Interpreter(model_path=str(model))
    it.allocate_tensors()
    image, c, h = it.get_input_details()
    it.set_tensor(image["index"], px[None].astype(np.uint8))
    it.set_tensor(c["index"], state)
    it.set_tensor(h["index"], state)
    it.invoke()
    boxes, _, scores, count, *_ = (np.array(it.get_tensor(o["index"])) for o in it.get_output_details())
    n = int(count[0])
    order = sorted(range(n), key=lambda i: (-scores[0, i], i))
    ymin, xmin, ymax, xmax = np.clip(boxes[0, order[0]], 0, 1)
    return {
        "scores": [float(scores[0, i]) for i in order],
        "box0": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
    }


@pytest.mark.slow
def test_asking_for_a_session_wrongly_is_a_422_that_says_what_is_wrong(
    traffic: Path, coral_models: Path, tmp_path: Path
) -> None:
    frame = _frames(coral_models)[0]
    with local_api(traffic) as api:
        code, doc = api.image(frame, "", {"X-Session-Id": "never-started"})
        assert code == 422 and "session 'never-started' is not held here" in doc["detail"], doc
        code, doc = api.image(frame, "", {"X-Session-Reset": "true"})
        assert code == 422 and "X-Session-Reset without X-Session-Id" in doc["detail"], doc
        code, doc = api.image(frame, "", {"X-Session-Id": "s", "X-Session-Reset": "maybe"})
        assert code == 422 and "X-Session-Reset 'maybe' must be true or false" in doc["detail"], doc
        code, doc = api.image(frame, "score_threshold=2")
        assert code == 422 and "score_threshold='2': must be a number in [0, 1]" in doc["detail"], doc
        code, doc = api.image(frame, "top_k=3")
        assert code == 422 and "top_k=3: applies to classification, this model is detection" in doc["detail"], doc
        code, doc = api.image(frame, "max_detections=41")
        assert code == 422 and "must be in 1..40 (the model gives 40 boxes)" in doc["detail"], doc
        code, doc = api.image(b"GIF89a not really")
        assert code == 422 and "not a readable image" in doc["detail"], doc
        # none of them started or advanced a session
        code, doc = api.image(frame, "", {"X-Session-Id": "s"})
        assert code == 422 and "not held here" in doc["detail"]


@pytest.mark.slow
def test_a_model_that_keeps_its_state_inside_refuses_a_session_and_says_it_resets(coral_models: Path) -> None:
    """keras_lstm_mnist_ptq keeps its LSTM state in variable tensors: nothing the agent can hand
    back per session; without a session its answer says the state was reset."""
    lstm = imported("lstm", coral_models)
    nine = np.zeros((1, 28, 28), np.uint8)
    with local_api(lstm) as api:
        code, doc = api.tensor(nine, "", {"X-Session-Id": "s", "X-Session-Reset": "true"})
        assert code == 422 and "keeps its state inside the model (variable tensors)" in doc["detail"], doc
        code, doc = api.tensor(nine)
        assert code == 200 and doc["state"] == "reset"
