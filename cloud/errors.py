"""The cloud service's few error types. Each message names the bad thing and the problem.

HTTP status codes are chosen in :mod:`cloud.api` and :mod:`cloud.guard` only; here errors say
*what* went wrong.
"""

from __future__ import annotations


class CloudError(Exception):
    """Base of every error raised by :mod:`cloud`. ``code`` is a stable machine-readable tag."""

    code = "internal"


class BadInput(CloudError):
    """A request carried something we cannot serve: not an image, wrong shape or dtype..."""

    code = "bad_input"

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"bad {what}: {problem}")


class TooLarge(BadInput):
    """A body, image or tensor bigger than the configured limit."""

    code = "too_large"

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(what, f"{size} exceeds the limit of {limit}")


class AuthError(CloudError):
    """A missing or unrecognised API key."""

    code = "unauthorized"


class NotFound(CloudError):
    """An unknown model name or version."""

    code = "not_found"


class Overloaded(CloudError):
    """A request shed to bound queueing; ``retry_after`` seconds is a hint. ``reason`` says which
    bound: ``queue_full`` (the batch queue holds ``max_queue`` samples), ``queue_timeout`` (it
    waited too long); the front door's ``max_inflight`` and ``latency_budget``
    (:mod:`cloud.admission`) and ``key_inflight`` (the API key's concurrent requests) are
    answered by :class:`cloud.guard.Guard` with the same code."""

    code = "overloaded"

    def __init__(
        self, problem: str, retry_after: float = 1.0, queue_full: bool = True, reason: str | None = None
    ) -> None:
        self.retry_after = retry_after
        self.queue_full = queue_full
        self.reason = reason or ("queue_full" if queue_full else "queue_timeout")
        super().__init__(problem)


class Unavailable(CloudError):
    """Nothing to serve (no model loaded yet) or the model is being unloaded."""

    code = "unavailable"


class BundleRefused(CloudError):
    """A bundle archive that will not be served; ``reason`` is a protocol reason code value."""

    code = "bundle_refused"

    def __init__(self, source: str, reason: str, detail: str) -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        super().__init__(f"{source}: refused ({reason}): {detail}")


class NoTwin(BundleRefused):
    """A verified bundle with no ONNX twin, so nothing the cloud can serve; ``why`` is what its
    signed manifest says happened to the twin (withheld by the compiler, and the reason)."""

    def __init__(self, source: str, reason: str, name: str, version: str, why: str) -> None:
        self.name = name
        self.version = version
        self.why = why
        super().__init__(source, reason, f"bundle {name} {version} has no ONNX twin: {why}")


class ConfigError(CloudError):
    """A bad command-line option or environment variable, named with its value."""

    code = "config"


class InferenceFailed(CloudError):
    """onnxruntime failed on an input that passed validation (a model defect, not the client's)."""

    code = "inference_failed"
