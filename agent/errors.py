"""The agent's errors. Each carries a stable ``reason`` code and the CLI exit code it maps to;
``str(exc)`` is one line naming the bad value.

Exit codes (documented in ``edgefleet-agent --help`` and agent/README.md):

* 0 success
* 1 the command ran and failed: cannot start (:class:`StartupError`), enrollment refused
  (:class:`EnrollError`), agent not reachable, self-test failed, nothing to roll back to;
  any other :class:`AgentError`
* 2 bad usage or configuration (:class:`ConfigError`): the message names the key and the value
* 3 not implemented yet

``reason`` is for logs and callers that branch on the kind of failure; the reason codes of
reports on the wire stay :class:`protocol.errors.Reason` (``DiskFull.reason`` is one of them).
The local API's own framing errors (``BadRequest``, ``Closed``) live in :mod:`agent.localapi`,
the one place HTTP statuses are chosen, and derive from :class:`AgentError` too.
"""

from __future__ import annotations

from protocol.errors import Reason, VerificationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_YET = 0, 1, 2, 3


class AgentError(Exception):
    """Base of the agent's errors; ``str(exc)`` is the one-line message for the operator."""

    reason: str = "internal"
    exit_code = EXIT_FAILED


class ConfigError(AgentError, ValueError):
    """A configuration value is missing or invalid; the message names key and value."""

    reason = "config"
    exit_code = EXIT_USAGE


class StartupError(AgentError):
    """The agent cannot start (bad root, unwritable state dir, port in use...)."""

    reason = "startup"


class EnrollError(AgentError):
    """Enrollment failed; the message says which step and why."""

    reason = "enroll"


class ConnectError(AgentError):
    """A connection attempt to the broker failed; the message says where and why."""

    reason = "connect"


class DiskFull(AgentError):
    """A download cannot reserve or write its bytes; the message names the archive or chunk."""

    reason = Reason.DISK_FULL


class ModelError(AgentError):
    """A model could not be loaded or run; the message names the model and the problem."""

    reason = "model"


class InvokeHung(ModelError):
    """An Edge TPU invoke did not return within ``tpu_invoke_timeout_s`` (:mod:`agent.watchdog`
    answers the request on the CPU twin; it reaches a caller only without one)."""


class ImageTooLarge(AgentError, ValueError):
    """The image declares more pixels than :data:`agent.image.MAX_PIXELS`; the message gives its size."""

    reason = "image_too_large"


class InputError(AgentError, ValueError):
    """A request's input cannot be turned into the model's input tensor (HTTP 422)."""

    reason = "input"


class MalformedBody(InputError):
    """The body is not what its Content-Type says: not strict JSON (NaN, Infinity, a number
    beyond float range), or nested too deeply to be a tensor (HTTP 400)."""

    reason = "malformed_body"


class TooLarge(InputError):
    """The input declares more than the agent will decode, e.g. an image bomb (HTTP 413)."""

    reason = "too_large"


class Unavailable(AgentError):
    """No path (local model, cloud fallback) could serve the request; the message says why."""

    reason = "unavailable"


# mypy sees two declarations of ``reason`` (Reason, str); a Reason is a str, and the
# VerificationError's (``Reason.EXPIRED``) is the one set
class RootExpired(VerificationError, AgentError):  # type: ignore[misc]
    """Reason ``EXPIRED``: the trust root itself (not the document) has expired. A
    :class:`protocol.errors.VerificationError` too, so trust checks catch it with the rest."""


class UnknownSession(InputError):
    """A request continues a session the agent does not hold (never started, idle past the
    timeout, evicted, or begun on another model): continuing from the initial state instead
    would be a silently wrong answer (HTTP 422)."""

    reason = "unknown_session"


class HoldRefused(AgentError, ValueError):
    """An app's update hold request (local API ``POST /v1/update/hold``) is not acceptable: the
    message names the value and the limit (HTTP 422)."""

    reason = "hold_refused"
