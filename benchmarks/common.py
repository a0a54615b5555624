"""Shared benchmark plumbing: timing, the JSON result files, the target check."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


@dataclass
class Result:
    """One benchmark: throughputs, their ratios and whether each target is met."""

    name: str
    figures: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every ratio at or above its target."""
        return all(self.ratios[k] >= v for k, v in self.targets.items())

    def report(self) -> str:
        """Human-readable lines."""
        lines = [f"== {self.name} {self.params}"]
        lines += [f"   {k:<34} {v:>14,.1f}" for k, v in self.figures.items()]
        for k, v in self.ratios.items():
            target = self.targets.get(k)
            verdict = "" if target is None else (" ok" if v >= target else f" BELOW {target:g}")
            lines.append(f"   ratio {k:<28} {v:>14.2f}{verdict}")
        return "\n".join(lines)

    def save(self) -> Path:
        """Write ``results/<name>.json``."""
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{self.name}.json"
        payload = {
            **asdict(self),
            "passed": self.passed,
            "at": time.time(),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
        path.write_text(json.dumps(payload, indent=2))
        return path


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """The best (highest) of ``runs`` throughput measurements: the least disturbed one."""
    return max(fn() for _ in range(runs))
