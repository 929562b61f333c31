"""Closing the loop (issue 18 part 6): a drifting fleet's hard examples retrain the digits model,
which is compiled, gated, shipped as a delta and rolled out through benchmark and shadow stages.

    python examples/flywheel/flywheel.py [--state .edgefleet/flywheel] [--agents 3] [--traffic 600]

Every step runs the project's own programs, as an operator would:

1. a private Mosquitto on a free port (``--broker URL`` to use another), the hub's keys, and
   ``edgefleet-hub serve`` on SQLite;
2. v1: the digits CNN trained on scikit-learn's digits (``train.py``, a child process) and
   compiled by ``edgefleet-compile build`` (full-int8, accuracy gate, Edge TPU step when
   ``edgetpu_compiler`` is on PATH), pushed with ``edgefleet-hub models push``;
3. ``--agents`` real ``edgefleet-agent`` processes with hard examples on (threshold
   ``--threshold`` on the top score), v1 rolled out to them;
4. drifted traffic: training digits rotated 20-35 degrees, shifted by up to a pixel, dimmed and
   noised, posted as PNGs to the agents' local APIs; the unsure answers become hard examples the
   agents upload to the hub;
5. ``edgefleet-hub hard-examples export``, then labelling: the true label of every exported image
   is known here (its bytes are the PNG this script sent), so the script fills ``labels.csv``.
   In real life a person relabels the folder;
6. v2: v1 fine-tuned on the original training digits plus the hard examples, compiled by
   ``edgefleet-compile build`` (its float->int8 gate) and gated by this script: v2 must beat v1
   on drifted digits no device has sent, and lose at most ``--max-clean-drop`` points on the
   clean held-out digits (exit 3 otherwise: nothing is rolled out);
7. ``edgefleet-hub rollouts create --stage benchmark --stage shadow``: the hub makes a delta from
   v1 where it is worth it, the agents benchmark and shadow v2 on live (drifted) requests, then
   install it;
8. a summary (and ``summary.json`` in the state directory): hard examples, accuracy of both
   models on drifted and clean digits, delta and full sizes, each device's stage figures, and
   the time against the 15-minute goal.

Exit codes: 0 the loop closed; 1 a step failed (the message names it, logs under
STATE/logs); 2 bad arguments; 3 v2 did not pass the gate (nothing rolled out).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from compiler import digits  # noqa: E402
from demo.client import get_json, png_bytes, post_image, top1  # noqa: E402
from demo.launcher import Fleet, LaunchError, tail  # noqa: E402

GOAL_S = 15 * 60
MODEL = "digits"
SEED = 0


class NotPromoted(Exception):
    """v2 did not pass the flywheel's gate; the message names the figure."""


# ---- data: pure ------------------------------------------------------------------------------
def drift(pixels: np.ndarray, seed: int) -> np.ndarray:
    """The fleet's new conditions: each (8, 8) uint8 digit rotated 20-35 degrees either way,
    shifted by up to one pixel, dimmed to 80 % and noised (sigma 18 of 255)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = np.empty_like(pixels)
    for i, p in enumerate(pixels):
        angle = float(rng.uniform(20, 35) * rng.choice([-1, 1]))
        f = ndimage.rotate(p.astype(np.float32), angle, reshape=False, order=1, mode="constant")
        f = ndimage.shift(f, (int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), order=0)
        f = f * 0.8 + rng.normal(0.0, 18.0, f.shape)
        out[i] = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return out


def accuracy(tflite: Path, pixels: np.ndarray, y: np.ndarray) -> float:
    """Top-1 of a bundle's int8 model on (N, 8, 8) uint8 pixels, run by LiteRT as a device's CPU
    runs it (pixel / 255, quantized with the model's input scale and zero point)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]
    hits = 0
    for p, label in zip(digits.to_float(pixels), y, strict=True):
        q = np.clip(np.round(p / scale + zero), -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], q[None])
        it.invoke()
        hits += int(int(it.get_tensor(out["index"])[0].argmax()) == int(label))
    return hits / len(y)


def relabel(export: Path, truth: dict[str, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Fill ``labels.csv`` of an exported folder from ``truth`` (sha256 of the PNG sent -> label)
    and return the images as (N, 8, 8) pixels, their labels, and how many v1 got wrong."""
    from PIL import Image

    path = export / "labels.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise LaunchError(f"{path} lists no hard examples")
    pixels, labels, wrong = [], [], 0
    for row in rows:
        data = (export / "images" / row["file"].removeprefix("images/")).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha not in truth:
            raise LaunchError(f"{row['file']}: sha256 {sha[:12]}... is not an image this run sent")
        row["label"] = str(truth[sha])
        wrong += int(row["predicted"] != row["label"])
        with Image.open(export / "images" / Path(row["file"]).name) as im:
            pixels.append(np.asarray(im.convert("L"), dtype=np.uint8))
        labels.append(truth[sha])
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return np.stack(pixels), np.asarray(labels, dtype=np.int64), wrong


# ---- the loop --------------------------------------------------------------------------------
@dataclass
class Clock:
    start: float
    marks: dict[str, float]

    def mark(self, step: str) -> None:
        self.marks[step] = round(time.monotonic() - self.start - sum(self.marks.values()), 1)
        print(f"  [{self.marks[step]:6.1f} s] {step}", flush=True)


def say(text: str) -> None:
    print(text, flush=True)


# float -> int8 top-1 loss the compiler's gate allows, in points. v2 is right on about half of
# the 360 drifted digits, many near a decision boundary: one point is under 4 images, and a CI
# run (2026-12-04) refused a v2 that lost 4 of 360 (13 changed answers, 4 net) to quantization.
# What v2 must show is that its int8 model beats v1's (--min-accuracy), which this does not loosen.
MAX_INT8_DROP = 2.0


def build(fleet: Fleet, keras_file: Path, cal: Path, val: Path, out: Path, version: str, *gate: str) -> dict[str, Any]:
    """``edgefleet-compile build``; its accuracy gate refusing the model (exit 3) is NotPromoted."""
    argv = fleet.module("compiler", "build", str(keras_file), "--calibration", str(cal), "--validation", str(val))
    drop = f"{MAX_INT8_DROP:g}"
    argv += ["--name", MODEL, "--version", version, "--out", str(out), "--max-accuracy-drop", drop, "--quiet"]
    try:
        fleet.run(f"compile-{version}", [*argv, *gate])
    except LaunchError:
        failed = out.with_name(out.name + ".gate-failed.json")
        if not failed.exists():
            raise
        checks = json.loads(failed.read_text()).get("gate", {}).get("checks", [])
        raise NotPromoted(
            "edgefleet-compile's gate: " + "; ".join(f"{c['name']}: {c['detail']}" for c in checks if not c["passed"])
        ) from None
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


def train(fleet: Fleet, data: Path, out: Path, *extra: str) -> None:
    argv = [fleet.python, str(Path(__file__).with_name("train.py")), "--data", str(data), "--out", str(out)]
    fleet.run(f"train-{out.stem}", [*argv, *extra])


def wait(what: str, check: Any, timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise LaunchError(f"timed out after {timeout:.0f} s waiting for {what}")


def hub_cli(fleet: Fleet, name: str, *args: str) -> str:
    return fleet.run(name, fleet.module("hub", *args, "--hub", fleet.hub_url, "--token", fleet.token))


def run(fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    clock = Clock(time.monotonic(), {})
    work = fleet.state / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    say("1. broker, keys, hub")
    fleet.start_broker(args.broker)
    fleet.init_keys()
    fleet.start_hub()
    say(f"   {fleet.broker_url} ({fleet.broker_kind}), hub {fleet.hub_url}")
    clock.mark("start")

    # the data: v1 trains on clean digits; the fleet then sees drifted ones. Traffic comes from
    # the training digits (drifted), the before/after figures from drifted held-out digits that
    # no device ever sends
    split = digits.load_split(SEED)
    rng = np.random.default_rng(SEED)
    pick = rng.choice(len(split.train_pixels), size=min(args.traffic, len(split.train_pixels)), replace=False)
    traffic_px, traffic_y = drift(split.train_pixels[pick], SEED + 1), split.train_y[pick]
    eval_px, eval_y = drift(split.test_pixels, SEED + 2), split.test_y
    cal = work / "calibration.npz"
    np.savez(cal, x=split.train_pixels[rng.choice(len(split.train_pixels), 300, replace=False)][..., None])
    clean_val, drift_val = work / "clean.npz", work / "drifted.npz"
    np.savez(clean_val, x=split.test_pixels[..., None], y=split.test_y)
    np.savez(drift_val, x=eval_px[..., None], y=eval_y)
    np.savez(work / "train-v1.npz", x=split.train_pixels, y=split.train_y)

    say("2. v1: train the digits CNN, compile (full-int8, gate), push")
    train(fleet, work / "train-v1.npz", work / "v1.keras")
    report_v1 = build(fleet, work / "v1.keras", cal, clean_val, work / "v1", "1.0.0")
    v1 = fleet.push(work / "v1")
    clock.mark("v1 trained, compiled and pushed")

    say(f"3. {args.agents} agents with hard examples on (top score < {args.threshold}), v1 rolled out")
    names = [f"flywheel-{i + 1}" for i in range(args.agents)]
    policy = (
        f"[hard_examples]\nenabled = true\nthreshold = {args.threshold}\n"
        "per_minute = 10000\nper_hour = 100000\nper_day = 1000000\n"
    )
    for n in names:
        fleet.start_agent(n, telemetry_interval=1.0, extra=policy)
    ports = {n: fleet.agent_port(n, timeout=60) for n in names}
    fleet.api("POST", "/api/v1/rollouts", {"bundle": v1["digest"], "target": {"devices": names}})

    def serving(n: str) -> str | None:
        active = get_json(f"http://127.0.0.1:{ports[n]}/v1/status", timeout=5).get("active") or {}
        return active.get("digest") if isinstance(active, dict) else None

    wait("v1 on every agent", lambda: all(serving(n) == v1["digest"] for n in names), 180)
    clock.mark("agents up, v1 rolled out")

    say(f"4. {len(traffic_px)} drifted digits to the agents")
    truth: dict[str, int] = {}
    hits = 0
    for i, (p, label) in enumerate(zip(traffic_px, traffic_y, strict=True)):
        png = png_bytes(p)
        truth[hashlib.sha256(png).hexdigest()] = int(label)
        answer = post_image(f"http://127.0.0.1:{ports[names[i % len(names)]]}/v1/predict", png, timeout=30)
        if "error" in answer:
            raise LaunchError(f"agent {names[i % len(names)]} could not serve: {answer['error']}")
        hits += int(top1(answer) == int(label))
    on_device_v1 = hits / len(traffic_px)

    def agent_counts() -> list[dict[str, Any]]:
        return [get_json(f"http://127.0.0.1:{ports[n]}/v1/status", timeout=5).get("hard_examples") or {} for n in names]

    def uploaded() -> int | None:
        hs = agent_counts()
        if any(h.get("pending", 1) for h in hs):
            return None
        kept = sum(int(h.get("counts", {}).get("sample", 0)) for h in hs)
        on_hub = fleet.api("GET", f"/api/v1/hard-examples?model={MODEL}&version=1.0.0&limit=1")["total"]
        return kept if on_hub == kept else None

    kept = wait("the agents' hard examples on the hub", uploaded, 180)
    clock.mark(f"traffic sent, {kept} hard examples uploaded")

    say("5. export the hard examples, label them")
    export = work / "hard-examples"
    hub_cli(fleet, "export", "hard-examples", "export", "--model", MODEL, "--version", "1.0.0", str(export))
    hard_px, hard_y, v1_wrong = relabel(export, truth)
    say(f"   {len(hard_y)} examples in {export}, v1 wrong on {v1_wrong} of them")
    clock.mark("exported and labelled")

    say("6. v2: fine-tune v1 on the training digits + the hard examples, compile, gate")
    x2 = np.concatenate([split.train_pixels, np.repeat(hard_px, args.repeat, axis=0)])
    y2 = np.concatenate([split.train_y, np.repeat(hard_y, args.repeat)])
    np.savez(work / "train-v2.npz", x=x2, y=y2)
    train(
        fleet,
        work / "train-v2.npz",
        work / "v2.keras",
        "--base",
        str(work / "v1.keras"),
        "--epochs",
        "6",
        "--lr",
        "5e-4",
    )
    v1_tflite = work / "v1" / "model_int8.tflite"
    acc = {"v1": {"drifted": accuracy(v1_tflite, eval_px, eval_y)}}
    acc["v1"]["clean"] = accuracy(v1_tflite, split.test_pixels, split.test_y)
    # the compiler's gate: v2's int8 top-1 on the drifted held-out digits must beat v1's (by a
    # sample: the floor is v1's accuracy plus one of the 360)
    floor = min(1.0, acc["v1"]["drifted"] + 1 / len(eval_y))
    report_v2 = build(fleet, work / "v2.keras", cal, drift_val, work / "v2", "1.1.0", "--min-accuracy", f"{floor:.6f}")
    v2_tflite = work / "v2" / "model_int8.tflite"
    acc["v2"] = {
        "drifted": accuracy(v2_tflite, eval_px, eval_y),
        "clean": accuracy(v2_tflite, split.test_pixels, split.test_y),
    }
    edgetpu = report_v2.get("edgetpu") or {}
    if not edgetpu.get("compiled"):
        say(f"   Edge TPU step skipped: {edgetpu.get('note', 'no edgetpu_compiler')}")
    say(
        f"   int8 top-1 on drifted held-out digits: v1 {acc['v1']['drifted']:.1%} -> v2 {acc['v2']['drifted']:.1%}; "
        f"clean: v1 {acc['v1']['clean']:.1%} -> v2 {acc['v2']['clean']:.1%}"
    )
    clock.mark("v2 trained, compiled and gated")
    if acc["v2"]["drifted"] <= acc["v1"]["drifted"]:
        raise NotPromoted(
            f"v2's int8 top-1 on drifted digits {acc['v2']['drifted']:.2%} is not above v1's {acc['v1']['drifted']:.2%}"
        )
    clean_drop = (acc["v1"]["clean"] - acc["v2"]["clean"]) * 100
    if clean_drop > args.max_clean_drop:
        raise NotPromoted(
            f"v2's int8 top-1 on clean digits fell {clean_drop:.1f} points "
            f"({acc['v1']['clean']:.2%} -> {acc['v2']['clean']:.2%}) > --max-clean-drop {args.max_clean_drop}"
        )

    say("7. push v2, staged rollout: benchmark, shadow, install")
    v2 = fleet.push(work / "v2")
    stage_policy = {
        "cohorts": ["100%"],
        "stages": {
            "benchmark": {"invokes": 50},
            # the two models are meant to disagree on drifted digits where v1 was wrong: the
            # shadow stage here guards against a broken candidate, not against change
            "shadow": {"min_inferences": 30, "min_agreement": args.min_agreement, "sample_rate": 1.0},
            "timeout_s": 300,
        },
    }
    rid = hub_cli(
        fleet,
        "rollout",
        "rollouts",
        "create",
        "--bundle",
        v2["digest"],
        *[a for n in names for a in ("--device", n)],
        "--stage",
        "benchmark",
        "--stage",
        "shadow",
        "--policy",
        json.dumps(stage_policy),
    ).strip()
    sent = [0]

    def completed() -> dict[str, Any] | None:
        for n in names:  # live, drifted requests for the shadow stage to compare on
            i = sent[0] % len(eval_px)
            sent[0] += 1
            post_image(f"http://127.0.0.1:{ports[n]}/v1/predict", png_bytes(eval_px[i]), timeout=30)
        st: dict[str, Any] = fleet.api("GET", f"/api/v1/rollouts/{rid}")
        if st["phase"] not in ("running", "completed"):
            raise LaunchError(f"rollout {rid} {st['phase']}: {st.get('reason')}")
        return st if st["phase"] == "completed" else None

    status = wait("the staged rollout to complete", completed, 600, every=0.2)
    wait("v2 serving on every agent", lambda: all(serving(n) == v2["digest"] for n in names), 60)
    clock.mark("staged rollout completed")

    # on the devices: v2's answers to the drifted held-out digits
    hits = 0
    for i, (p, label) in enumerate(zip(eval_px, eval_y, strict=True)):
        answer = post_image(f"http://127.0.0.1:{ports[names[i % len(names)]]}/v1/predict", png_bytes(p), timeout=30)
        hits += int(top1(answer) == int(label))
    on_device_v2 = hits / len(eval_y)

    stages = {
        d["device_id"]: {
            name: {"state": s["state"], "detail": s.get("detail"), "figures": s.get("figures")}
            for name, s in (d.get("stages") or {}).items()
        }
        for d in status["devices"]
    }
    total = round(time.monotonic() - clock.start, 1)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "agents": names,
        "traffic": len(traffic_px),
        "threshold": args.threshold,
        "hard_examples": {"kept_by_agents": kept, "exported": len(hard_y), "v1_wrong": v1_wrong},
        "accuracy": acc,
        "on_device": {"v1_on_traffic": on_device_v1, "v2_on_drifted_holdout": on_device_v2},
        "compiler": {
            "v1_gate": report_v1.get("gate"),
            "v2_gate": report_v2.get("gate"),
            "edgetpu": {"compiled": bool(edgetpu.get("compiled")), "note": edgetpu.get("note")},
        },
        "bundles": {"v1": v1["digest"], "v2": v2["digest"]},
        "delta": delta_figures(fleet, v2["digest"]),
        "rollout": {"id": rid, "phase": status["phase"], "counts": status["counts"], "stages": stages},
        "devices_on_v2": [n for n in names if serving(n) == v2["digest"]],
        "steps_s": clock.marks,
        "total_s": total,
        "goal_s": GOAL_S,
    }
    return summary


def delta_figures(fleet: Fleet, v2: str) -> dict[str, Any]:
    """What the v2 download cost each device, from the download reports the hub stored (there is
    no reports API; this reads the example's own SQLite file), and the delta the hub built, from
    its log line (a delta it judged not worth sending is kept only as an empty marker file)."""
    with sqlite3.connect(fleet.state / "hub.db") as db:
        rows = db.execute(
            "SELECT device, metrics FROM report WHERE stage = 'download' AND status = 'ok' AND bundle = ?", (v2,)
        ).fetchall()
        (size,) = db.execute("SELECT size FROM bundle WHERE digest = ?", (v2,)).fetchone()
    per_device: dict[str, dict[str, Any]] = {}
    for device, metrics in rows:
        m = json.loads(metrics) if isinstance(metrics, str) else (metrics or {})
        per_device[device] = {"delta": m.get("delta") or "full chunks", "received_bytes": m.get("received_bytes")}
    built = re.findall(
        rf"hub\.deltas: delta \w+ -> {v2[:12]}: ([\w-]+), (\d+) bytes, [\d.]+ % of the (\d+)-byte archive(.*)",
        (fleet.state / "logs" / "hub.log").read_text(errors="replace"),
    )
    delta = None
    if built:
        algo, nbytes, _, rest = built[-1]
        delta = {"algo": algo, "bytes": int(nbytes), "offered": "not worth it" not in rest}
    return {"full_bytes": size, "delta": delta, "per_device": per_device}


def print_summary(s: dict[str, Any]) -> None:
    a, h, d = s["accuracy"], s["hard_examples"], s["delta"]
    say("\n=== flywheel summary ===")
    say(f"hard examples: {h['kept_by_agents']} kept by the agents from {s['traffic']} drifted requests, ")
    say(f"  {h['exported']} exported and labelled (v1 was wrong on {h['v1_wrong']})")
    say(
        f"int8 top-1 on drifted held-out digits: v1 {a['v1']['drifted']:.1%} -> v2 {a['v2']['drifted']:.1%} "
        f"(on the devices after the rollout: {s['on_device']['v2_on_drifted_holdout']:.1%}); "
        f"clean: {a['v1']['clean']:.1%} -> {a['v2']['clean']:.1%}"
    )
    full, delta = d["full_bytes"], d["delta"]
    if delta is None:
        say(f"delta v1 -> v2: none built (see the hub log); full archive {full:,} B")
    else:
        offered = "offered" if delta["offered"] else "not offered: the hub sends one only under half the archive"
        say(
            f"delta v1 -> v2 ({delta['algo']}): {delta['bytes']:,} B of a {full:,} B archive "
            f"({100 * delta['bytes'] / full:.1f} %), {offered}"
        )
    for dev, rep in sorted(d["per_device"].items()):
        say(f"  {dev}: delta {rep['delta']}, received {rep['received_bytes']} B")
    say(f"rollout {s['rollout']['id']}: {s['rollout']['phase']} {s['rollout']['counts']}")
    for dev, stages in sorted(s["rollout"]["stages"].items()):
        for name, st in stages.items():
            say(f"  {dev} {name}: {st['state']} - {st['detail']}")
    et = s["compiler"]["edgetpu"]
    say(f"Edge TPU: {'compiled' if et['compiled'] else 'not compiled: ' + str(et['note'])}")
    verdict = "within" if s["total_s"] <= s["goal_s"] else "OVER"
    say(f"total {s['total_s']:.0f} s: {verdict} the {s['goal_s'] // 60}-minute goal; steps {s['steps_s']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="examples/flywheel/flywheel.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--state", type=Path, default=Path(".edgefleet/flywheel"), help="state directory (emptied first)")
    p.add_argument("--broker", metavar="mqtt://host:port", help="use this broker instead of a private mosquitto")
    p.add_argument("--agents", type=int, default=3, help="agent processes (default 3)")
    p.add_argument("--traffic", type=int, default=600, help="drifted requests before retraining (default 600)")
    p.add_argument("--threshold", type=float, default=0.8, help="hard example: top score below this (default 0.8)")
    p.add_argument("--repeat", type=int, default=3, help="times each hard example is repeated in v2's data")
    p.add_argument("--max-clean-drop", type=float, default=2.0, help="points v2 may lose on clean digits")
    p.add_argument(
        "--min-agreement", type=float, default=0.3, help="shadow stage: least top-1 agreement with v1 (default 0.3)"
    )
    a = p.parse_args(argv)
    if not 1 <= a.agents <= 10:
        p.error(f"--agents must be within 1..10, got {a.agents}")
    if not 30 <= a.traffic <= 1437:
        p.error(f"--traffic must be within 30..1437 (the training digits), got {a.traffic}")
    if not 0.0 < a.threshold <= 1.0:
        p.error(f"--threshold must be within (0, 1], got {a.threshold}")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    state: Path = args.state.resolve()
    fleet = Fleet(state, die_with_launcher=True)  # stops what a killed run left behind
    for leftover in ("store", "hub.db", "agents", "broker", "keys"):  # a fresh fleet every run
        target = state / leftover
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    try:
        summary = run(fleet, args)
    except NotPromoted as exc:
        say(f"v2 not promoted: {exc}")
        return 3
    except LaunchError as exc:
        say(f"flywheel failed: {exc}")
        for proc in fleet.procs:
            if not proc.alive:
                say(f"{proc.name} log ({proc.log}):\n{tail(proc.log)}")
        return 1
    finally:
        fleet.stop_all()
    (state / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
