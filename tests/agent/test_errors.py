"""agent.errors: one base, a reason code and an exit code on every error the agent raises."""

from __future__ import annotations

import ast
import inspect

import pytest

from agent import errors, localapi
from agent.__main__ import _parser
from protocol.errors import Reason, VerificationError
from tests.conftest import REPO


def test_every_exception_class_in_the_agent_derives_from_agent_error():
    for path in sorted((REPO / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception")) for b in node.bases
            ):
                module = __import__(f"agent.{path.stem}", fromlist=[node.name])
                assert issubclass(getattr(module, node.name), errors.AgentError), f"{path.name}: {node.name}"


@pytest.mark.parametrize(
    "cls",
    [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, errors.AgentError)]
    + [localapi.BadRequest, localapi.Closed],
)
def test_each_error_names_its_reason_and_exit_code(cls):
    assert isinstance(cls.reason, str) and cls.reason
    assert cls.exit_code in (errors.EXIT_FAILED, errors.EXIT_USAGE)


def test_bad_config_exits_2_and_everything_else_exits_1():
    assert errors.ConfigError("broker: expected mqtt://host:port, got 'x'").exit_code == 2
    assert errors.StartupError("state_dir '/x': Permission denied").exit_code == 1
    assert errors.EnrollError("/etc/agent.toml exists; pass --force to replace it").exit_code == 1


def test_errors_caught_as_value_error_still_are():
    for cls in (errors.ConfigError, errors.InputError, errors.MalformedBody, errors.TooLarge, errors.ImageTooLarge):
        assert issubclass(cls, ValueError), cls


def test_an_expired_root_is_a_verification_error_and_an_agent_error():
    exc = errors.RootExpired(Reason.EXPIRED, "trust root v1 expired")
    assert isinstance(exc, VerificationError) and isinstance(exc, errors.AgentError)
    assert exc.reason is Reason.EXPIRED and exc.exit_code == 1


def test_disk_full_carries_the_protocol_reason_it_is_reported_with():
    assert errors.DiskFull("writing chunk 3: No space left on device").reason is Reason.DISK_FULL


def test_help_documents_the_exit_codes():
    text = _parser().format_help()
    for line in (
        "0  success",
        "1  the command ran and failed",
        "2  bad usage or configuration",
        "3  not implemented yet",
    ):
        assert line in text
