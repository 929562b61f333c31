"""The hub's few error types. Messages name the bad value; HTTP codes live in ``hub.api``."""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigError(HubError):
    """A setting (CLI flag or ``EDGEFLEET_HUB_*`` variable) is missing or invalid."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"config {key}: {problem}")


class NotFound(HubError):
    """A named thing (device, bundle, rollout) does not exist."""

    def __init__(self, what: str, ident: str) -> None:
        self.what = what
        self.ident = ident
        super().__init__(f"{what} {ident!r} not found")


class Invalid(HubError):
    """A request or file is well-formed but not acceptable (bad bundle, bad target...)."""

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"bad {what}: {problem}")


class Conflict(HubError):
    """The request contradicts the current state (e.g. pausing a finished rollout)."""


class Denied(HubError):
    """A credential (enrollment token) is unknown, used or expired."""


class RateLimited(HubError):
    """Too many requests of one kind (remote-diagnostics commands); ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(f"{message}; retry in {retry_after} s")
