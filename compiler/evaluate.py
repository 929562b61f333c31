"""Stage 3: quality metrics of every artifact and the accuracy gate. Pure functions over arrays.

Metrics (the seed's list plus agreement): top-1 accuracy, macro-F1, macro one-vs-rest ROC AUC
(classes with no positive or no negative sample are skipped), top-1 agreement with the float
reference, and the largest absolute score difference from it.

Gate rule (:func:`gate`), reported as a :class:`Check` whether it passes or not:

* ``int8_accuracy_drop``: float top-1 minus int8 top-1, in percentage points, must be
  <= ``max_accuracy_drop`` (the CLI's ``--max-accuracy-drop``, default 1.0).
* ``int8_accuracy``: with ``min_accuracy`` (the CLI's ``--min-accuracy``, off by default), the
  int8 top-1 must be at least that fraction, e.g. a retrained model must beat the one it
  replaces on the same validation set (examples/flywheel).

The gate judges what the devices run and fails the build. The ONNX twin is not gated: it is
verified against the float TFLite or withheld from the bundle (:mod:`compiler.parity`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Metrics:
    samples: int
    accuracy: float
    macro_f1: float
    auc_ovr: float | None
    agreement: float | None = None  # top-1 agreement with the float reference
    max_abs_diff: float | None = None  # vs the float reference scores

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def metrics(scores: np.ndarray, y: np.ndarray, reference: np.ndarray | None = None) -> Metrics:
    scores = scores.reshape(len(scores), -1)
    pred = scores.argmax(axis=1)
    n_classes = scores.shape[1]
    agreement = max_diff = None
    if reference is not None:
        ref = reference.reshape(len(reference), -1)
        agreement = float((ref.argmax(axis=1) == pred).mean())
        max_diff = float(np.abs(ref - scores).max())
    return Metrics(
        len(y), float((pred == y).mean()), macro_f1(pred, y, n_classes), auc_ovr(scores, y), agreement, max_diff
    )


def macro_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Mean F1 over the classes that occur in ``y`` or ``pred``."""
    f1s = []
    for c in range(n_classes):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def auc_ovr(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC via the rank-sum (Mann-Whitney) statistic, ties averaged."""
    from scipy.stats import rankdata

    aucs = []
    for c in range(scores.shape[1]):
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(scores[:, c])
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else None


@dataclass(frozen=True)
class GatePolicy:
    max_accuracy_drop: float = 1.0  # percentage points
    min_accuracy: float | None = None  # floor on the int8 top-1 (fraction), None: no floor


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateResult:
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


def gate(reference: Metrics, int8: Metrics | None, policy: GatePolicy = GatePolicy()) -> GateResult:
    checks = []
    if int8 is not None:
        drop = (reference.accuracy - int8.accuracy) * 100.0
        checks.append(
            Check(
                "int8_accuracy_drop",
                round(drop, 4),
                policy.max_accuracy_drop,
                drop <= policy.max_accuracy_drop + 1e-9,
                f"float top-1 {reference.accuracy:.2%} -> int8 {int8.accuracy:.2%}",
            )
        )
    if policy.min_accuracy is not None:
        judged, which = (int8, "int8") if int8 is not None else (reference, "float")
        checks.append(
            Check(
                f"{which}_accuracy",  # named after the model it judged: without int8 figures, the float one
                round(judged.accuracy, 6),
                policy.min_accuracy,
                judged.accuracy >= policy.min_accuracy - 1e-9,
                f"{which} top-1 {judged.accuracy:.2%} on {judged.samples} validation samples, "
                f"floor {policy.min_accuracy:.2%}",
            )
        )
    return GateResult(tuple(checks))
