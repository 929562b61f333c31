"""Stage 4: Coral's ``edgetpu_compiler``, when it is installed, and a typed report of what it did.

``parse(stdout, log)`` turns the compiler's text (stdout, and the ``.log`` operator table) into
a :class:`CompileReport`; :func:`run` calls the binary (``-s -o DIR [-m N] [-n N] -t T``) and
checks its output; :func:`stage` is the pipeline step.

Rules, from real outputs (``tests/compiler/data/edgetpu/README.md`` cites each):

* exit status 0 does **not** mean fully mapped: ``ops_on_cpu`` comes from "Number of operations
  that will run on CPU"; when those lines are absent after a success without the "not all
  operations" paragraph, everything mapped (``ops_on_tpu = total``, flagged ``inferred``);
* the counts may not add up to the total (seen in the wild); they are reported as printed;
* a success needs "Model compiled successfully" (and, on v16, no timer expiry), an output file
  that parses as TFLite and contains ``edgetpu-custom-op`` (a failed compile can leave a ~1 KB
  stub), and at least one Edge TPU subgraph (``-m`` too low gives 0 and still "succeeds");
* the minimum Edge TPU runtime is ``-m`` when given, else the compiler version's default
  (16 -> 14, 15 -> 13, 14.1 -> 13, 2.1 -> 13, 2.0 -> 12, 1.0 -> 10);
* ``-n N`` (segments): the compiler prints its version once, then one block per output, in
  segment order (google-coral/edgetpu#557); a block ends with "Compilation succeeded!" (v16) or
  where the next "Model compiled successfully" starts (older compilers), and text after the last
  block is a segment that did not compile. :func:`split_blocks` / :func:`parse_blocks` map block
  ``i`` to ``<stem>_segment_<i>_of_<N>_edgetpu.tflite``; a block whose "Output model" names a
  different segment index is refused (order is the contract). Every segment is checked like a
  single model (exists, sane size, ``edgetpu-custom-op``, >= 1 subgraph).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BadInput, NotEdgeTpuReady

MIN_OUTPUT_BYTES = 2048
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
_RUNTIME_FOR = {"16.0": 14, "15.0": 13, "14.1": 13, "2.1": 13, "2.0": 12, "1.0": 10}
_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s{2,}(\S.*?)\s*$")
_MEM = re.compile(
    r"^(On-chip memory used|On-chip memory remaining|On-chip memory available|Off-chip memory used)"
    r"[^:]*:\s*([\d.]+)\s*(B|KiB|MiB|GiB)\s*$"
)


@dataclass(frozen=True)
class OpRow:
    op: str
    count: int
    status: str

    @property
    def mapped(self) -> bool:
        return self.status == "Mapped to Edge TPU"


@dataclass(frozen=True)
class CompileReport:
    version: str | None = None
    compiled: bool = False  # "Model compiled successfully"
    error: str | None = None  # first error line (internal error, parse failure, timeout)
    input_model: str | None = None
    output_model: str | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    on_chip_used: int | None = None
    on_chip_remaining: int | None = None
    off_chip_used: int | None = None
    subgraphs: int | None = None
    total_ops: int | None = None
    ops_on_tpu: int | None = None
    ops_on_cpu: int | None = None
    counts_inferred: bool = False
    rows: tuple[OpRow, ...] = ()
    log_file: str | None = None
    delegate_search: bool = False

    @property
    def fully_mapped(self) -> bool:
        return self.compiled and self.error is None and bool(self.subgraphs) and self.ops_on_cpu == 0

    @property
    def min_runtime(self) -> int | None:
        if self.version is None:
            return None
        major_minor = ".".join(self.version.split(".")[:2])
        return _RUNTIME_FOR.get(major_minor)

    def unmapped(self) -> list[OpRow]:
        return [r for r in self.rows if not r.mapped]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rows"] = [asdict(r) for r in self.rows]
        d["fully_mapped"] = self.fully_mapped
        return d


def _bytes(value: str, unit: str) -> int:
    return int(round(float(value) * _UNITS[unit]))


def parse(stdout: str, log: str | None = None) -> CompileReport:
    """Parse compiler stdout (and optionally its ``.log``). Never raises on odd text."""
    f: dict[str, Any] = {}
    rows: list[OpRow] = []
    errors: list[str] = []
    timer = completed_in_time = False
    not_all = False
    for text in (stdout, log or ""):
        table_rows: list[OpRow] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line:
                continue
            if m := re.match(r"^Edge TPU Compiler version (\S+)", line):
                f.setdefault("version", m.group(1))
            elif line.startswith("Model compiled successfully"):
                f["compiled"] = True
            elif line.startswith(
                (
                    "Internal compiler error",
                    "ERROR:",
                    "Invalid model",
                    "Model could not be parsed",
                    "Compilation failed",
                )
            ):
                errors.append(line)
            elif line.startswith("Started a compilation timeout timer"):
                timer = True
            elif line.startswith("Compilation child process completed within timeout"):
                completed_in_time = True
            elif line.startswith(("Searching for valid delegate", "Try to compile segment")):
                f["delegate_search"] = True
            elif m := re.match(r"^Input model:\s*(.+)$", line):
                f["input_model"] = m.group(1)
            elif m := re.match(r"^Output model:\s*(.+)$", line):
                f["output_model"] = m.group(1)
            elif m := re.match(r"^Input size:\s*([\d.]+)\s*(B|KiB|MiB|GiB)$", line):
                f["input_bytes"] = _bytes(m.group(1), m.group(2))
            elif m := re.match(r"^Output size:\s*([\d.]+)\s*(B|KiB|MiB|GiB)$", line):
                f["output_bytes"] = _bytes(m.group(1), m.group(2))
            elif m := _MEM.match(line):
                key = {
                    "On-chip memory used": "on_chip_used",
                    "On-chip memory remaining": "on_chip_remaining",
                    "On-chip memory available": "on_chip_remaining",
                    "Off-chip memory used": "off_chip_used",
                }[m.group(1)]
                f[key] = _bytes(m.group(2), m.group(3))
            elif m := re.match(r"^Number of Edge TPU subgraphs:\s*(\d+)$", line):
                f["subgraphs"] = int(m.group(1))
            elif m := re.match(r"^Total number of operations:\s*(\d+)$", line):
                f["total_ops"] = int(m.group(1))
            elif m := re.match(r"^Number of operations that will run on (Edge TPU|CPU):\s*(\d+)$", line):
                f["ops_on_tpu" if m.group(1) == "Edge TPU" else "ops_on_cpu"] = int(m.group(2))
            elif m := re.match(r"^Operation log:\s*(.+)$", line):
                f["log_file"] = m.group(1)
            elif line.startswith("Model successfully compiled but not all operations"):
                not_all = True
            elif line.startswith(("Operator ", "Input:", "Output:")):
                continue
            elif m := _ROW.match(line):
                table_rows.append(OpRow(m.group(1), int(m.group(2)), m.group(3)))
        if table_rows and not rows:  # stdout's -s table and the .log hold the same rows
            rows = table_rows
    if timer and not completed_in_time and not f.get("compiled") and not errors:
        errors.append("compilation did not complete within its timeout")
    if (
        f.get("compiled")
        and "ops_on_tpu" not in f
        and "ops_on_cpu" not in f
        and not not_all
        and f.get("total_ops") is not None
    ):
        if rows and any(not r.mapped for r in rows):
            f["ops_on_cpu"] = sum(r.count for r in rows if not r.mapped)
            f["ops_on_tpu"] = f["total_ops"] - f["ops_on_cpu"]
        else:
            f["ops_on_tpu"], f["ops_on_cpu"] = f["total_ops"], 0
        f["counts_inferred"] = True
    if errors:
        f["error"] = errors[0]
    return CompileReport(rows=tuple(rows), **f)


_BLOCK_END = re.compile(r"^\s*Compilation succeeded!")
_BLOCK_START = re.compile(r"^\s*Model compiled successfully")
_SEGMENT_NAME = re.compile(r"_segment_(\d+)_of_(\d+)_edgetpu\.tflite\s*$")


def split_blocks(stdout: str) -> tuple[str, list[str]]:
    """``(header, blocks)``: the lines before the first block (the version line) and the text of
    each output's block, in printed order. Blank trailing text is not a block."""
    lines = stdout.splitlines()
    header: list[str] = []
    blocks: list[list[str]] = []
    cur: list[str] = []
    seen_any = False  # inside the header until something block-like appears
    cur_has_success = False
    for line in lines:
        if not seen_any:
            if re.match(r"^\s*Edge TPU Compiler version", line) or not line.strip():
                header.append(line)
                continue
            seen_any = True
        if _BLOCK_START.match(line) and cur_has_success:  # older compilers: no closing line
            blocks.append(cur)
            cur, cur_has_success = [], False
        cur.append(line)
        if _BLOCK_START.match(line):
            cur_has_success = True
        if _BLOCK_END.match(line):
            blocks.append(cur)
            cur, cur_has_success = [], False
    if any(ln.strip() for ln in cur):
        blocks.append(cur)
    return "\n".join(header), ["\n".join(b) for b in blocks]


def parse_blocks(stdout: str, logs: list[str | None] | None = None) -> list[CompileReport]:
    """One :class:`CompileReport` per printed output block (``-n N`` or several models)."""
    header, blocks = split_blocks(stdout)
    logs = logs or []
    return [parse(header + "\n" + b, logs[i] if i < len(logs) else None) for i, b in enumerate(blocks)]


def combine(reports: list[CompileReport]) -> CompileReport:
    """A summary of several outputs: sums of counts and memory (None if any is unknown),
    ``compiled`` only if all compiled, the first error, all rows."""

    def total(key: str) -> int | None:
        vals = [getattr(r, key) for r in reports]
        return None if not vals or any(v is None for v in vals) else sum(vals)

    errors = [r.error for r in reports if r.error]
    return CompileReport(
        version=next((r.version for r in reports if r.version), None),
        compiled=bool(reports) and all(r.compiled for r in reports),
        error=errors[0] if errors else None,
        input_bytes=total("input_bytes"),
        output_bytes=total("output_bytes"),
        on_chip_used=total("on_chip_used"),
        on_chip_remaining=None,
        off_chip_used=total("off_chip_used"),
        subgraphs=total("subgraphs"),
        total_ops=total("total_ops"),
        ops_on_tpu=total("ops_on_tpu"),
        ops_on_cpu=total("ops_on_cpu"),
        counts_inferred=any(r.counts_inferred for r in reports),
        rows=tuple(row for r in reports for row in r.rows),
        delegate_search=any(r.delegate_search for r in reports),
    )


@dataclass(frozen=True)
class CompiledOutput:
    """One file the compiler was expected to write (the model, or segment ``index`` of N)."""

    name: str  # e.g. model_int8_segment_0_of_2_edgetpu.tflite
    report: CompileReport  # its stdout block (+ its .log)
    output: bytes | None  # the file, when it is a real compiled model
    problem: str | None  # why it is not usable (None = usable)


@dataclass(frozen=True)
class CompileResult:
    report: CompileReport  # the single model's report, or the segments combined
    returncode: int
    output: bytes | None  # the *_edgetpu.tflite, when it is a real compiled model (N = 1)
    problem: str | None  # why the output is not usable (None = usable)
    command: tuple[str, ...]
    outputs: tuple[CompiledOutput, ...] = ()  # per segment, in order (N > 1)


def run(
    compiler: str,
    model: bytes,
    timeout_s: float,
    min_runtime: int | None = None,
    segments: int | None = None,
    stem: str = "model_int8",
) -> CompileResult:
    """Run ``edgetpu_compiler`` on ``model`` in a scratch directory and check what it made.
    With ``segments`` N > 1 the result's ``outputs`` hold the N segments, in order."""
    n = segments if segments is not None and segments > 1 else 1
    with tempfile.TemporaryDirectory(prefix="edgefleet-edgetpu-") as tmp_s:
        tmp = Path(tmp_s)
        src = tmp / f"{stem}.tflite"
        src.write_bytes(model)
        out_dir = tmp / "out"
        out_dir.mkdir()
        cmd = [compiler, "-s", "-o", str(out_dir), "-t", str(int(timeout_s))]
        if min_runtime is not None:
            cmd += ["-m", str(min_runtime)]
        if n > 1:
            cmd += ["-n", str(n)]
        cmd.append(str(src))
        proc = _invoke(cmd, compiler, timeout_s, tmp)
        if isinstance(proc, CompileResult):
            return proc
        text = proc.stdout + "\n" + proc.stderr
        names = [f"{stem}_edgetpu"] if n == 1 else [f"{stem}_segment_{i}_of_{n}_edgetpu" for i in range(n)]
        logs = [_read_text(out_dir / f"{name}.log") for name in names]
        outputs = [_read_bytes(out_dir / f"{name}.tflite") for name in names]
    if n == 1:
        report = parse(text, logs[0])
        problem = _problem(proc.returncode, report, f"{names[0]}.tflite", outputs[0])
        return CompileResult(report, proc.returncode, outputs[0] if problem is None else None, problem, tuple(cmd))
    reports = parse_blocks(text, logs)
    parts: list[CompiledOutput] = []
    for i, name in enumerate(names):
        file = f"{name}.tflite"
        if i >= len(reports):
            rep = CompileReport()
            why: str | None = (
                f"exit code {proc.returncode}; " if proc.returncode else ""
            ) + f"the compiler printed {len(reports)} output block(s) for {n} segments; none for {file}"
        else:
            rep = reports[i]
            why = _problem(proc.returncode, rep, file, outputs[i])
            printed = _SEGMENT_NAME.search(rep.output_model or "")
            if why is None and printed and (int(printed.group(1)), int(printed.group(2))) != (i, n):
                why = f"block {i} of the compiler's output names {rep.output_model}, not segment {i} of {n}"
        parts.append(CompiledOutput(file, rep, outputs[i] if why is None else None, why))
    bad = [p for p in parts if p.problem is not None]
    problem = f"{bad[0].name}: {bad[0].problem}" if bad else None
    if problem is None and len(reports) > n:
        problem = f"the compiler printed {len(reports)} output blocks for {n} segments"
    return CompileResult(combine(reports[:n]), proc.returncode, None, problem, tuple(cmd), tuple(parts))


def run_together(
    compiler: str, models: Sequence[tuple[str, bytes]], timeout_s: float, min_runtime: int | None = None
) -> CompileResult:
    """Co-compile: one ``edgetpu_compiler`` run over several models (``(stem, tflite bytes)``, in
    the order given) so that they share one Edge TPU's parameter cache: the compiler divides the
    on-chip memory between them, earlier models first, and an app alternating between them does
    not reload parameters on every switch (Coral's "co-compiling multiple models"). ``outputs``
    hold ``<stem>_edgetpu.tflite`` per model, in order; the compiler's output blocks are matched
    to the models by order and a block naming another model's output is refused."""
    stems = [stem for stem, _ in models]
    if len(stems) < 2 or len(set(stems)) != len(stems) or not all(re.fullmatch(r"[\w.-]+", x) for x in stems):
        raise BadInput("models", f"co-compiling needs 2 or more distinct file stems, got {stems}")
    with tempfile.TemporaryDirectory(prefix="edgefleet-edgetpu-") as tmp_s:
        tmp = Path(tmp_s)
        out_dir = tmp / "out"
        out_dir.mkdir()
        cmd = [compiler, "-s", "-o", str(out_dir), "-t", str(int(timeout_s))]
        if min_runtime is not None:
            cmd += ["-m", str(min_runtime)]
        for stem, data in models:
            (tmp / f"{stem}.tflite").write_bytes(data)
            cmd.append(str(tmp / f"{stem}.tflite"))
        proc = _invoke(cmd, compiler, timeout_s, tmp)
        if isinstance(proc, CompileResult):
            return proc
        files = [f"{stem}_edgetpu" for stem in stems]
        logs = [_read_text(out_dir / f"{f}.log") for f in files]
        outputs = [_read_bytes(out_dir / f"{f}.tflite") for f in files]
    reports = parse_blocks(proc.stdout + "\n" + proc.stderr, logs)
    parts: list[CompiledOutput] = []
    why: str | None
    for i, f in enumerate(files):
        file = f"{f}.tflite"
        if i >= len(reports):
            rep, why = CompileReport(), f"the compiler printed {len(reports)} output block(s) for {len(files)} models"
        else:
            rep = reports[i]
            why = _problem(proc.returncode, rep, file, outputs[i])
            others = {f"{x}.tflite" for x in files} - {file}
            if why is None and rep.output_model and Path(rep.output_model).name in others:
                why = f"block {i} of the compiler's output names {rep.output_model}, not {file}"
        parts.append(CompiledOutput(file, rep, outputs[i] if why is None else None, why))
    bad = [p for p in parts if p.problem is not None]
    problem = f"{bad[0].name}: {bad[0].problem}" if bad else None
    return CompileResult(combine(reports[: len(files)]), proc.returncode, None, problem, tuple(cmd), tuple(parts))


def _invoke(
    cmd: list[str], compiler: str, timeout_s: float, cwd: Path
) -> subprocess.CompletedProcess[str] | CompileResult:
    """Run the compiler; a timeout is a failed :class:`CompileResult`, a missing binary bad input."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 30, cwd=cwd)
    except FileNotFoundError:
        raise BadInput(compiler, "edgetpu_compiler not found or not executable") from None
    except PermissionError:
        raise BadInput(compiler, "edgetpu_compiler is not executable") from None
    except subprocess.TimeoutExpired:
        rep = CompileReport(error=f"edgetpu_compiler did not finish in {timeout_s + 30:g} s")
        return CompileResult(rep, -1, None, rep.error, tuple(cmd))


def _read_text(path: Path) -> str | None:
    return path.read_text(errors="replace") if path.exists() else None


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def _problem(returncode: int, report: CompileReport, file: str, output: bytes | None) -> str | None:
    """Why one compiler output is not a usable compiled model (None = usable)."""
    from .graph import read_graph

    if returncode != 0:
        return f"exit code {returncode}" + (f": {report.error}" if report.error else "")
    if report.error:
        return report.error
    if not report.compiled:
        return "no 'Model compiled successfully' line in its output"
    if output is None:
        return f"no {file} was written"
    if len(output) < MIN_OUTPUT_BYTES:
        return f"{file} is a {len(output)}-byte stub"
    if not report.subgraphs:
        return "0 Edge TPU subgraphs: nothing runs on the Edge TPU (is -m too low?)"
    try:
        if not read_graph(output, file).edgetpu_compiled:
            return f"{file} holds no edgetpu-custom-op (not a compiled model)"
    except BadInput as exc:
        return str(exc)
    return None


def stage(
    cfg: Any, graph: Any, int8: bytes, target: str, min_runtime: int | None = None, segments: int | None = None
) -> tuple[dict[str, Any], list[Any], str, int | None]:
    """Pipeline step: (report section, bundle files, requirements.edgetpu, min runtime).
    ``segments`` N > 1: N ``tflite_edgetpu_segment`` files, in segment order."""
    from .bundle import BundleFile
    from .precheck import predict

    pre = predict(graph).to_dict()
    assert cfg.edgetpu_compiler is not None
    n = segments if segments is not None and segments > 1 else 1
    res = run(cfg.edgetpu_compiler, int8, cfg.edgetpu_timeout_s, min_runtime, segments=n)
    rep = res.report
    doc: dict[str, Any] = {
        "compiled": res.problem is None,
        "compiler": rep.version,
        "command": list(res.command),
        "ops_on_tpu": rep.ops_on_tpu,
        "ops_on_cpu": rep.ops_on_cpu,
        "report": rep.to_dict(),
        "precheck": pre,
    }
    if n > 1:
        doc["segments"] = n
        doc["segment_reports"] = [
            {
                "name": seg_name(i, n),
                "compiler_output": p.name,
                "usable": p.problem is None,
                "problem": p.problem,
                "ops_on_tpu": p.report.ops_on_tpu,
                "ops_on_cpu": p.report.ops_on_cpu,
                "total_ops": p.report.total_ops,
                "on_chip_used": p.report.on_chip_used,
                "off_chip_used": p.report.off_chip_used,
                "report": p.report.to_dict(),
            }
            for i, p in enumerate(res.outputs)
        ]
    what = "model_int8.tflite" + (f" (-n {n})" if n > 1 else "")
    if res.problem is not None:
        doc["note"] = f"edgetpu_compiler failed: {res.problem}; bundle carries the CPU int8 artifact only"
        if target == "edgetpu":
            raise NotEdgeTpuReady(what, f"edgetpu_compiler failed: {res.problem}")
        return doc, [], "optional", None
    if not rep.fully_mapped:
        msg = f"{rep.ops_on_cpu} of {rep.total_ops} ops stay on the CPU: " + ", ".join(
            f"{r.op} x{r.count} ({r.status})" for r in rep.unmapped()[:5]
        )
        if target == "edgetpu":
            raise NotEdgeTpuReady(what, f"partial mapping, {msg}")
        doc["note"] = f"partially mapped; {msg}"
    else:
        doc["note"] = f"all {rep.total_ops} ops on the Edge TPU ({rep.version})"
    if n > 1:
        doc["note"] += f"; {n} pipelined segments (needs {n} Edge TPUs)"
    runtime = min_runtime if min_runtime is not None else rep.min_runtime
    if n > 1:
        files = [
            BundleFile(seg_name(i, n), "tflite_edgetpu_segment", p.output)
            for i, p in enumerate(res.outputs)
            if p.output is not None
        ]
        assert len(files) == n
        return doc, files, "optional", runtime
    assert res.output is not None
    return doc, [BundleFile("model_edgetpu.tflite", "tflite_edgetpu", res.output)], "optional", runtime


def seg_name(i: int, n: int) -> str:
    """Bundle file name of segment ``i`` of ``n`` (Coral's naming, stem ``model``)."""
    return f"model_segment_{i}_of_{n}_edgetpu.tflite"
