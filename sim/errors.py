"""The simulator's one error type: a setting or a run that cannot be simulated, named."""

from __future__ import annotations


class SimError(RuntimeError):
    """A bad setting (the message names it and its value) or a fleet that could not start."""
