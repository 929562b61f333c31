"""A ``torch.export`` program (``.pt2``) in: exported to ONNX, then the ONNX route
(:mod:`compiler.onnx_import`). Needs the ``torch`` extra (``pip install 'edgefleet[torch]'``).

``torch.export.load`` then ``torch.onnx.export(program, dynamo=True)`` (the exporter for
exported programs; it needs onnxscript). It runs in a **child process with a timeout**, like
TensorFlow's conversion: the compiler never imports torch itself, so ``build model.onnx`` and
the Keras route work without it. The ONNX written here is the bundle's twin.

Parent -> child: ``python -m compiler.torch_import IN.pt2 OUT.onnx``; the child prints one JSON
line ``{"ok": true}`` or ``{"ok": false, "kind": "bad_input"|"missing", "problem": ...}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import BadInput, ToolFailed

OPSET = 18  # the lowest opset torch's exporter writes without a version conversion


def pt2_to_onnx(pt2: Path, out: Path, timeout_s: float) -> bytes:
    """Export ``pt2`` to ``out`` and return its bytes; :class:`BadInput` when the file is not a
    program we can export or torch is not installed, :class:`ToolFailed` on a crash/timeout."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "compiler.torch_import", str(pt2.resolve()), str(out.resolve())],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=Path(__file__).resolve().parent.parent,
        )
    except subprocess.TimeoutExpired:
        raise ToolFailed("torch.onnx.export", f"timed out after {timeout_s:g} s") from None
    doc: dict[str, Any] | None = None
    for line in reversed(proc.stdout.splitlines()):
        try:
            doc = json.loads(line)
            break
        except ValueError:
            continue
    if doc is None or not isinstance(doc, dict):
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])[-400:]
        raise ToolFailed("torch.onnx.export", f"child exit code {proc.returncode}; stderr: {tail}")
    if not doc.get("ok"):
        raise BadInput(pt2, str(doc.get("problem")))
    return out.read_bytes()


def _child(pt2: Path, out: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {
            "ok": False,
            "kind": "missing",
            "problem": "a .pt2 needs PyTorch: pip install 'edgefleet[torch]' (or export to ONNX yourself "
            "with torch.onnx.export and build the .onnx)",
        }
    try:
        program = torch.export.load(str(pt2))
    except Exception as exc:  # torch raises many types for a file that is not a program
        return {"ok": False, "kind": "bad_input", "problem": f"not a torch.export program ({_one(exc)})"}
    args: tuple[Any, ...] = tuple(program.example_inputs[0]) if program.example_inputs else ()
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return {
            "ok": False,
            "kind": "bad_input",
            "problem": f"the program takes {len(args)} positional inputs; build takes one tensor "
            "(export with torch.export.export(model, (sample,)))",
        }
    try:
        onnx_program = torch.onnx.export(
            program, tuple(args), input_names=["input"], output_names=["output"], dynamo=True, opset_version=OPSET
        )
        assert onnx_program is not None
        onnx_program.save(str(out), external_data=False)
    except Exception as exc:  # the exporter names the op it cannot export
        return {"ok": False, "kind": "bad_input", "problem": f"torch.onnx.export cannot export it ({_one(exc)})"}
    return {"ok": True}


def _one(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


if __name__ == "__main__":
    print(json.dumps(_child(Path(sys.argv[1]), Path(sys.argv[2]))))
