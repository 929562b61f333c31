"""The compiler's one typed config. The only module that reads the environment.

* ``EDGEFLEET_CONVERT_TIMEOUT`` seconds for each TensorFlow conversion child (default 600);
* ``EDGEFLEET_EDGETPU_COMPILER`` path of ``edgetpu_compiler`` (default: found on ``PATH``;
  set it to an empty string to act as if it were absent);
* ``EDGEFLEET_EDGETPU_TIMEOUT`` seconds for ``edgetpu_compiler`` (default 180);
* ``SOURCE_DATE_EPOCH`` the manifest's ``created`` time (default: now), for reproducible builds.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from .errors import BadInput


@dataclass(frozen=True)
class CompilerConfig:
    convert_timeout_s: float = 600.0
    edgetpu_compiler: str | None = None
    edgetpu_timeout_s: float = 180.0
    created: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CompilerConfig:
        env = dict(os.environ if env is None else env)
        compiler = env.get("EDGEFLEET_EDGETPU_COMPILER")
        if compiler is None:
            compiler = shutil.which("edgetpu_compiler") or ""
        return cls(
            convert_timeout_s=_positive(env, "EDGEFLEET_CONVERT_TIMEOUT", 600.0),
            edgetpu_compiler=compiler or None,
            edgetpu_timeout_s=_positive(env, "EDGEFLEET_EDGETPU_TIMEOUT", 180.0),
            created=int(_positive(env, "SOURCE_DATE_EPOCH", float(int(time.time())))),
        )


def _positive(env: dict[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"environment {key}", f"expected a number, got {raw!r}") from None
    if value <= 0:
        raise BadInput(f"environment {key}", f"must be > 0, got {raw!r}")
    return value
