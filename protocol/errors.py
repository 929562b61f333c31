"""The protocol's few error types. Each message names the bad value."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Machine-readable reason codes carried in reports and on exceptions."""

    OK = "ok"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    THRESHOLD_NOT_MET = "threshold_not_met"
    EXPIRED = "expired"
    DOWNGRADE = "downgrade"
    HASH_MISMATCH = "hash_mismatch"
    LENGTH_MISMATCH = "length_mismatch"
    WRONG_HARDWARE = "wrong_hardware"
    UNSUPPORTED_RUNTIME = "unsupported_runtime"
    MISSING_ARTIFACT = "missing_artifact"
    DISK_FULL = "disk_full"
    SELFTEST_FAILED = "selftest_failed"
    INFERENCE_FAILED = "inference_failed"
    TIMEOUT = "timeout"
    REPLAYED = "replayed"
    WRONG_DEVICE = "wrong_device"
    UNKNOWN_COMMAND = "unknown_command"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """Base of every error raised by :mod:`protocol`."""

    reason: Reason = Reason.INTERNAL


class BadPayload(ProtocolError):
    """Bytes that are not a valid message, topic or document of the stated kind."""

    reason = Reason.MALFORMED

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"bad {what}: {problem}")


class Implausible(BadPayload):
    """Well-formed, but its figures contradict each other (e.g. more latency samples than
    inferences): a receiver that aggregates a fleet must not count it."""


class VerificationError(ProtocolError):
    """A signed document or artifact failed a trust check. ``reason`` says which."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


class BadParameter(ProtocolError):
    """A request parameter that is unknown, does not apply to the model's task, or is out of
    range (a client's mistake: the servers answer 4xx)."""

    reason = Reason.MALFORMED

    def __init__(self, name: str, value: object, problem: str) -> None:
        self.name = name
        self.value = value
        self.problem = problem
        super().__init__(f"request parameter {name}={value!r:.60}: {problem}")
