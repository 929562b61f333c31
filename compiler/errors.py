"""The compiler's few errors. Each carries the CLI exit code it maps to and names the bad thing.

Exit codes (documented in ``edgefleet-compile --help``):

* 0 success
* 1 internal error (a bug: please report it)
* 2 bad input: a file, argument or data set the compiler cannot use
* 3 quality gate failed: int8 lost more accuracy than allowed (an ONNX twin that fails its
  parity check is withheld from the bundle instead: :mod:`compiler.parity`)
* 4 not Edge TPU ready: ``--target edgetpu`` and the model cannot map (float ops, dynamic shapes,
  compiler failure)
* 5 toolchain failure: a TensorFlow conversion crashed or timed out
"""

from __future__ import annotations


class CompilerError(Exception):
    """Base of the compiler's errors; ``str(exc)`` is the one-line message for the user."""

    exit_code = 1


class BadInput(CompilerError):
    """A file, argument or data set we cannot use. ``what`` names it (often a path)."""

    exit_code = 2

    def __init__(self, what: object, problem: str) -> None:
        self.what = str(what)
        self.problem = problem
        super().__init__(f"{self.what}: {problem}")


class GateFailed(CompilerError):
    """The accuracy gate rejected the build; ``report`` is the eval report that says why."""

    exit_code = 3

    def __init__(self, problem: str, report: dict[str, object] | None = None) -> None:
        self.report = report or {}
        super().__init__(f"accuracy gate failed: {problem}")


class NotEdgeTpuReady(CompilerError):
    """``--target edgetpu`` was asked for and the model cannot (fully) run on the Edge TPU."""

    exit_code = 4

    def __init__(self, what: object, problem: str) -> None:
        super().__init__(f"{what}: not Edge TPU ready: {problem}")


class ToolFailed(CompilerError):
    """A toolchain step (TensorFlow converter, tf2onnx, edgetpu_compiler) crashed or timed out."""

    exit_code = 5

    def __init__(self, tool: str, problem: str) -> None:
        self.tool = tool
        super().__init__(f"{tool} failed: {problem}")
