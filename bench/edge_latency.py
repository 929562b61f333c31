"""Edge latency on this CPU: float32 TFLite vs full-int8 TFLite vs onnxruntime, 1 and 2 threads.

    python -m bench edge_latency [--quick]

Models: the digits CNN and Keras MobileNetV2 (weights=None) built by our compiler in this run
(224x224; 96x96 with --quick), and Coral's real quantized models (mobilenet_v2_1.0_224_quant,
mobilenet_v1_0.25_128_quant) when ../shared/models/coral is present. Reports median latency of
single-sample invokes, size and accuracy (digits: the 360 held-out images; Coral models: top-1
on cat_720p.jpg / grace_hopper.bmp vs the labels Coral documents; MobileNetV2 with random weights:
none). "ours" is int8 TFLite MobileNetV2 at 1 thread, "baseline" float TFLite of the same
model, so ratio_vs_baseline = float / int8 latency (> 1 means int8 is faster).

The seed's "-60 % latency with int8" is an Edge TPU / ARM figure (Coral: 2.6 ms on the Edge TPU
vs 51 ms on a desktop CPU for MobileNet v2). On x86 the int8/float ratio depends on the CPU's
int8 instructions (VNNI/AMX); the bench prints what it measured, with that caveat.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SEED_NOTE = (
    "the seed's -60 % int8 latency is an Edge TPU / ARM figure (Coral: MobileNet v2 2.6 ms on the "
    "Edge TPU vs 51 ms on a desktop CPU), not a property of int8 on any CPU"
)
# what Coral's test_data README says each model answers (../shared/models/coral/README.md)
CORAL_EXPECT = {
    "mobilenet_v2_1.0_224_quant.tflite": {"cat_720p.jpg": "Egyptian cat", "grace_hopper.bmp": "military uniform"},
    "mobilenet_v1_0.25_128_quant.tflite": {"cat_720p.jpg": "tiger cat"},
}


def _coral_dir() -> Path | None:
    env = os.environ.get("EDGEFLEET_CORAL_MODELS")
    for c in ([Path(env)] if env else []) + [REPO.parent / "shared" / "models" / "coral"]:
        if (c / "mobilenet_v2_1.0_224_quant.tflite").exists():
            return c
    return None


def _time(fn: Any, runs: int, warmup: int = 10) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return statistics.median(ts) * 1e3, ts[int(0.9 * (len(ts) - 1))] * 1e3


def _tflite_case(
    model: str, artifact: str, data: bytes, x: np.ndarray, threads: int, runs: int, accuracy: float | None
) -> dict[str, Any]:
    from compiler.inference import TfliteRunner

    r = TfliteRunner(data, artifact, threads=threads)
    raw = r.input.quantize(x[:1]).reshape(r.input.shape)
    med, p90 = _time(lambda: r.run_raw(raw), runs)
    return {
        "model": model,
        "artifact": artifact,
        "runtime": "ai_edge_litert",
        "threads": threads,
        "median_ms": round(med, 4),
        "p90_ms": round(p90, 4),
        "size_bytes": len(data),
        "accuracy": accuracy,
    }


def _onnx_case(
    model: str, data: bytes, x: np.ndarray, threads: int, runs: int, accuracy: float | None
) -> dict[str, Any]:
    from compiler.inference import OnnxRunner

    r = OnnxRunner(data, threads=threads)
    one = x[:1].astype(np.float32)
    med, p90 = _time(lambda: r.session.run(None, {r.input_name: one}), runs)
    return {
        "model": model,
        "artifact": "model.onnx",
        "runtime": "onnxruntime",
        "threads": threads,
        "median_ms": round(med, 4),
        "p90_ms": round(p90, 4),
        "size_bytes": len(data),
        "accuracy": accuracy,
    }


def _build(cmd: list[str]) -> None:
    proc = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"edge_latency: build failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")


def _bundle_cases(name: str, d: Path, x: np.ndarray, y: np.ndarray | None, runs: int) -> list[dict[str, Any]]:
    from compiler.inference import OnnxRunner, TfliteRunner

    cases = []
    for art in ("model_float.tflite", "model_int8.tflite", "model.onnx"):
        data = (d / art).read_bytes()
        acc = None
        if y is not None:
            scores = OnnxRunner(data).scores(x) if art.endswith(".onnx") else TfliteRunner(data).scores(x)
            acc = round(float((scores.argmax(axis=1) == y).mean()), 4)
        for threads in (1, 2):
            cases.append(
                _onnx_case(name, data, x, threads, runs, acc)
                if art.endswith(".onnx")
                else _tflite_case(name, art, data, x, threads, runs, acc)
            )
    return cases


def _coral_cases(coral: Path, runs: int) -> list[dict[str, Any]]:
    from PIL import Image

    from compiler.inference import TfliteRunner

    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    cases = []
    for fname, expect in CORAL_EXPECT.items():
        data = (coral / fname).read_bytes()
        r = TfliteRunner(data, fname)
        h, w = r.input.shape[1:3]
        hits = 0
        for img, want in expect.items():
            px = np.asarray(Image.open(coral / img).convert("RGB").resize((w, h)), np.uint8)[None]
            hits += labels[int(r.run_raw(px).argmax())] == want
        for threads in (1, 2):
            rt = TfliteRunner(data, fname, threads=threads)
            px = np.zeros(rt.input.shape, rt.input.dtype)
            med, p90 = _time(lambda rt=rt, px=px: rt.run_raw(px), runs)
            cases.append(
                {
                    "model": fname.removesuffix(".tflite"),
                    "artifact": "coral uint8",
                    "runtime": "ai_edge_litert",
                    "threads": threads,
                    "median_ms": round(med, 4),
                    "p90_ms": round(p90, 4),
                    "size_bytes": len(data),
                    "accuracy": hits / len(expect),
                }
            )
    return cases


def _ratio(cases: list[dict[str, Any]], model: str, threads: int) -> float | None:
    f = [
        c["median_ms"]
        for c in cases
        if c["model"] == model and c["artifact"] == "model_float.tflite" and c["threads"] == threads
    ]
    q = [
        c["median_ms"]
        for c in cases
        if c["model"] == model and c["artifact"] == "model_int8.tflite" and c["threads"] == threads
    ]
    return round(q[0] / f[0], 3) if f and q and f[0] > 0 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench edge_latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="MobileNetV2 at 96x96 and 50 invokes (default 224, 200)")
    p.add_argument("--runs", type=int, help="invokes per case (default 200, 50 with --quick)")
    a = p.parse_args(argv)
    runs = a.runs or (50 if a.quick else 200)
    size = 96 if a.quick else 224
    sys.path.insert(0, str(REPO))
    from bench.report import write
    from compiler import digits

    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmp:
        t = Path(tmp)
        print(
            f"building digits and MobileNetV2-{size} with the compiler (TensorFlow, ~{20 if a.quick else 60} s)...",
            file=sys.stderr,
        )
        _build(["-m", "compiler", "digits", "--out", str(t / "digits"), "--quiet"])
        _build(
            [
                str(REPO / "examples" / "mobilenet" / "build.py"),
                "--out",
                str(t / "mnv2"),
                "--size",
                str(size),
                "--samples",
                "8",
                "--quiet",
            ]
        )
        split = digits.load_split(0)
        cases = _bundle_cases("digits_cnn", t / "digits", digits.to_float(split.test_pixels), split.test_y, runs)
        xm = np.random.default_rng(0).uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
        mname = f"mobilenet_v2_{size}"
        cases += _bundle_cases(mname, t / "mnv2", xm, None, runs)
    coral = _coral_dir()
    if coral is not None:
        cases += _coral_cases(coral, runs)
    ours = next(
        c["median_ms"]
        for c in cases
        if c["model"] == mname and c["artifact"] == "model_int8.tflite" and c["threads"] == 1
    )
    base = next(
        c["median_ms"]
        for c in cases
        if c["model"] == mname and c["artifact"] == "model_float.tflite" and c["threads"] == 1
    )
    ratios = {f"{m}@{th}thr": _ratio(cases, m, th) for m in ("digits_cnn", mname) for th in (1, 2)}
    r1 = ratios[f"{mname}@1thr"] or 0.0
    measured = (
        f"measured here: int8/float latency {r1:.2f} for {mname} at 1 thread "
        f"({'int8 faster' if r1 < 0.9 else 'int8 slower' if r1 > 1.1 else 'about equal'}; "
        "x86 int8 speed depends on VNNI/AMX support, the reference machine saw ~1.1)"
    )
    path = write(
        "edge_latency",
        "ms",
        False,
        ours,
        base,
        None,
        {
            "runs": runs,
            "mobilenet_size": size,
            "quick": a.quick,
            "int8_over_float": ratios,
            "note": f"{SEED_NOTE}; {measured}",
            "coral_models": str(coral) if coral else None,
        },
        cases,
    )
    _print(cases, ratios)
    print(f"\nours (int8 {mname}, 1 thread) {ours:.3f} ms vs baseline (float) {base:.3f} ms; {measured}")
    print(f"note: {SEED_NOTE}")
    print(f"wrote {path}")
    return 0


def _print(cases: list[dict[str, Any]], ratios: dict[str, float | None]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edge latency on this CPU (median of single-sample invokes)")
    for col in ("model", "artifact", "runtime", "thr", "median ms", "p90 ms", "size", "accuracy"):
        t.add_column(col, justify="left" if col in ("model", "artifact", "runtime") else "right")
    for c in cases:
        acc = "-" if c["accuracy"] is None else f"{100 * c['accuracy']:.1f}%"
        t.add_row(
            c["model"],
            c["artifact"],
            c["runtime"],
            str(c["threads"]),
            f"{c['median_ms']:.3f}",
            f"{c['p90_ms']:.3f}",
            f"{c['size_bytes']:,}",
            acc,
        )
    con = Console(width=None if sys.stdout.isatty() else 130)
    con.print(t)
    for k, v in ratios.items():
        con.print(f"  int8/float latency {k}: {v}")


if __name__ == "__main__":
    sys.exit(main())
