"""`python -m bench fallback [--quick]`: the cloud fallback vs the seed's naive endpoint.

In one run, for each model (the digits CNN from the compiler, MobileNetV2 weights=None 224) and
each concurrency level (1, 8, 32, 64 clients):

* **baseline** - the seed's ``api.py`` exactly as written (``bench/seed_api.py``) under uvicorn;
* **ours** - ``edgefleet-cloud serve`` loading the same ONNX from a signed bundle, with its
  defaults plus ``--ours-args``;
* **variant** - the same with ``--variant`` added (default ``--processes 2``), to compare a
  deployment choice in the same run (its batch sizes are not read: ``/metrics`` is per process);
* **limit** - in-process loops of batched ``session.run`` calls, no HTTP and no image decoding:
  the best of one run at a time on every core (batch = min(clients, 32)) and one
  single-threaded run per core (batch = clients / cores, capped at max batch, or 1); measured
  right after the two servers at each level (both idle then), so it sees the same background load.

* **peers** (``--peers all``, issue 20) - BentoML (adaptive batching), LitServe (batching) and
  Mosec (dynamic batching), each serving the same ONNX file with onnxruntime and ours' session
  options from a script in ``bench/peers/`` in its own venv (built on first use, pinned
  versions; ``bench/peers/__init__.py``), driven at every level by the same wrk; run one at a
  time after the seed and ours, so no idle peer process shares the cores. A peer that cannot be
  installed or started is reported with the reason and the rest of the run goes on;
* **overload** - ours at ``--overload-clients`` (256), counting every answer's status and timing
  only the 200s (wrk's own percentiles would mix fast 503s in): wrk with one thread per
  connection and a Lua script that times each request and counts statuses (``OVERLOAD_LUA``),
  or the Python generator without wrk; a shed client waits 50 ms before its next request;
* **bare run** - at 1 client, the p50 of a batch-1 ``session.run`` with all intra-op threads.

The goal check of issue 20 (``bench/_fallback_goals.py``) is printed at the end and stored under
``params.goals_issue_20``, with every peer's version and configuration under ``params.peers``.

Both servers get the same load generator: ``wrk`` (C, one thread, one keep-alive connection per
client, the same pre-encoded multipart upload from a Lua script) when it is installed
(``apt-get install wrk``), else - with a printed warning - the Python one in this process (httpx
on uvloop, one AsyncClient per client), which on a 2-core box eats CPU the servers need. The load
generator's own CPU (``wait4`` rusage of wrk, process time of the Python one) is measured and
printed per case as a share of the machine, so the reader can judge how much it took. Both
servers are up at once but only one is driven at a time, alternating per level so background
load hits them alike. Throughput counts 200 answers completed in the measuring window (after a
warm-up run); latency is per request as the client sees it. Server CPU is summed over the
server's whole process tree (all threads, every worker process).

The seed hard-codes an NCHW 224x224 RGB input, so both models are served in that form: the
MobileNetV2 ONNX is converted with ``inputs_as_nchw``, and the digits ONNX gets a small front
(channel mean, 28x28 average pool, NHWC transpose) so that a 224x224 image reaches the 8x8
network. Baseline and ours serve byte-identical ONNX files.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import report

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".edgefleet" / "bench-cache"
CORAL = REPO.parent / "shared" / "models" / "coral"

MOBILENET_SRC = r"""
import sys, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf, tf2onnx, keras
out = sys.argv[1]
model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="image"),)
proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, inputs_as_nchw=["image"])
open(out + ".tmp", "wb").write(proto.SerializeToString())
os.replace(out + ".tmp", out)
"""


# ---- models -------------------------------------------------------------------------------


def build_mobilenet(cache: Path) -> Path:
    out = cache / "mobilenet_v2_224_nchw.onnx"
    if not out.exists():
        print("building MobileNetV2 (weights=None, 224, NCHW) with tf2onnx in a child process...", flush=True)
        subprocess.run([sys.executable, "-c", MOBILENET_SRC, str(out)], check=True, cwd=REPO)
    return out


def build_digits(cache: Path) -> tuple[Path, list[str]]:
    """The compiler's digits ONNX behind a 224x224 NCHW RGB front, and its labels."""
    src = cache / "digits-build"
    if not (src / "model.onnx").exists():
        print("building the digits bundle with the compiler in a child process...", flush=True)
        shutil.rmtree(src, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "compiler", "digits", "--out", str(src), "--quiet"], check=True, cwd=REPO)
    out = cache / "digits_224_nchw.onnx"
    labels = (src / "labels.txt").read_text().split()
    if not out.exists() or out.stat().st_mtime < (src / "model.onnx").stat().st_mtime:
        import onnx
        from onnx import TensorProto, compose, helper

        digits = onnx.load(str(src / "model.onnx"))
        din = digits.graph.input[0].name
        front = helper.make_graph(
            [
                helper.make_node("ReduceMean", ["image224"], ["gray"], axes=[1], keepdims=1),
                helper.make_node("AveragePool", ["gray"], ["small"], kernel_shape=[28, 28], strides=[28, 28]),
                helper.make_node("Transpose", ["small"], ["front_out"], perm=[0, 2, 3, 1]),
            ],
            "front",
            [helper.make_tensor_value_info("image224", TensorProto.FLOAT, ["N", 3, 224, 224])],
            [helper.make_tensor_value_info("front_out", TensorProto.FLOAT, ["N", 8, 8, 1])],
        )
        opset = next(o.version for o in digits.opset_import if o.domain in ("", "ai.onnx"))
        fm = helper.make_model(front, opset_imports=[helper.make_opsetid("", opset)])
        fm.ir_version = digits.ir_version
        merged = compose.merge_models(fm, digits, io_map=[("front_out", din)])
        onnx.checker.check_model(merged)
        onnx.save(merged, str(out))
    return out, labels


def signed_folder(work: Path, models: dict[str, tuple[Path, list[str]]]) -> tuple[Path, Path]:
    """Sign each model as a bundle (throwaway root + targets key); return (bundles dir, root)."""
    from protocol.bundle import Artifact, Manifest, pack_archive, sha256_hex
    from protocol.signing import SigningKey, root_document, seal

    rk, tk = SigningKey.generate(), SigningKey.generate()
    root = work / "root.json"
    root.write_bytes(seal("root", root_document(1, int(time.time()) + 86400, [rk], 1, [tk]), [rk]).to_bytes())
    bundles = work / "bundles"
    bundles.mkdir()
    for name, (path, labels) in models.items():
        files = {
            "model.onnx": ("onnx", path.read_bytes()),
            "labels.txt": ("labels", ("\n".join(labels) + "\n").encode()),
        }
        arts = tuple(Artifact.of(n, role, d) for n, (role, d) in files.items())
        m = Manifest(
            name,
            "1",
            int(time.time()),
            arts,
            model={
                "task": "classification",
                "num_classes": len(labels),
                "labels": "labels.txt",
                "preprocess": {
                    "kind": "image",
                    "height": 224,
                    "width": 224,
                    "channels": 3,
                    "scale": 1 / 255.0,
                    "offset": 0.0,
                },
            },
        )
        archive = pack_archive(seal("manifest", m.to_dict(), [tk]), {n: d for n, (_, d) in files.items()})
        (bundles / f"{sha256_hex(archive)}.efb").write_bytes(archive)
    return bundles, root


def upload_images() -> dict[str, bytes]:
    """What clients upload: a 224x224 JPEG photo for MobileNetV2, a 32x32 PNG digit for digits."""
    from PIL import Image

    out: dict[str, bytes] = {}
    cat = CORAL / "cat_720p.jpg"
    img = (
        Image.open(cat).convert("RGB").resize((224, 224))
        if cat.exists()
        else Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    out["mobilenet_v2"] = buf.getvalue()
    from sklearn.datasets import load_digits

    px = (load_digits().images[0] * 255 / 16).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).resize((32, 32), Image.Resampling.NEAREST).save(buf, format="PNG")
    out["digits"] = buf.getvalue()
    return out


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = "edgefleetbenchboundary0123456789"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


# ---- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_ready(server: Server, body: bytes, ctype: str, path: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}; see {server.log}")
        try:
            r = httpx.post(server.url + path, content=body, headers={"content-type": ctype}, timeout=30)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{server.name} not ready after {timeout}s: {last}; see {server.log}")


# The seed's Dockerfile installs plain ``uvicorn`` (no httptools, no uvloop), so its server runs
# uvicorn's pure-Python h11 protocol on the asyncio loop. This venv has both C parts (ours uses
# them), so the seed is pinned to what its own image runs; --seed-uvicorn auto lets it use them.
SEED_UVICORN = {"plain": ["--http", "h11", "--loop", "asyncio"], "auto": []}


def start_seed(model: Path, work: Path, uvicorn_mode: str = "plain") -> Server:
    port = free_port()
    log = work / f"seed-{model.stem}.log"
    env = dict(os.environ, SEED_MODEL=str(model))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.seed_api:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
            *SEED_UVICORN[uvicorn_mode],
        ],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Server("seed", proc, f"http://127.0.0.1:{port}", log)


def start_ours(bundles: Path, root: Path, work: Path, extra: list[str], name: str = "ours") -> Server:
    port = free_port()
    log = work / f"{name}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloud",
            "serve",
            "--bundles",
            str(bundles),
            "--root",
            str(root),
            "--port",
            str(port),
            "--poll",
            "0",
            "--log-level",
            "WARNING",
            *extra,
        ],
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    return Server(name, proc, f"http://127.0.0.1:{port}", log)


# ---- load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    model: str
    system: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    mean_batch: float | None = None
    cpu_ms_per_req: float | None = None  # server CPU (process tree, all threads) per answered request
    loadgen: str | None = None  # wrk | python
    loadgen_cpu_share: float | None = None  # load generator CPU / (wall time x cores)


WRK_LUA = r"""
-- edgefleet bench: POST the same pre-encoded multipart body on every request
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
-- optional extra headers, one "Name: value" per line
for name, value in string.gmatch(os.getenv("BENCH_HEADERS") or "", "([^:\n]+):%s*([^\n]*)") do
  wrk.headers[name] = value
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, '
    .. '"timeout": %d, "p50_us": %.1f, "p99_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its threads, plus its live descendants (worker
    processes), from Linux /proc."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int(_stat(int(d.name))[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0.0
    for p in tree:
        try:
            fields = _stat(p)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


async def _drive(
    url: str, body: bytes, ctype: str, clients: int, warmup: float, duration: float
) -> tuple[list[float], int, float]:
    import httpx

    lat: list[float] = []
    errors = 0
    headers = {"content-type": ctype}
    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + duration

    async def one() -> None:
        # one client = one AsyncClient with one keep-alive connection: a single shared pool
        # serialises on its own bookkeeping past ~16 concurrent requests (measured: GET /healthz
        # fell from ~700 to ~150 req/s at 32 clients), which would measure httpx, not the server
        nonlocal errors
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=120.0) as client:
            while True:
                s = time.perf_counter()
                if s >= t1:
                    return
                try:
                    r = await client.post(url, content=body, headers=headers)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                e = time.perf_counter()
                if t0 <= e <= t1:
                    if ok:
                        lat.append(e - s)
                    else:
                        errors += 1

    await asyncio.gather(*(one() for _ in range(clients)))
    return lat, errors, duration


def _run(coro: Any) -> Any:
    """uvloop when installed (less load-generator CPU on a 2-core box), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def drive(
    model: str,
    system: str,
    url: str,
    body: bytes,
    ctype: str,
    clients: int,
    warmup: float,
    duration: float,
    pid: int | None = None,
    wrk: str | None = None,
    work: Path | None = None,
) -> Result:
    if wrk and work:
        return drive_wrk(wrk, work, model, system, url, body, ctype, clients, warmup, duration, pid)
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    g0 = time.process_time()
    lat, errors, dur = _run(_drive(url, body, ctype, clients, warmup, duration))
    total = time.perf_counter() - t0
    share = (time.process_time() - g0) / (total * (os.cpu_count() or 1))
    cpu = None
    if pid and lat:
        # whole run (warm-up included) over the requests it answered, estimated from the window rate
        cpu = (cpu_seconds(pid) - c0) * 1e3 / (len(lat) / dur * total)
    return Result(
        model,
        system,
        clients,
        len(lat) / dur,
        pct(lat, 50) * 1e3,
        pct(lat, 99) * 1e3,
        len(lat),
        errors,
        cpu_ms_per_req=cpu,
        loadgen="python",
        loadgen_cpu_share=share,
    )


def _wrk(
    wrk: str, script: Path, env: dict[str, str], url: str, clients: int, seconds: float
) -> tuple[dict[str, Any], float, float]:
    """One wrk run: (its BENCH summary, its CPU seconds from wait4, wall seconds)."""
    cmd = [wrk, "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "60s", "-s", str(script), url]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n{out[-2000:]}")
    return json.loads(line[6:]), usage.ru_utime + usage.ru_stime, wall


MAX_DRAIN_S = 5.0


def drain(p99_s: float) -> None:
    """Wait about the warm-up's p99 before measuring: wrk leaves up to one request per connection
    in flight when it stops, and a server keeps working on them after their clients are gone; the
    measuring window starts once they are answered (at most ``MAX_DRAIN_S``). Without this, a
    loaded server began the window with the warm-up's abandoned requests still queued (ours then
    shed the excess over --max-inflight at 32 clients)."""
    time.sleep(min(MAX_DRAIN_S, max(0.0, p99_s)))


def drive_wrk(
    wrk: str,
    work: Path,
    model: str,
    system: str,
    url: str,
    body: bytes,
    ctype: str,
    clients: int,
    warmup: float,
    duration: float,
    pid: int | None,
) -> Result:
    script = work / "post.lua"
    script.write_text(WRK_LUA)
    body_file = work / f"body-{model}.bin"
    body_file.write_bytes(body)
    env = dict(os.environ, BENCH_BODY=str(body_file), BENCH_CTYPE=ctype)
    if warmup > 0:
        warm, _, _ = _wrk(wrk, script, env, url, clients, warmup)
        drain(warm["p99_us"] / 1e6)
    c0 = cpu_seconds(pid) if pid else 0.0
    summary, wrk_cpu, wall = _wrk(wrk, script, env, url, clients, duration)
    server_cpu = cpu_seconds(pid) - c0 if pid else 0.0
    seconds = summary["duration_us"] / 1e6
    ok = summary["requests"] - summary["status"]
    errors = summary["status"] + summary["connect"] + summary["read"] + summary["write"] + summary["timeout"]
    return Result(
        model,
        system,
        clients,
        ok / seconds,
        summary["p50_us"] / 1e3,
        summary["p99_us"] / 1e3,
        ok,
        errors,
        cpu_ms_per_req=server_cpu * 1e3 / ok if pid and ok else None,
        loadgen="wrk",
        loadgen_cpu_share=wrk_cpu / (wall * (os.cpu_count() or 1)),
    )


def batch_stats(url: str, model: str) -> tuple[float, float]:
    """(sum, count) of our batch-size histogram, read from /metrics."""
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f'edgefleet_cloud_batch_size_sum{{model="{model}"}}'):
            total = float(line.split()[-1])
        if line.startswith(f'edgefleet_cloud_batch_size_count{{model="{model}"}}'):
            count = float(line.split()[-1])
    return total, count


def _limit_run(path: Path, batch: int, threads: int, intra: int, duration: float) -> tuple[float, list[float], float]:
    import threading

    import onnxruntime as ort

    from cloud.config import SessionTuning
    from cloud.models import session_options

    sess = ort.InferenceSession(
        str(path), sess_options=session_options(SessionTuning(intra_threads=intra)), providers=["CPUExecutionProvider"]
    )
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    for _ in range(2):
        sess.run(None, {name: x})
    times: list[list[float]] = [[] for _ in range(threads)]
    start = time.perf_counter()
    end = start + duration

    def loop(out: list[float]) -> None:
        while time.perf_counter() < end:
            s = time.perf_counter()
            sess.run(None, {name: x})
            out.append(time.perf_counter() - s)

    ts = [threading.Thread(target=loop, args=(t,)) for t in times]
    cpu0 = time.process_time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - start
    flat = [v for t in times for v in t]
    cpu_ms = (time.process_time() - cpu0) * 1e3 / max(1, batch * len(flat))
    return batch * len(flat) / elapsed, flat, cpu_ms


def limit_loop(model: str, path: Path, clients: int, max_batch: int, duration: float) -> Result:
    """The best of a few in-process configurations (no HTTP, no decoding) at this concurrency:
    one run at a time using every core, or one single-threaded run per core."""
    cores = os.cpu_count() or 1
    candidates = {(min(clients, 32), 1, 0)}  # batch, threads, intra (0: all cores)
    if clients >= cores:
        candidates.add((min(-(-clients // cores), max_batch), cores, 1))
        candidates.add((1, cores, 1))
    best: tuple[float, list[float], float, tuple[int, int, int]] | None = None
    for cand in sorted(candidates):
        rps, times, cpu_ms = _limit_run(path, *cand, duration=duration)
        if best is None or rps > best[0]:
            best = (rps, times, cpu_ms, cand)
    assert best is not None
    rps, times, cpu_ms, (b, threads, intra) = best
    r = Result(
        model, "limit", clients, rps, pct(times, 50) * 1e3, pct(times, 99) * 1e3, len(times) * b, 0, float(b), cpu_ms
    )
    print(
        f"   {clients:>3} clients limit: {rps:8.1f} req/s (batch {b}, {threads} thread(s), intra {intra or 'all'}),"
        f" {cpu_ms:.2f} ms CPU/sample",
        flush=True,
    )
    return r


# ---- peers, overload, bare run, goals (issue 20) ------------------------------------------


def run_peer(
    peer: Any,
    model: str,
    path: Path,
    body: bytes,
    ctype: str,
    levels: list[int],
    warmup: float,
    duration: float,
    max_batch: int,
    workers: int,
    wrk: str | None,
    work: Path,
) -> tuple[list[Result], str | None]:
    """One peer's server for one model, driven at every level like ours; (rows, why not run)."""
    from bench import peers

    log = work / f"{peer.name}-{model}.log"
    port = free_port()
    proc = peers.start(peer, path, port, max_batch, workers, log)
    server = Server(peer.name, proc, f"http://127.0.0.1:{port}", log)
    rows: list[Result] = []
    try:
        wait_ready(server, body, ctype, "/predict", timeout=240.0)
        for c in levels:
            rows.append(
                drive(model, peer.name, server.url + "/predict", body, ctype, c, warmup, duration, proc.pid, wrk, work)
            )
            r = rows[-1]
            print(
                f"   {c:>3} clients {peer.name}: {r.rps:8.1f} req/s p99 {r.p99_ms:.1f} ms, "
                f"server CPU {r.cpu_ms_per_req or 0:.2f} ms/request, {r.errors} errors",
                flush=True,
            )
    except RuntimeError as exc:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return rows, f"{exc} (log tail: {' | '.join(tail)})"
    finally:
        peers.stop(proc)
    return rows, None


async def _overload(url: str, body: bytes, ctype: str, clients: int, warmup: float, duration: float) -> Any:
    import collections

    import httpx

    statuses: collections.Counter[int] = collections.Counter()
    accepted: list[float] = []
    no_answer = 0
    start = time.perf_counter()
    t0, t1 = start + warmup, start + warmup + duration

    async def one() -> None:
        nonlocal no_answer
        # verify=False: plain HTTP, and building 256 certificate stores costs seconds on a loaded box
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=60.0, verify=False) as client:
            while (s := time.perf_counter()) < t1:
                try:
                    r = await client.post(url, content=body, headers={"content-type": ctype})
                    status: int | None = r.status_code
                except httpx.HTTPError:
                    status = None
                e = time.perf_counter()
                if t0 <= e <= t1:
                    if status is None:
                        no_answer += 1
                    else:
                        statuses[status] += 1
                        if status == 200:
                            accepted.append(e - s)
                if status is not None and status != 200:
                    await asyncio.sleep(0.05)  # a shed client backs off a little, as Retry-After asks

    await asyncio.gather(*(one() for _ in range(clients)))
    return statuses, accepted, no_answer


# Overload with wrk: one thread per connection (-t = -c), so each thread's Lua state belongs to
# one connection and request() -> response() times one request; only 200s are timed, every
# status is counted, and a shed connection waits BACKOFF_MS before its next request (as the
# Python generator does, as Retry-After asks). done() merges the threads' tables.
OVERLOAD_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local backoff = tonumber(os.getenv("BENCH_BACKOFF_MS") or "50")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) accepted = {}; statuses = {}; shed = false; t0 = 0 end
function request() t0 = now_us(); return wrk.format() end
function delay() if shed then return backoff end return 0 end
function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  shed = status ~= 200
  if status == 200 then accepted[#accepted + 1] = now_us() - t0 end
end
function done(summary, latency, requests)
  local all, counts = {}, {}
  for _, t in ipairs(threads) do
    for _, v in ipairs(t:get("accepted")) do all[#all + 1] = v end
    for k, n in pairs(t:get("statuses")) do counts[k] = (counts[k] or 0) + n end
  end
  table.sort(all)
  local function pct(q) if #all == 0 then return -1 end return all[math.max(1, math.ceil(#all * q))] end
  local parts = {}
  for k, n in pairs(counts) do parts[#parts + 1] = string.format('"%s": %d', k, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"duration_us": %d, "statuses": {%s}, "accepted": %d, "p50_us": %.1f, "p99_us": %.1f, '
    .. '"connect": %d, "read": %d, "write": %d, "timeout": %d}\n',
    summary.duration, table.concat(parts, ", "), #all, pct(0.50), pct(0.99),
    e.connect, e.read, e.write, e.timeout))
end
"""
BACKOFF_MS = 50


def drive_overload_wrk(
    wrk: str, work: Path, url: str, body: bytes, ctype: str, clients: int, warmup: float, duration: float
) -> Any:
    """Ours past saturation with wrk (C, cheap, so the server keeps the cores): statuses counted,
    the latency of 200s only (OVERLOAD_LUA)."""
    from bench._fallback_goals import Overload

    script = work / "overload.lua"
    script.write_text(OVERLOAD_LUA)
    body_file = work / "body-overload.bin"
    body_file.write_bytes(body)
    env = dict(os.environ, BENCH_BODY=str(body_file), BENCH_CTYPE=ctype, BENCH_BACKOFF_MS=str(BACKOFF_MS))

    def run(seconds: float) -> tuple[dict[str, Any], float, float]:
        cmd = [wrk, f"-t{clients}", f"-c{clients}", f"-d{max(1, round(seconds))}s", "--timeout", "60s"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "-s", str(script), url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        out = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"wrk (overload) failed: {' '.join(cmd)}\n{out[-2000:]}")
        return json.loads(line[6:]), usage.ru_utime + usage.ru_stime, time.perf_counter() - t0

    warm, _, _ = run(warmup)
    drain(warm["p99_us"] / 1e6 if warm["accepted"] else MAX_DRAIN_S)
    summary, cpu, wall = run(duration)
    statuses = {int(k): int(n) for k, n in summary["statuses"].items()}
    no_answer = sum(int(summary[k]) for k in ("connect", "read", "write", "timeout"))
    o = Overload(clients, statuses, summary["p99_us"] / 1e3 if summary["accepted"] else float("nan"), no_answer)
    seconds = summary["duration_us"] / 1e6
    print(
        f"   {clients:>3} clients ours (overload, wrk): {summary['accepted'] / seconds:8.1f} req/s accepted, "
        f"statuses {dict(sorted(statuses.items()))}, {no_answer} without an answer, accepted p50 "
        f"{summary['p50_us'] / 1e3:.1f} ms p99 {o.accepted_p99_ms:.1f} ms; wrk "
        f"{cpu / (wall * (os.cpu_count() or 1)):.0%} of the machine's CPU",
        flush=True,
    )
    return o


def drive_overload(url: str, body: bytes, ctype: str, clients: int, warmup: float, duration: float) -> Any:
    """Ours past saturation when wrk is missing: every answer's status counted and the latency
    of the 200s only; the Python generator, so its own CPU competes with the server here."""
    from bench._fallback_goals import Overload

    statuses, accepted, no_answer = _run(_overload(url, body, ctype, clients, warmup, duration))
    o = Overload(clients, dict(statuses), pct(accepted, 99) * 1e3, no_answer)
    print(
        f"   {clients:>3} clients ours (overload, python generator): {len(accepted) / duration:8.1f} req/s accepted, "
        f"statuses {dict(sorted(statuses.items()))}, {no_answer} without an answer, accepted p99 "
        f"{o.accepted_p99_ms:.1f} ms",
        flush=True,
    )
    return o


def bare_p50_ms(path: Path, duration: float) -> float:
    """p50 of a batch-1 ``session.run`` with all intra-op threads (ORT's default count, no
    spinning as in ours): the floor for one client."""
    _, times, _ = _limit_run(path, 1, 1, 0, duration)
    p50 = pct(times, 50) * 1e3
    print(f"     1 client bare session.run (batch 1, all intra-op threads): p50 {p50:.2f} ms", flush=True)
    return p50


def goal_figures(
    model: str, rows: list[Result], levels: list[int], bare: float | None, overload: Any, peer_names: list[str]
) -> Any:
    from bench._fallback_goals import Figures, Measured

    by = {(r.system, r.clients): r for r in rows if r.model == model}

    def m(system: str, c: int) -> Measured | None:
        r = by.get((system, c))
        return Measured(r.rps, r.p50_ms, r.p99_ms) if r else None

    c32 = 32 if 32 in levels else max(levels)
    ours32, limit32 = m("ours", c32), m("limit", c32)
    assert ours32 and limit32
    peers32 = {n: p for n in peer_names if (p := m(n, c32))}
    return Figures(model, ours32, limit32, m("ours", 1), bare, peers32, overload)


def peer_table(rows: list[Result], model: str, levels: list[int], peer_names: list[str]) -> str:
    by = {(r.system, r.clients): r for r in rows if r.model == model}
    out = [f"\n{model}: peers beside ours (req/s, p50 / p99 ms, server CPU ms per request, ours/peer in req/s)"]
    for c in levels:
        o = by.get(("ours", c))
        for n in ["ours", *peer_names]:
            r = by.get((n, c))
            if r is None or o is None:
                continue
            ratio = f"{o.rps / r.rps:.2f}x" if r.rps else "-"
            out.append(
                f"{c:>7} {n:<9} {r.rps:>9.1f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.cpu_ms_per_req or 0:>6.2f}"
                f" {ratio:>7} errors {r.errors}"
            )
    return "\n".join(out)


# ---- main ---------------------------------------------------------------------------------


def _cpu_ratio(seed: Result, ours: Result) -> float:
    """How many times less server CPU ours spends per answered request than the seed."""
    if not seed.cpu_ms_per_req or not ours.cpu_ms_per_req:
        return float("nan")
    return seed.cpu_ms_per_req / ours.cpu_ms_per_req


def _div(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (a server that answered nothing in its window on a loaded box)."""
    return a / b if b else float("nan")


def table(rows: list[Result], model: str, levels: list[int]) -> str:
    by = {(r.system, r.clients): r for r in rows if r.model == model}
    out = [
        f"\n{model}: requests/s, p50 / p99 ms, server CPU ms per request (limit: session.run, no HTTP)",
        f"{'clients':>7} | {'seed rps':>9} {'p50':>7} {'p99':>7} {'cpu':>5} | {'ours rps':>9} {'p50':>7}"
        f" {'p99':>7} {'cpu':>5} {'batch':>5} | {'limit rps':>9} {'cpu':>5} | {'ours/seed':>9} {'of limit':>8}"
        f" {'cpu ratio':>9}",
    ]
    for c in levels:
        s, o, lim = by.get(("seed", c)), by.get(("ours", c)), by.get(("limit", c))
        if not (s and o and lim):
            continue
        out.append(
            f"{c:>7} | {s.rps:>9.1f} {s.p50_ms:>7.1f} {s.p99_ms:>7.1f} {s.cpu_ms_per_req or 0:>5.2f} | "
            f"{o.rps:>9.1f} {o.p50_ms:>7.1f} {o.p99_ms:>7.1f} {o.cpu_ms_per_req or 0:>5.2f}"
            f" {o.mean_batch or 0:>5.1f} | {lim.rps:>9.1f} {lim.cpu_ms_per_req or 0:>5.2f} | "
            f"{_div(o.rps, s.rps):>8.2f}x {_div(o.rps, lim.rps):>7.0%} {_cpu_ratio(s, o):>8.2f}x"
        )
        v = by.get(("variant", c))
        if v:
            out.append(
                f"{'variant':>7} | {'':>31} | {v.rps:>9.1f} {v.p50_ms:>7.1f} {v.p99_ms:>7.1f}"
                f" {v.cpu_ms_per_req or 0:>5.2f} {'':>5} | {'':>15} | {_div(v.rps, s.rps):>8.2f}x"
                f" {_div(v.rps, lim.rps):>7.0%} {_cpu_ratio(s, v):>8.2f}x"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench fallback", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s per case instead of 8, clients 1,32")
    p.add_argument("--duration", type=float, help="seconds measured per case")
    p.add_argument("--clients", help="comma-separated concurrency levels (default 1,8,32,64)")
    p.add_argument("--models", default="digits,mobilenet_v2", help="digits and/or mobilenet_v2")
    p.add_argument("--cache", type=Path, default=CACHE, help="where built models are kept")
    p.add_argument("--ours-args", default="", help="extra options for edgefleet-cloud serve")
    p.add_argument(
        "--variant",
        default="--processes 2",
        help='options added to --ours-args for a third server measured alongside ("" to skip)',
    )
    p.add_argument(
        "--seed-uvicorn",
        choices=sorted(SEED_UVICORN),
        default="plain",
        help="plain: the seed's server as its Dockerfile installs it (uvicorn without "
        "httptools/uvloop: h11 + asyncio); auto: let it use them when installed",
    )
    p.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="load generator: wrk (C, cheap; apt-get install wrk), python (httpx, costs "
        "the servers CPU on a small box), auto: wrk when installed",
    )
    p.add_argument(
        "--peers",
        default="all",
        help="serving peers measured beside ours: none, all, or a comma list of bentoml, litserve, mosec "
        "(each in its own venv under ~/.cache/edgefleet/peers, built on first use)",
    )
    p.add_argument("--overload-clients", type=int, default=256, help="clients for ours' overload case (0 to skip)")
    args = p.parse_args(argv)
    from bench import peers as peers_mod

    try:
        wanted_peers = peers_mod.select(args.peers)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    wrk = shutil.which("wrk") if args.loadgen != "python" else None
    if args.loadgen == "wrk" and not wrk:
        print("--loadgen wrk: wrk is not on PATH (apt-get install wrk)", file=sys.stderr)
        return 2
    if not wrk and args.loadgen == "auto":
        print(
            "WARNING: wrk not found (apt-get install wrk); using the Python load generator, which "
            "competes with the servers for CPU - see the load generator share printed per case",
            flush=True,
        )
    levels = [int(c) for c in (args.clients or ("1,32" if args.quick else "1,8,32,64")).split(",")]
    duration = args.duration or (2.0 if args.quick else 8.0)
    warmup = 0.5 if args.quick else 1.5
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    args.cache.mkdir(parents=True, exist_ok=True)

    models: dict[str, tuple[Path, list[str]]] = {}
    if "digits" in wanted:
        models["digits"] = build_digits(args.cache)
    if "mobilenet_v2" in wanted:
        labels_file = CORAL / "imagenet_labels.txt"
        labels = labels_file.read_text().splitlines()[:1000] if labels_file.exists() else []
        models["mobilenet_v2"] = (build_mobilenet(args.cache), labels or [str(i) for i in range(1000)])
    images = upload_images()
    extra = args.ours_args.split()
    variant = args.variant.split()
    max_batch = 4  # edgefleet-cloud serve's default
    if "--max-batch" in extra:
        max_batch = int(extra[extra.index("--max-batch") + 1])

    workers = os.cpu_count() or 1  # ours' default: one worker thread per CPU
    peer_info: dict[str, dict[str, Any]] = {}
    ready_peers = []
    for peer in wanted_peers:
        try:
            version = peers_mod.ensure(peer)
        except peers_mod.PeerUnavailable as exc:
            peer_info[peer.name] = {"unavailable": str(exc)}
            print(f"peer {peer.name}: cannot be installed here: {exc}", flush=True)
            continue
        peer_info[peer.name] = {**peer.config(max_batch, workers), "version": version}
        ready_peers.append(peer)
        print(f"peer {peer.name} {version}: {peer_info[peer.name]['batching']}", flush=True)
    peer_names = [p_.name for p_ in wanted_peers]

    rows: list[Result] = []
    bare: dict[str, float] = {}
    overloads: dict[str, Any] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-fallback-") as tmp:
        work = Path(tmp)
        bundles, root = signed_folder(work, models)
        for name, (path, _) in models.items():
            body, ctype = multipart(images[name], "upload.jpg" if name != "digits" else "digit.png")
            print(f"== {name}: seed (bench/seed_api.py) and ours (edgefleet-cloud serve), alternating", flush=True)
            seed = start_seed(path, work, args.seed_uvicorn)
            ours = start_ours(bundles, root, work, extra)
            alt = start_ours(bundles, root, work, extra + variant, "variant") if variant else None
            try:
                wait_ready(seed, body, ctype, "/predict")
                wait_ready(ours, body, ctype, f"/predict?model={name}")
                if alt:
                    wait_ready(alt, body, ctype, f"/predict?model={name}")
                for i, c in enumerate(levels):
                    order = ["seed", "ours"] if i % 2 == 0 else ["ours", "seed"]
                    if alt:
                        order.insert(1, "variant")
                    for system in order:
                        if system == "seed":
                            rows.append(
                                drive(
                                    name,
                                    "seed",
                                    seed.url + "/predict",
                                    body,
                                    ctype,
                                    c,
                                    warmup,
                                    duration,
                                    seed.proc.pid,
                                    wrk,
                                    work,
                                )
                            )
                        elif system == "variant" and alt:
                            # batch sizes are not read: /metrics answers for one process of several
                            rows.append(
                                drive(
                                    name,
                                    "variant",
                                    f"{alt.url}/predict?model={name}",
                                    body,
                                    ctype,
                                    c,
                                    warmup,
                                    duration,
                                    alt.proc.pid,
                                    wrk,
                                    work,
                                )
                            )
                        else:
                            s0, n0 = batch_stats(ours.url, name)
                            r = drive(
                                name,
                                "ours",
                                f"{ours.url}/predict?model={name}",
                                body,
                                ctype,
                                c,
                                warmup,
                                duration,
                                ours.proc.pid,
                                wrk,
                                work,
                            )
                            s1, n1 = batch_stats(ours.url, name)
                            rows.append(
                                Result(**{**asdict(r), "mean_batch": (s1 - s0) / (n1 - n0) if n1 > n0 else None})
                            )
                        print(
                            f"   {c:>3} clients {system}: {rows[-1].rps:8.1f} req/s "
                            f"p99 {rows[-1].p99_ms:.1f} ms, server CPU {rows[-1].cpu_ms_per_req or 0:.2f} "
                            f"ms/request; load generator ({rows[-1].loadgen}) "
                            f"{rows[-1].loadgen_cpu_share or 0:.0%} of the machine's CPU",
                            flush=True,
                        )
                    # the limit right after, servers idle: the same background load as the two above
                    rows.append(limit_loop(name, path, c, max_batch, max(1.0, duration / 2)))
                    if c == 1:
                        bare[name] = bare_p50_ms(path, max(1.0, duration / 2))
                if args.overload_clients:
                    # 256 clients need a while to connect and cycle: at least 2 s + 4 s
                    if wrk:
                        overloads[name] = drive_overload_wrk(
                            wrk,
                            work,
                            f"{ours.url}/predict?model={name}",
                            body,
                            ctype,
                            args.overload_clients,
                            max(warmup, 2.0),
                            max(duration, 4.0),
                        )
                    else:
                        overloads[name] = drive_overload(
                            f"{ours.url}/predict?model={name}",
                            body,
                            ctype,
                            args.overload_clients,
                            max(warmup, 2.0),
                            max(duration, 4.0),
                        )
            finally:
                seed.stop()
                ours.stop()
                if alt:
                    alt.stop()
            # peers one at a time, each alone with its own processes: none idles beside another
            for peer in ready_peers:
                print(f"== {name}: peer {peer.name}", flush=True)
                peer_rows, why = run_peer(
                    peer, name, path, body, ctype, levels, warmup, duration, max_batch, workers, wrk, work
                )
                rows.extend(peer_rows)
                if why:
                    peer_info[peer.name].setdefault("failed", {})[name] = why
                    print(f"peer {peer.name} on {name}: did not run: {why}", flush=True)

    from bench import _fallback_goals

    goals = []
    for name in models:
        print(table(rows, name, levels))
        print(peer_table(rows, name, levels, peer_names))
        goals += _fallback_goals.check(
            goal_figures(name, rows, levels, bare.get(name), overloads.get(name), peer_names)
        )
    for n, info in peer_info.items():
        state = (
            f"unavailable: {info['unavailable']}" if "unavailable" in info else f"{info['version']}: {info['batching']}"
        )
        print(f"peer {n} {state}" + (f"; failed: {info['failed']}" if info.get("failed") else ""))
    by = {(r.model, r.system, r.clients): r for r in rows}
    head_model = "mobilenet_v2" if "mobilenet_v2" in models else next(iter(models))
    head_c = 32 if 32 in levels else levels[-1]
    h_ours, h_seed, h_lim = (by[(head_model, sys_, head_c)] for sys_ in ("ours", "seed", "limit"))
    cases = [asdict(r) for r in rows]
    for name in models:
        for c in levels:
            o, s, lim_c = by[(name, "ours", c)], by[(name, "seed", c)], by[(name, "limit", c)]
            cases.append(
                {
                    "model": name,
                    "clients": c,
                    "summary": True,
                    "ratio_vs_seed": o.rps / s.rps if s.rps else None,
                    "fraction_of_limit": o.rps / lim_c.rps if lim_c.rps else None,
                    "p99_not_worse": o.p99_ms <= s.p99_ms,
                    "cpu_per_request_ratio_vs_seed": _cpu_ratio(s, o),
                    "cpu_efficiency_vs_limit": (
                        lim_c.cpu_ms_per_req / o.cpu_ms_per_req if lim_c.cpu_ms_per_req and o.cpu_ms_per_req else None
                    ),
                }
            )
            v = by.get((name, "variant", c))
            if v:
                cases[-1]["variant_ratio_vs_seed"] = v.rps / s.rps if s.rps else None
                cases[-1]["variant_fraction_of_limit"] = v.rps / lim_c.rps if lim_c.rps else None
                cases[-1]["variant_p99_not_worse"] = v.p99_ms <= s.p99_ms
    path = report.write(
        "fallback",
        "req/s",
        True,
        h_ours.rps,
        h_seed.rps,
        h_lim.rps,
        params={
            "headline": f"{head_model} at {head_c} clients",
            "clients": levels,
            "duration_s": duration,
            "warmup_s": warmup,
            "models": list(models),
            "max_batch": max_batch,
            "ours_args": extra,
            "variant_args": variant,
            "seed_uvicorn": args.seed_uvicorn,
            "loadgen": "wrk -t1 (one connection per client)" if wrk else "python httpx",
            "loadgen_cpu_share_at_headline": {"ours": h_ours.loadgen_cpu_share, "seed": h_seed.loadgen_cpu_share},
            "goal": ">=3x seed throughput, p99 no worse, >=70% of limit at 32 clients",
            "p99_ms": {"ours": h_ours.p99_ms, "seed": h_seed.p99_ms},
            "three_x_seed_fraction_of_limit": 3 * h_seed.rps / h_lim.rps if h_lim.rps else None,
            # other work on the machine skews every figure: record it next to them
            "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
            "peers": peer_info,
            "bare_session_run_p50_ms": bare,
            "overload": {n: asdict(o) for n, o in overloads.items()},
            "goals_issue_20": [asdict(g) for g in goals],
        },
        cases=cases,
    )
    print(
        f"\nheadline ({head_model}, {head_c} clients): ours {h_ours.rps:.1f} req/s vs seed {h_seed.rps:.1f} "
        f"({_div(h_ours.rps, h_seed.rps):.2f}x), p99 {h_ours.p99_ms:.1f} vs {h_seed.p99_ms:.1f} ms, "
        f"{h_ours.rps / h_lim.rps:.0%} of the in-process limit ({h_lim.rps:.1f})"
    )
    need = 3 * h_seed.rps
    print(
        f"goal check: 3x the seed = {need:.1f} req/s = {need / h_lim.rps:.0%} of the in-process limit"
        + (
            " - more than session.run alone reaches here, so no server running this model can meet it"
            if need > h_lim.rps
            else " - reachable in principle"
        )
    )
    print(
        f"server CPU per request at {head_c} clients: ours {h_ours.cpu_ms_per_req or 0:.2f} ms, seed "
        f"{h_seed.cpu_ms_per_req or 0:.2f} ms, limit (session.run only) {h_lim.cpu_ms_per_req or 0:.2f} ms"
    )
    print(
        f"load average (1 min) before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} "
        f"on {os.cpu_count()} CPUs: other processes share these cores"
    )
    print(_fallback_goals.report(goals))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
