"""The fallback bench's serving peers (bench/peers/): each peer's script starts in its own venv
and answers the seed's multipart upload with the logits onnxruntime gives directly for the same
image. Skipped, naming the venv, when the peer's venv has not been built (`make test` never
builds one: ``python -m bench fallback --peers NAME`` does)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from bench import peers
from bench.fallback import free_port, multipart


@pytest.fixture(scope="module")
def model_and_image(tmp_path_factory):
    """A tiny NCHW 224x224 RGB classifier (per-channel means times a 3x10 matrix) and a PNG."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(7).normal(size=(3, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["means"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["means", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("peer") / "tiny.onnx"
    onnx.save(m, str(path))
    px = np.zeros((100, 60, 3), np.uint8)
    px[..., 0], px[:50, :, 1], px[:, 30:, 2] = 230, 40, 120
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return path, buf.getvalue()


def expected_logits(path, png: bytes) -> np.ndarray:
    import onnxruntime as ort

    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((224, 224)), dtype=np.float32)
    x = (arr.transpose(2, 0, 1) / np.float32(255.0))[None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"image": x})[0][0])


def logits_of(answer: object) -> np.ndarray:
    """The one logits row of a peer's answer: {"predictions": [[...]]}, or a batchable API's
    one-element list of that."""
    if isinstance(answer, list):
        assert len(answer) == 1, f"expected one answer for one image, got {len(answer)}"
        answer = answer[0]
    assert isinstance(answer, dict) and "predictions" in answer, f"unexpected answer {str(answer)[:200]}"
    rows = np.asarray(answer["predictions"], dtype=np.float32)
    assert rows.shape == (1, 10), rows.shape
    return rows[0]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(peers.PEERS))
def test_peer_answers_the_seed_upload_with_onnxruntimes_logits(name, model_and_image, tmp_path):
    import httpx

    peer = peers.PEERS[name]
    version = peers.installed_version(peer)
    if version is None:
        pytest.skip(f"no venv for {name} at {peer.venv()}: python -m bench fallback --peers {name} builds it")
    assert version == peer.version, f"{peer.venv()} has {name} {version}, the bench pins {peer.version}"
    path, png = model_and_image
    body, ctype = multipart(png, "upload.png")
    port = free_port()
    log = tmp_path / f"{name}.log"
    proc = peers.start(peer, path, port, max_batch=4, workers=1, log=log)
    try:
        deadline, last = time.monotonic() + 240, "no answer"
        while True:
            assert proc.poll() is None, f"{name} exited {proc.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{name} not ready in 240 s ({last}): {log.read_text()[-2000:]}"
            try:
                r = httpx.post(f"http://127.0.0.1:{port}/predict", content=body, headers={"content-type": ctype})
                if r.status_code == 200:
                    break
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        got, want = logits_of(r.json()), expected_logits(path, png)
        assert int(np.argmax(got)) == int(np.argmax(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    finally:
        peers.stop(proc)


def test_peer_selection_refuses_an_unknown_name():
    assert [p.name for p in peers.select("all")] == ["bentoml", "litserve", "mosec"]
    assert peers.select("none") == []
    assert [p.name for p in peers.select("mosec, bentoml")] == ["mosec", "bentoml"]
    with pytest.raises(ValueError, match="unknown peer.*triton"):
        peers.select("bentoml,triton")
