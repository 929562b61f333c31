"""Fixtures for the compiler tests: extra real builds, each made once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def digits_variant(tmp_path_factory: pytest.TempPathFactory, trust) -> Path:
    """A digits build through the CLI with --holdout, --sign-key (the trust fixture's targets
    key), --io-type uint8, a different name/version and 3 epochs."""
    d = tmp_path_factory.mktemp("digits-variant")
    key = d / "targets.pem"
    key.write_bytes(trust.targets_key.to_pem())
    proc = run_cli(
        "digits",
        "--out",
        str(d / "bundle"),
        "--quiet",
        "--epochs",
        "3",
        "--holdout",
        str(d / "holdout.npz"),
        "--sign-key",
        str(key),
        "--io-type",
        "uint8",
        "--name",
        "digits-u8",
        "--version",
        "2.0.0",
    )
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture(scope="session")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real Keras models and digits data (see data/make_models.py), made once and cached
    like the builds (tests/bundle_cache.py: until the script or a file it read changes), copied
    here so a test may write beside them."""
    import shutil

    import numpy as np

    from tests.bundle_cache import OUT, cached_output

    made = cached_output("keras-models", [str(Path(__file__).parent / "data" / "make_models.py"), OUT], timeout=600)
    d = tmp_path_factory.mktemp("keras-models")
    shutil.copytree(made, d, dirs_exist_ok=True)
    z = np.load(d / "digits.npz")
    np.savez(d / "cal.npz", x=z["cal_x"])
    np.savez(d / "val.npz", x=z["val_x"], y=z["val_y"])
    return d
