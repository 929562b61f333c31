"""`python -m bench agent [--quick]`: the agent's local inference API vs a bare LiteRT invoke.

For the real Coral MobileNetV2-224 (uint8) and the compiler's digits CNN, in one run:

* **limit** - bare ``interpreter.invoke()`` in this process (input already set, same LiteRT,
  same thread setting as the agent): the floor for any serving path;
* **ours** - ``POST /v1/predict`` on a running ``edgefleet-agent`` (a real daemon process with
  the bundle installed through its own verify/stage/self-test code; the MobileNetV2 bundle
  carries a drift baseline, as the compiler's bundles do, so every request is binned for drift
  as in the field), one keep-alive client, uploading an image already at the model's input
  size (JPEG 224x224 for MobileNetV2, PNG 8x8 for digits): HTTP + multipart + decode +
  preprocess + quantize + invoke + JSON answer;
* a second case uploads the full 720p camera JPEG (decode and resize included);
* a third sends the input tensor itself (``application/octet-stream`` + ``X-Tensor-Shape``):
  the API's own overhead without image decoding;
* **floor** - the same requests to ``bench/floor_server.py``, which only reads the request,
  invokes the model and sends a fixed answer: what the round trip itself costs on this machine.

The headline is measured in **paired rounds** (:func:`paired`): bare, agent and floor back to
back with a raw-socket client (:class:`RawClient`), compared round by round with a 95 %
bootstrap interval (:func:`overhead`), because this VM's speed drifts in phases longer than a
second and separately timed blocks land in different phases. The round trip also splits into
``in_agent_ms`` (the agent's own ``latency_ms`` - bare: decode, pre/post-processing, the
invoke in a serving thread) and ``http_ms`` (round trip - ``latency_ms``: both ends' HTTP and
the transfer).

Also measured in blocks, as before pairing (noisier; kept for comparison): 20 bare invokes,
20 requests from Python's ``http.client`` (what a Python app sees, its own request building
and response parsing included), and one-second ``wrk`` runs (C client; ``apt-get install
wrk``) against the agent and the floor.

``ours`` is the image-at-input-size case (what a camera app does); the tensor case is in
``params.overhead_pct_mobilenet_v2_224_tensor``.

Also: the agent's RSS with the model loaded, before any request and after each case's traffic,
and its idle CPU (no requests, telemetry on), checked against issue 16 part 7's goal (RSS <= 80 MB
with MobileNetV2-224 loaded, after traffic too; idle CPU <= 1 %); the anonymous part of the RSS
is printed under it (``params.idle_anon_mb``, ``params.anon_after_traffic_mb``).
Goal (issue 4): API latency within 10 % of bare invoke on MobileNetV2-224; the run ends with
the check (met when the whole interval is at or under 10 %).
Goals (issue 20 part 3, :mod:`bench._agent_goals`), from the same rounds: JPEG-224, agent round
trip - (floor round trip + a decode of the same bytes by the fastest libjpeg-turbo binding here,
timed in each round: simplejpeg and Pillow) <= 0.3 ms; tensor, agent / floor - 1 <= 5 %
(``params.goal_issue20_part3``).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import _agent_goals, report
from bench.floor_server import content_length

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".edgefleet" / "bench-cache"
GOAL_RSS_MB = 80  # issue 16 part 7, with MobileNetV2-224 loaded
GOAL_IDLE_CPU_PCT = 1.0
CORAL = Path(os.environ.get("EDGEFLEET_CORAL_MODELS", REPO.parent / "shared" / "models" / "coral"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _trust(tmp: Path) -> tuple[Any, Path]:
    from protocol.signing import SigningKey, root_document, seal

    rk, tk = SigningKey.generate(), SigningKey.generate()
    root = seal("root", root_document(1, int(time.time()) + 86400, [rk], 1, [tk]), [rk]).to_bytes()
    (tmp / "root.json").write_bytes(root)
    return tk, tmp / "root.json"


def _coral_bundle(out: Path) -> Path:
    """MobileNetV2-224 as a bundle directory, with self-test vectors computed here."""
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from protocol.bundle import MANIFEST_FILE, Artifact, Manifest, Requirements
    from protocol.signing import seal

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CORAL / "mobilenet_v2_1.0_224_quant.tflite", out / "model_int8.tflite")
    shutil.copyfile(CORAL / "imagenet_labels.txt", out / "labels.txt")
    img = Image.open(CORAL / "cat_720p.jpg").convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.uint8)[None]
    it = Interpreter(model_path=str(out / "model_int8.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    y = it.get_tensor(it.get_output_details()[0]["index"])
    (out / "selftest.json").write_text(
        json.dumps(
            {
                "schema": 1,
                "artifact": "model_int8.tflite",
                "tolerance": 2,
                "max_latency_ms": 5000,
                "cases": [{"input": x.tolist(), "expected": y.tolist()}],
            }
        )
    )
    preprocess = {"kind": "image", "height": 224, "width": 224, "channels": 3, "scale": 1 / 128, "offset": -1.0}
    (out / "baseline.json").write_text(json.dumps(_baseline(it, preprocess)))
    files = {
        "model_int8.tflite": "tflite_int8",
        "labels.txt": "labels",
        "selftest.json": "selftest",
        "baseline.json": "baseline",
    }
    arts = tuple(Artifact.of(n, r, (out / n).read_bytes()) for n, r in files.items())
    m = Manifest(
        "mobilenet_v2",
        "1",
        int(time.time()),
        arts,
        Requirements("none"),
        model={"task": "classification", "labels": "labels.txt", "preprocess": preprocess},
    )
    (out / MANIFEST_FILE).write_bytes(seal("manifest", m.to_dict(), []).to_bytes())
    return out


def _baseline(it: Any, preprocess: dict[str, Any]) -> dict[str, Any]:
    """A drift baseline as the compiler writes one (compiler.baseline), from the Coral test
    images and their mirror images, so the agent bins every request's drift features as it
    does in the field (a bundle without a baseline would skip that work)."""
    from PIL import Image, ImageOps

    from compiler.baseline import build

    images = []
    for name in ("cat_720p.jpg", "grace_hopper.bmp"):
        img = Image.open(CORAL / name).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
        images += [img, ImageOps.mirror(img), ImageOps.flip(img), ImageOps.grayscale(img).convert("RGB")]
    raw = np.stack([np.asarray(i, dtype=np.uint8) for i in images])
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    scale, zp = o["quantization"]
    scores = []
    for px in raw:
        it.set_tensor(d["index"], px[None])
        it.invoke()
        scores.append((it.get_tensor(o["index"]).reshape(-1).astype(np.float32) - zp) * scale)
    x = raw.astype(np.float32) * preprocess["scale"] + preprocess["offset"]
    return build(x, np.stack(scores), preprocess, num_classes=len(scores[0]))


def _digits_bundle() -> Path | None:
    src = CACHE / "digits-build"
    if not (src / "manifest.json").exists():
        print("building the digits bundle with the compiler in a child process...", flush=True)
        shutil.rmtree(src, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, "-m", "compiler", "digits", "--out", str(src), "--quiet"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(f"digits build failed; skipping digits:\n{proc.stderr[-1500:]}", file=sys.stderr)
            return None
    return src


def _install(bundle_dir: Path, key: Any, root_path: Path, state: Path) -> str:
    """Sign the bundle and stage it into the agent's state dir with the agent's own code."""
    from agent.install import Inventory, choose_artifact
    from agent.slots import SlotRecord, Slots, SlotsState
    from protocol.bundle import MANIFEST_FILE, pack_archive
    from protocol.signing import Envelope, load_root_unverified

    env = Envelope.parse((bundle_dir / MANIFEST_FILE).read_bytes())
    env = Envelope(env.payload_type, env.payload, ()).add_signature(key)
    arts = {p.name: p.read_bytes() for p in bundle_dir.iterdir() if p.name != MANIFEST_FILE}
    archive = state / "bundle.efb"
    state.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(pack_archive(env, arts))
    slots = Slots(state)
    manifest, digest, _ = slots.stage(archive, archive.stat().st_size, load_root_unverified(root_path.read_bytes()))
    choice = choose_artifact(manifest, Inventory("bench"))
    assert not hasattr(choice, "reason"), choice
    slots.save(
        SlotsState(
            SlotRecord(
                digest,
                manifest.name,
                manifest.version,
                choice.artifact.name,  # type: ignore[union-attr]
                choice.runtime,
                0,
            ),
            None,
            False,
        )
    )  # type: ignore[union-attr]
    archive.unlink()
    return digest


class Bare:
    """A bare LiteRT interpreter with its input set once: ``run(k)`` times ``k`` invokes."""

    def __init__(self, model: Path, x: np.ndarray) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(model))
        self.it.allocate_tensors()
        d = self.it.get_input_details()[0]
        self.it.set_tensor(d["index"], x.astype(d["dtype"]).reshape(d["shape"]))
        for _ in range(10):
            self.it.invoke()

    def run(self, k: int) -> list[float]:
        out = []
        for _ in range(k):
            t0 = time.perf_counter()
            self.it.invoke()
            out.append((time.perf_counter() - t0) * 1000)
        return out


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


class Client:
    """One keep-alive HTTP client posting the same multipart upload."""

    def __init__(self, port: int, data: bytes, name: str, headers: dict[str, str] | None = None) -> None:
        if headers is None:
            self.body, self.ctype = _multipart(data, name)
            self.headers: dict[str, str] = {}
        else:
            self.body, self.ctype, self.headers = data, "application/octet-stream", headers
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.last: dict[str, Any] = {}
        self.server_ms: list[float] = []  # the agent's own latency_ms (request parsed -> answer built)
        self.run(10)
        self.server_ms.clear()

    def run(self, k: int) -> list[float]:
        times = []
        for _ in range(k):
            t0 = time.perf_counter()
            self.conn.request("POST", "/v1/predict", self.body, {"Content-Type": self.ctype, **self.headers})
            resp = self.conn.getresponse()
            raw = resp.read()
            times.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"agent answered {resp.status}: {raw[:300]!r}")
            self.last = json.loads(raw)
            self.server_ms.append(float(self.last["latency_ms"]))
        return times


class WrkClient:
    """``wrk -t1 -c1``: one keep-alive connection from a C client sending the same request as
    :class:`Client`; each :meth:`run` is one wrk run and returns its p50 in ms."""

    def __init__(self, wrk: str, port: int, work: Path, client: Client) -> None:
        from bench.fallback import WRK_LUA

        self.wrk, self.url = wrk, f"http://127.0.0.1:{port}/v1/predict"
        self.script = work / "agent-post.lua"
        self.script.write_text(WRK_LUA)
        body = work / f"agent-body-{uuid.uuid4().hex}.bin"
        body.write_bytes(client.body)
        self.env = dict(
            os.environ,
            BENCH_BODY=str(body),
            BENCH_CTYPE=client.ctype,
            BENCH_HEADERS="\n".join(f"{k}: {v}" for k, v in client.headers.items()),
        )

    def run(self, seconds: int = 1) -> float:
        from bench.fallback import _wrk

        summary, _, _ = _wrk(self.wrk, self.script, self.env, self.url, 1, seconds)
        if summary["status"] or summary["requests"] < 1:
            raise RuntimeError(f"wrk: {summary['status']} non-2xx answers of {summary['requests']} requests")
        return float(summary["p50_us"]) / 1000


_LATENCY = re.compile(rb'"latency_ms":([0-9.eE+-]+)')


class RawClient:
    """The request :class:`Client` sends, as pre-built bytes on a plain keep-alive socket: one
    ``sendall``, then ``recv`` until the answer's Content-Length is in. No header objects and
    no JSON parsing, so its own cost is a few tens of microseconds, close to wrk's; unlike wrk
    it times one request at a time, which :func:`paired` needs."""

    def __init__(self, port: int, body: bytes, ctype: str, headers: dict[str, str], warmup: int = 5) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.request = (
            f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.last_server_ms: float | None = None  # the latency_ms of the last answer (the floor sends none)
        for _ in range(warmup):
            self.once()

    def once(self) -> float:
        """One request; its round trip in ms (RuntimeError unless the answer is a 200)."""
        t0 = time.perf_counter()
        self.sock.sendall(self.request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += self._recv()
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = content_length(head)
        while len(buf) < length:
            buf += self._recv()
        took = (time.perf_counter() - t0) * 1000
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"answered {head[:40]!r}: {buf[:300]!r}")
        m = _LATENCY.search(buf, max(0, len(buf) - 400))
        self.last_server_ms = float(m.group(1)) if m else None
        return took

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


class Step:
    """One more thing timed in each round of :func:`paired` (after the floor's pair, also as a
    pair, the second timed): ``ms`` holds its times, aligned with the rounds. The JPEG-224
    case times each libjpeg-turbo binding's decode of the uploaded bytes this way, the
    reference of issue 20 part 3's goal."""

    def __init__(self, name: str, fn: Callable[[], object]) -> None:
        self.name, self.fn = name, fn
        self.ms: list[float] = []

    def once(self) -> float:
        t0 = time.perf_counter()
        self.fn()
        return (time.perf_counter() - t0) * 1000


def jpeg_decoders(data: bytes) -> list[Step]:
    """A decode of ``data`` by each libjpeg-turbo binding installed here: simplejpeg (numpy out,
    what the agent uses) and Pillow (open + load into its own buffer, no numpy copy)."""
    from PIL import Image

    steps = [Step("pillow", lambda: Image.open(io.BytesIO(data)).load())]
    try:
        import simplejpeg
    except ImportError:
        return steps
    return [Step("simplejpeg", lambda: simplejpeg.decode_jpeg(data, colorspace="RGB")), *steps]


def paired(
    bare: Bare, agent: RawClient, floor: RawClient, n: int, also: Sequence[Step] = ()
) -> tuple[list[float], list[float], list[float], list[float]]:
    """``n`` rounds of two bare invokes, two agent requests and two floor requests, back to
    back; the second of each pair is timed. Returns (bare ms, agent ms, floor ms, the agent's
    own latency_ms), aligned by round; each of ``also`` is timed the same way at the end of the
    round, into its ``ms``.

    Why rounds: on a shared VM the invoke itself slows down and speeds up for a second or more
    at a time (measured here: 40 ms <-> 80 ms phases, lag-1 autocorrelation 0.87), so the p50s
    of separately timed blocks can differ by more than the overhead being measured. Within one
    round all three run in the same phase, and :func:`overhead` compares them round by round.
    Why pairs: each timed step follows one of its own kind, as in a back-to-back loop. The
    agent's bookkeeping after an answer (telemetry, drift binning on its worker thread) then
    overlaps its own next request, as it does for an app sending requests back to back, not
    the bare invoke or the floor request that comes next."""
    b: list[float] = []
    a: list[float] = []
    f: list[float] = []
    s: list[float] = []
    for _ in range(n):
        bare.run(1)
        b.append(bare.run(1)[0])
        agent.once()
        a.append(agent.once())
        s.append(agent.last_server_ms if agent.last_server_ms is not None else float("nan"))
        floor.once()
        f.append(floor.once())
        for step in also:
            step.once()
            step.ms.append(step.once())
    return b, a, f, s


def overhead(api: list[float], bare: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median over rounds of ``api / bare - 1`` in %, with a 95 % bootstrap interval of that
    median (1000 resamples of the rounds): (estimate, low, high)."""
    r = np.asarray(api, dtype=np.float64) / np.asarray(bare, dtype=np.float64) - 1
    rng = np.random.default_rng(seed)
    meds = np.median(r[rng.integers(0, len(r), size=(1000, len(r)))], axis=1)
    return 100 * float(np.median(r)), 100 * float(np.percentile(meds, 2.5)), 100 * float(np.percentile(meds, 97.5))


def interleaved(
    bare: Bare, client: Client, n: int, wrk: WrkClient | None = None, floor: WrkClient | None = None, block: int = 20
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Alternate blocks of bare invokes, http.client requests and (when given) one-second wrk
    runs against the agent and the floor server, so machine load hits all of them alike.
    Returns (bare ms, http.client ms, wrk p50s, floor p50s)."""
    b: list[float] = []
    a: list[float] = []
    w: list[float] = []
    f: list[float] = []
    while len(a) < n:
        k = min(block, n - len(a))
        b += bare.run(k)
        a += client.run(k)
        if wrk is not None:
            w.append(wrk.run())
        if floor is not None:
            f.append(floor.run())
    return b, a, w, f


def _start_floor(model: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """bench/floor_server.py on ``model``: recv the request, invoke, send a fixed answer."""
    port_file = tmp / f"floor-{model.parent.name}.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.floor_server", str(model), str(port_file)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            raise RuntimeError(f"floor server exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError("floor server did not start in 60 s")


def _anon_mb(pid: int) -> float | None:
    """The process's anonymous resident memory in MB (heap, Python objects, the model's buffers):
    RSS less its file-backed pages (libraries' code and data, which on a kernel caching files in
    large folios - ext4 on Linux >= 6.16, as on this VM - depend on how the files were last read
    or written, not only on the agent). None where /proc/PID/smaps_rollup is missing."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    m = re.search(r"^Anonymous:\s+(\d+) kB", text, re.M)
    return round(int(m.group(1)) / 1024, 1) if m else None


def _proc_stat(pid: int) -> tuple[float, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def _start_agent(
    tmp: Path, name: str, root_path: Path, state: Path, broker: str
) -> tuple[subprocess.Popen[bytes], int]:
    conf = tmp / f"{name}.toml"
    conf.write_text(
        f'device_id = "bench-{name}"\nbroker = "{broker}"\nstate_dir = "{state}"\n'
        f'root = "{root_path}"\nhttp_port = 0\ntelemetry_interval_s = 10\nedgetpu = "auto"\n'
    )
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(conf), "--log-level", "WARNING"],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    port_file = state / "http.port"
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            port = int(port_file.read_text())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return proc, port
            except OSError:
                pass
            finally:
                conn.close()
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {(tmp / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError("agent did not become healthy in 60 s")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer requests, shorter idle window")
    p.add_argument(
        "--requests",
        type=int,
        help="timed requests per case, for each client and for the paired rounds (default 300, quick 60)",
    )
    p.add_argument(
        "--client",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="clients of the block measurements (the paired headline always uses its raw "
        "socket client): python = http.client only; wrk = http.client and wrk (error "
        "if wrk is missing); auto = wrk too when installed",
    )
    args = p.parse_args(argv)
    n = args.requests or (60 if args.quick else 300)
    wrk = shutil.which("wrk") if args.client != "python" else None
    if args.client == "wrk" and not wrk:
        print("--client wrk: wrk is not on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    if wrk is None and args.client == "auto":
        print(
            "note: wrk not found (apt-get install wrk): the block measurements use http.client "
            "only; the paired headline does not need wrk",
            flush=True,
        )
    idle_s = 3.0 if args.quick else 10.0
    if not (CORAL / "mobilenet_v2_1.0_224_quant.tflite").exists():
        print(f"Coral models not found at {CORAL} (set EDGEFLEET_CORAL_MODELS)", file=sys.stderr)
        return 2
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    broker_proc = None
    broker = "mqtt://127.0.0.1:9"  # nothing listens: the agent keeps serving while it retries
    if shutil.which("mosquitto"):
        port = _free_port()
        (tmp / "mq.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker_proc = subprocess.Popen(
            ["mosquitto", "-c", str(tmp / "mq.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        broker = f"mqtt://127.0.0.1:{port}"
    cases: list[dict[str, Any]] = []
    rounds: dict[tuple[str, str], dict[str, list[float]]] = {}  # paired rounds' agent and floor ms, per case
    decoders: dict[str, list[float]] = {}  # JPEG-224 decode ms per libjpeg-turbo binding, per round
    params: dict[str, Any] = {
        "requests": n,
        "clients": 1,
        "threads": "LiteRT default (agent and bare)",
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    try:
        key, root_path = _trust(tmp)
        models: list[tuple[str, Path]] = [("mobilenet_v2_224", _coral_bundle(tmp / "mnv2"))]
        digits = _digits_bundle()
        if digits is not None:
            models.append(("digits", digits))
        cat = (CORAL / "cat_720p.jpg").read_bytes()
        for name, bdir in models:
            state = tmp / f"state-{name}"
            _install(bdir, key, root_path, state)
            if name == "digits":
                from ai_edge_litert.interpreter import Interpreter

                d = Interpreter(model_path=str(bdir / "model_int8.tflite")).get_input_details()[0]
                bare = Bare(bdir / "model_int8.tflite", np.zeros(d["shape"], d["dtype"]))
                img = Image.new("L", (8, 8), 0)
                buf = io.BytesIO()
                img.save(buf, "PNG")
                x = np.zeros((1, 8, 8, 1), np.float32)
                uploads = [
                    ("png_8x8", buf.getvalue(), "d.png", None),
                    ("tensor_f32", x.tobytes(), "", {"X-Tensor-Shape": "1,8,8,1", "X-Tensor-Dtype": "float32"}),
                ]
            else:
                img = Image.open(CORAL / "cat_720p.jpg").convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
                bare = Bare(bdir / "model_int8.tflite", np.asarray(img, dtype=np.uint8)[None])
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=90)
                px = np.asarray(img, dtype=np.uint8)[None]
                uploads = [
                    ("jpeg_224", buf.getvalue(), "cat224.jpg", None),
                    ("jpeg_720p", cat, "cat_720p.jpg", None),
                    ("tensor_u8", px.tobytes(), "", {"X-Tensor-Shape": "1,224,224,3", "X-Tensor-Dtype": "uint8"}),
                ]
            proc, port = _start_agent(tmp, name, root_path, state, broker)
            floor_proc, floor_port = _start_floor(bdir / "model_int8.tflite", tmp)
            try:
                cpu0, _ = _proc_stat(proc.pid)
                time.sleep(idle_s)
                cpu1, rss_idle = _proc_stat(proc.pid)
                anon_idle = _anon_mb(proc.pid)
                idle_pct = 100 * (cpu1 - cpu0) / idle_s
                for label, data, fname, headers in uploads:
                    print(f"[{name}] {label}: {n} API requests interleaved with {n} bare invokes...", flush=True)
                    client = Client(port, data, fname, headers)
                    wclient = WrkClient(wrk, port, tmp, client) if wrk else None
                    fclient = WrkClient(wrk, floor_port, tmp, client) if wrk else None
                    bare_t, api, wrk_t, floor_t = interleaved(bare, client, n, wclient, fclient)
                    ours_raw = RawClient(port, client.body, client.ctype, client.headers)
                    floor_raw = RawClient(floor_port, client.body, client.ctype, client.headers)
                    # issue 20 part 3: the JPEG-224 upload's decode at libjpeg-turbo speed, same rounds
                    also = jpeg_decoders(data) if (name, label) == ("mobilenet_v2_224", "jpeg_224") else []
                    try:
                        pb, pa, pf, ps = paired(bare, ours_raw, floor_raw, n, also)
                    finally:
                        ours_raw.close()
                        floor_raw.close()
                    est, lo, hi = overhead(pa, pb)
                    fest, flo, fhi = overhead(pf, pb)
                    rounds[(name, label)] = {"agent": pa, "floor": pf}
                    if also:
                        decoders.update({step.name: step.ms for step in also})
                    server = statistics.median(client.server_ms)
                    _, rss = _proc_stat(proc.pid)
                    anon = _anon_mb(proc.pid)
                    b50, a50 = statistics.median(bare_t), statistics.median(api)
                    w50 = statistics.median(wrk_t) if wrk_t else None
                    f50 = statistics.median(floor_t) if floor_t else None
                    cases.append(
                        {
                            "model": name,
                            "upload": label,
                            "client": "raw socket, paired rounds",
                            "p50_ms": statistics.median(pa),
                            "paired_bare_p50_ms": statistics.median(pb),
                            "paired_floor_p50_ms": statistics.median(pf),
                            "overhead_pct": est,
                            "overhead_pct_ci95": [lo, hi],
                            "floor_overhead_pct": fest,
                            "floor_overhead_pct_ci95": [flo, fhi],
                            "decode_p50_ms": {step.name: statistics.median(step.ms) for step in also} or None,
                            "in_agent_ms": statistics.median(np.subtract(ps, pb)),
                            "http_ms": statistics.median(np.subtract(pa, ps)),
                            "api_p50_ms": a50,
                            "api_p95_ms": _pct(api, 95),
                            "wrk_p50_ms": w50,
                            "wrk_runs": len(wrk_t),
                            "wrk_floor_p50_ms": f50,
                            "overhead_pct_wrk": 100 * (w50 / b50 - 1) if w50 is not None else None,
                            "floor_overhead_pct_wrk": 100 * (f50 / b50 - 1) if f50 is not None else None,
                            "bare_p50_ms": b50,
                            "bare_p95_ms": _pct(bare_t, 95),
                            "overhead_ms": statistics.median(np.subtract(pa, pb)),
                            "overhead_pct_python_client": 100 * (a50 / b50 - 1),
                            "server_p50_ms": server,
                            "rss_mb": round(rss / 2**20, 1),
                            "idle_rss_mb": round(rss_idle / 2**20, 1),
                            "anon_mb": anon,
                            "idle_anon_mb": anon_idle,
                            "idle_cpu_pct": round(idle_pct, 2),
                            "served_by": client.last.get("served_by"),
                            "top1": client.last["top"][0]["label"],
                        }
                    )
                    client.conn.close()
            finally:
                if floor_proc is not None:
                    floor_proc.kill()
                    floor_proc.wait(10)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    finally:
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    head = next(c for c in cases if c["model"] == "mobilenet_v2_224" and c["upload"] == "jpeg_224")
    tensor = next(c for c in cases if c["model"] == "mobilenet_v2_224" and c["upload"] == "tensor_u8")

    def pct(c: dict[str, Any], key: str) -> float | None:
        return round(c[key], 1) if c[key] is not None else None

    # issue 16 part 7: RSS with the model loaded, after every MobileNetV2 case's traffic (the largest)
    after_case = max((c for c in cases if c["model"] == "mobilenet_v2_224"), key=lambda c: c["rss_mb"])
    rss_after = after_case["rss_mb"]
    params.update(
        {
            "rss_mb": head["rss_mb"],
            "idle_rss_mb": head["idle_rss_mb"],
            "rss_after_traffic_mb": rss_after,
            "idle_anon_mb": head["idle_anon_mb"],
            "anon_after_traffic_mb": after_case["anon_mb"],
            "goal_rss_mb": GOAL_RSS_MB,
            "idle_cpu_pct": head["idle_cpu_pct"],
            "goal_idle_cpu_pct": GOAL_IDLE_CPU_PCT,
            "overhead_pct_mobilenet_v2_224": pct(head, "overhead_pct"),
            "overhead_pct_mobilenet_v2_224_ci95": [round(v, 1) for v in head["overhead_pct_ci95"]],
            "goal_overhead_pct": 10,
            "overhead_pct_mobilenet_v2_224_tensor": pct(tensor, "overhead_pct"),
            "overhead_pct_mobilenet_v2_224_tensor_ci95": [round(v, 1) for v in tensor["overhead_pct_ci95"]],
            "floor_overhead_pct_mobilenet_v2_224": pct(head, "floor_overhead_pct"),
            "overhead_pct_mobilenet_v2_224_wrk": pct(head, "overhead_pct_wrk"),
            "overhead_pct_mobilenet_v2_224_python_client": pct(head, "overhead_pct_python_client"),
            "client": head["client"],
            "broker": "mosquitto" if broker_proc else "none",
            "loadavg_end": round(os.getloadavg()[0], 2),
        }
    )
    part3 = _agent_goals.check(
        rounds.get(("mobilenet_v2_224", "jpeg_224")), decoders, rounds.get(("mobilenet_v2_224", "tensor_u8"))
    )
    params["goal_issue20_part3"] = {g.name: g.to_dict() for g in part3}
    path = report.write("agent", "ms", False, head["p50_ms"], None, head["paired_bare_p50_ms"], params, cases)

    def ci(c: dict[str, Any], key: str) -> str:
        lo, hi = c[key + "_ci95"]
        return f"{c[key]:>6.1f}% [{lo:5.1f},{hi:5.1f}]"

    def opt(v: float | None) -> str:
        return f"{v:>6.1f}%" if v is not None else f"{'-':>7}"

    print(f"\n{'':<29}{'paired rounds (raw socket client)':^69}|{'blocks: wrk':^16}|{'blocks: http.client':^23}|")
    print(
        f"{'model':<18}{'upload':<11}{'bare p50':>9}{'ours p50':>9}{'overhead [95% CI]':>20}{'floor [95% CI]':>19}"
        f"{'in agent':>9}{'HTTP':>6} |{'ours':>8}{'floor':>8}|{'p50':>8}{'p95':>7}{'overhead':>8}|"
        f"{'RSS MB':>7}{'idle CPU':>9}"
    )
    for c in cases:
        print(
            f"{c['model']:<18}{c['upload']:<11}{c['paired_bare_p50_ms']:>8.3f} {c['p50_ms']:>8.3f} "
            f"{ci(c, 'overhead_pct'):>19} {ci(c, 'floor_overhead_pct'):>18}"
            f"{c['in_agent_ms']:>9.3f}{c['http_ms']:>6.3f} |"
            f"{opt(c['overhead_pct_wrk'])} {opt(c['floor_overhead_pct_wrk'])}|{c['api_p50_ms']:>7.2f} "
            f"{c['api_p95_ms']:>6.2f} {c['overhead_pct_python_client']:>6.1f}%|"
            f"{c['rss_mb']:>6.1f} {c['idle_cpu_pct']:>7.2f}%"
        )
    print(
        "overhead = API latency / bare invoke - 1. Paired rounds (the headline): two bare invokes, two agent "
        "requests and two floor requests back to back, the second of each timed; overhead = median over rounds of "
        "agent / bare - 1, with a 95 % bootstrap interval, so the VM's slow and fast phases cancel. "
        "floor = bench/floor_server.py (recv, invoke, fixed answer: the round trip any server pays here). "
        "in agent = median over rounds of the agent's latency_ms - bare (decode, preprocess, invoke in a "
        "serving thread, answer), HTTP = median of round trip - latency_ms (both ends' HTTP, transfer), in ms. "
        "Blocks: 20 bare invokes, then 20 http.client requests (what a Python app sees), then 1-s wrk runs "
        "against the agent and the floor, each compared p50 to p50 (noisier: blocks fall in different phases)"
    )
    lo, hi = head["overhead_pct_ci95"]
    verdict = "met" if hi <= 10 else "not met" if lo > 10 else "not decided: the interval straddles 10 %"
    print(
        f"goal (issue 4): JPEG-224 upload overhead <= 10 % on MobileNetV2-224: {head['overhead_pct']:.1f} % "
        f"[{lo:.1f}, {hi:.1f}] -> {verdict}"
    )
    print("goal (issue 20 part 3): MobileNetV2-224, paired rounds, median [95 % interval]")
    for g in part3:
        print(g.line())
    rss_ok = max(head["idle_rss_mb"], rss_after) <= GOAL_RSS_MB
    cpu_ok = head["idle_cpu_pct"] <= GOAL_IDLE_CPU_PCT
    print(
        f"goal (issue 16 part 7): RSS <= {GOAL_RSS_MB} MB with MobileNetV2-224 loaded: {head['idle_rss_mb']} MB "
        f"idle, {rss_after} MB after the JPEG/720p/tensor traffic -> {'met' if rss_ok else 'not met'}; idle CPU "
        f"<= {GOAL_IDLE_CPU_PCT} %: {head['idle_cpu_pct']} % -> {'met' if cpu_ok else 'not met'}"
    )
    if head["idle_anon_mb"] is not None and after_case["anon_mb"] is not None:
        print(
            f"  of which anonymous (heap, Python objects, model buffers): {head['idle_anon_mb']} MB idle, "
            f"{after_case['anon_mb']} MB after; the rest is file-backed library pages, which depend on the "
            "kernel's page cache (large folios) as well as on the agent (docs/agent.md Footprint)"
        )
    print(
        f"load average {params['loadavg_start']} -> {params['loadavg_end']} "
        "(other work on the machine skews both columns)"
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
