"""The one result format every benchmark writes (ARCHITECTURE.md, "Benchmarks")."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def write(
    name: str,
    unit: str,
    higher_is_better: bool,
    ours: float,
    baseline: float | None,
    limit: float | None,
    params: dict[str, Any],
    cases: list[dict[str, Any]],
) -> Path:
    def ratio(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return a / b if higher_is_better else b / a

    doc = {
        "name": name,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "ours": ours,
        "baseline": baseline,
        "limit": limit,
        "ratio_vs_baseline": ratio(ours, baseline),
        "fraction_of_limit": ratio(ours, limit),
        "params": params,
        "cases": cases,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path
