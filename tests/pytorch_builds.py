"""The PyTorch digits CNN (examples/seed_case_study/torch_models.py) trained, exported both ways
(the seed's ``torch.onnx.export(..., opset_version=11)`` and ``torch.export`` to ``.pt2``) and
built with ``edgefleet-compile build``, each made once and cached like the digits build
(``tests.conftest.cached_bundle``), for the compiler tests and the roll-out test.

Torch runs in a child (``python -c``) so the test process never imports it. Tests that need it
call :func:`require_torch` first: without the ``torch`` extra (or onnx2tf) they skip saying so.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.bundle_cache import OUT, cached_output
from tests.conftest import REPO, cached_bundle

MODELS = REPO / "examples" / "seed_case_study" / "torch_models.py"

_MAKE = """
import sys, numpy as np, torch
sys.path.insert(0, {models_dir!r})
import torch_models as tm
from pathlib import Path
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
d = tm.digits_data(0)
m = tm.train_digits(tm.DigitsCNN(), d, epochs=8, seed=0)
tm.export_both(m, torch.zeros(1, 1, 8, 8), out, "digits")
np.save(out / "torch_scores.npy", tm.scores(m, d["test_x"]))
u = tm.train_digits(tm.UnmappableCNN(), d, epochs=2, seed=0)
tm.export_both(u, torch.zeros(1, 1, 8, 8), out, "leaky")
np.savez(out / "cal.npz", x=d["train_x"][:300])
np.savez(out / "val.npz", x=d["test_x"], y=d["test_y"])
"""


def require_torch() -> None:
    for mod, why in (("torch", "pip install 'edgefleet[torch]'"), ("onnx2tf", "make install (onnx2tf --no-deps)")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed ({why})")


def torch_digits() -> Path:
    """A folder with digits.onnx (+ .onnx.data), digits.pt2, leaky.onnx, cal.npz, val.npz
    (uint8 pixels) and torch_scores.npy (the trained model's logits on val), made once per
    version of torch_models.py and of the packages it imports (tests/bundle_cache.py)."""
    code = _MAKE.format(models_dir=MODELS.parent.relative_to(REPO).as_posix())  # run in the checkout
    return cached_output("torch-digits", ["-c", code, OUT], 600)


def torch_digits_bundle(kind: str = "onnx") -> Path:
    """``edgefleet-compile build digits.onnx|digits.pt2`` with the digits data, cached."""
    d = torch_digits()
    return cached_bundle(
        f"torch-digits-{kind}",
        [
            "build",
            str(d / f"digits.{kind}"),
            "--calibration",
            str(d / "cal.npz"),
            "--validation",
            str(d / "val.npz"),
            "--name",
            f"torch-digits-{kind}",
        ],
    )
