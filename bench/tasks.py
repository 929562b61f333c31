"""`python -m bench tasks [--rounds N]`: the per-task answers (issue 12 part 2) on the real Coral
models, one per task: MobileNetV2 (classification), traffic_model (detection), deeplabv3
(segmentation), MoveNet (keypoints), the MobileNet v1 embedding extractor (embedding).

Per model:

* **overhead** - ``POST /v1/predict`` on the agent's local API (``agent.localapi`` over
  ``agent.serve``, served from this process on loopback; one keep-alive raw-socket client; the
  model's test image as BMP) against a bare LiteRT ``invoke()`` with the input already set (same
  model file, same thread count), in **paired rounds** like ``bench/agent.py``: each round times
  one bare invoke and one request back to back; the figure is the median over rounds of
  ``request / bare - 1`` with a 95 % bootstrap interval. It includes HTTP, image decode and
  resize, the invoke, building the task's answer and writing JSON.
* **answer bytes** - the JSON answer's size with the default parameters (and segmentation's
  with ``mask=png``).
* **agreement** - the same image through the cloud fallback (``cloud.api`` on the bundle's ONNX
  twin, in-process through Starlette's TestClient) against the agent's answer, by the task's
  measure: top-1 equal, detections matched, share of pixels of the same class, mean keypoint
  distance (fraction of the image), embedding cosine. A model whose twin was withheld has none.

The agent runs in the same process as the client (the GIL is shared), so the overhead is an
upper bound of what a separate agent process adds; ``bench/agent.py`` measures that for
MobileNetV2.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.agent import CACHE, CORAL, RawClient, overhead

REPO = Path(__file__).resolve().parent.parent
MODELS = {  # key: (file, image, labels, calibrate)
    "classification": ("mobilenet_v2_1.0_224_quant.tflite", "grace_hopper.bmp", "imagenet_labels.txt", False),
    "detection": ("traffic_model.tflite", "traffic_0001.bmp", "traffic_label_map.pbtxt", False),
    "segmentation": ("deeplabv3_mnv2_dm05_pascal_quant.tflite", "bird_segmentation.bmp", "voc21", False),
    "keypoints": ("movenet_single_pose_lightning_ptq.tflite", "squat.bmp", None, True),
    "embedding": ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", "grace_hopper.bmp", None, False),
}


def _bundle(task: str) -> Path:
    """The model imported with ``edgefleet-compile import`` (ONNX twin included), cached."""
    model, image, labels, calibrate = MODELS[task]
    out = CACHE / f"tasks-{task}"
    if (out / "manifest.json").exists():
        return out
    argv = [sys.executable, "-m", "compiler", "import", str(CORAL / model), "--name", task]
    work = CACHE / f"tasks-{task}-inputs"
    work.mkdir(parents=True, exist_ok=True)
    if labels == "voc21":  # the file's 21 classes; its last lines are a note on label 255
        path = work / "voc21.txt"
        path.write_text("\n".join((CORAL / "pascal_voc_segmentation_labels.txt").read_text().splitlines()[:21]) + "\n")
        argv += ["--labels", str(path)]
    elif labels:
        argv += ["--labels", str(CORAL / labels)]
    if calibrate:
        (work / "cal").mkdir(exist_ok=True)
        shutil.copy(CORAL / image, work / "cal" / image)
        argv += ["--calibration", str(work / "cal")]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([*argv, "--out", str(tmp), "--quiet"], cwd=REPO, check=True)
    tmp.rename(out)
    return out


def _open(bundle: Path) -> Any:
    from agent.runtime import Model
    from protocol.bundle import MANIFEST_FILE, digest_of, parse_manifest
    from protocol.messages import BundleInfo
    from protocol.signing import Envelope

    env = Envelope.parse((bundle / MANIFEST_FILE).read_bytes())
    m = parse_manifest(env.payload)
    roles = {a.role: a.name for a in m.artifacts}
    artifact = roles.get("tflite_int8") or roles["tflite_float"]
    model = Model.open(bundle, artifact, "cpu", BundleInfo(digest_of(env), m.name, m.version), m.model, roles)
    return model, bundle / artifact, m


class Bare:
    def __init__(self, model: Path, raw: np.ndarray) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(model))
        self.it.allocate_tensors()
        first, *state = self.it.get_input_details()
        self.it.set_tensor(first["index"], raw.reshape(first["shape"]))
        for d in state:
            self.it.set_tensor(d["index"], np.full(d["shape"], d["quantization"][1], d["dtype"]))

    def once(self) -> float:
        t0 = time.perf_counter()
        self.it.invoke()
        return (time.perf_counter() - t0) * 1000


def _multipart(data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="x.bmp"\r\n\r\n'.encode()
    return body + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _cloud(bundles: dict[str, Path], tmp: Path) -> Any:
    """A TestClient on edgefleet-cloud serving every bundle that has a twin."""
    from starlette.testclient import TestClient

    from cloud import config as cfg
    from cloud.api import create_app
    from protocol.bundle import MANIFEST_FILE, pack_archive
    from protocol.signing import Envelope, SigningKey, load_root_unverified, root_document, seal

    rk, tk = SigningKey.generate(), SigningKey.generate()
    raw = seal("root", root_document(1, int(time.time()) + 86400, [rk], 1, [tk]), [rk]).to_bytes()
    (tmp / "root.json").write_bytes(raw)
    folder = tmp / "bundles"
    folder.mkdir()
    for task, bundle in bundles.items():
        env = Envelope.parse((bundle / MANIFEST_FILE).read_bytes())
        env = Envelope(env.payload_type, env.payload, ()).add_signature(tk)
        arts = {p.name: p.read_bytes() for p in bundle.iterdir() if p.name != MANIFEST_FILE}
        (folder / f"{task}.efb").write_bytes(pack_archive(env, arts))
    config = cfg.build(bundles=str(folder), root=str(tmp / "root.json"), environ={}, poll_s=0)
    return TestClient(create_app(config, load_root_unverified(raw)))


def _agreement(task: str, local: dict[str, Any], cloud: dict[str, Any]) -> float | None:
    if task == "classification":
        return float(local["top"][0]["index"] == cloud["top"][0]["index"])
    if task == "keypoints":
        a = np.array([[k["y_normalized"], k["x_normalized"]] for k in local["keypoints"]])
        b = np.array([[k["y_normalized"], k["x_normalized"]] for k in cloud["keypoints"]])
        return float(np.linalg.norm(a - b, axis=1).mean())
    if task == "segmentation":
        from PIL import Image

        ma, mb = (np.asarray(Image.open(io.BytesIO(base64.b64decode(d["mask"]["data"])))) for d in (local, cloud))
        return float((ma == mb).mean())
    if task == "embedding":
        a, b = np.asarray(local["embedding"]), np.asarray(cloud["embedding"])
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench tasks")
    ap.add_argument("--rounds", type=int, default=40, help="paired rounds per model (default 40)")
    args = ap.parse_args(argv)

    from agent.localapi import make_server
    from agent.serve import Serving, parse_request
    from agent.telemetry import Recorder

    bundles = {task: _bundle(task) for task in MODELS}
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, _cloud(bundles, Path(tmp)) as cloud:
        for task, bundle in bundles.items():
            model, tflite, manifest = _open(bundle)
            image = (CORAL / MODELS[task][1]).read_bytes()
            serving = Serving(Recorder(), None, None, lambda d, w: None)
            serving.swap(model)
            srv = make_server("127.0.0.1", 0, serving, lambda: {})
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            try:
                body, ctype = _multipart(image)
                client = RawClient(srv.server_address[1], body, ctype, {})
                bare = Bare(tflite, model.image_to_raw(image))
                b: list[float] = []
                a: list[float] = []
                for _ in range(args.rounds):
                    bare.once()
                    b.append(bare.once())
                    client.once()
                    a.append(client.once())
                client.close()
                query = "mask=png" if task == "segmentation" else ""
                local = serving.predict(parse_request("image/bmp", image, query=query))
                size = len(json.dumps(serving.predict(parse_request("image/bmp", image))).encode())
                size_png = len(json.dumps(local).encode()) if task == "segmentation" else None
            finally:
                srv.shutdown()
                srv.server_close()
                model.close()
            twin = manifest.model.get("twin", {}).get("status")
            agree = None
            if twin == "verified":
                files = {"file": ("x.bmp", image, "application/octet-stream")}
                r = cloud.post(f"/predict?model={task}" + (f"&{query}" if query else ""), files=files)
                r.raise_for_status()
                agree = _agreement(task, local, r.json())
            est, low, high = overhead(a, b)
            cases.append(
                {
                    "task": task,
                    "model": MODELS[task][0],
                    "bare_ms_p50": float(np.median(b)),
                    "api_ms_p50": float(np.median(a)),
                    "overhead_pct": est,
                    "overhead_pct_ci95": [low, high],
                    "answer_bytes": size,
                    "answer_bytes_mask_png": size_png,
                    "twin": twin,
                    "agent_vs_cloud": agree,
                }
            )
    path = report.write(
        "tasks",
        "% overhead over bare invoke",
        False,
        float(np.median([c["overhead_pct"] for c in cases])),
        None,
        None,
        {"rounds": args.rounds},
        cases,
    )
    measure = {
        "classification": "top-1 equal",
        "segmentation": "pixels equal",
        "keypoints": "mean distance",
        "embedding": "cosine",
    }
    print("| task | model | bare p50 ms | API p50 ms | overhead % (95% CI) | answer bytes | agent vs cloud |")
    print("|---|---|---|---|---|---|---|")
    for c in cases:
        shown = (
            "no twin (withheld)" if c["agent_vs_cloud"] is None else f"{measure[c['task']]} {c['agent_vs_cloud']:.4f}"
        )
        extra = f" ({c['answer_bytes_mask_png']} with mask=png)" if c["answer_bytes_mask_png"] else ""
        print(
            f"| {c['task']} | {c['model']} | {c['bare_ms_p50']:.2f} | {c['api_ms_p50']:.2f} | "
            f"{c['overhead_pct']:.1f} ({c['overhead_pct_ci95'][0]:.1f}..{c['overhead_pct_ci95'][1]:.1f}) | "
            f"{c['answer_bytes']}{extra} | {shown} |"
        )
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
