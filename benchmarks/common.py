"""Shared benchmark plumbing: timing, the JSON result files, the target check."""

from __future__ import annotations

import json
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from consumers.settings import Settings

RESULTS = Path(__file__).parent / "results"


def isolated(settings: Settings, memories: str, tag: str) -> Settings:
    """``settings`` with fresh topics, group and key prefix for one run, and ``memories`` as
    its memories file (under the stack dir)."""
    name = f"{tag}{uuid.uuid4().hex[:6]}"
    path = Path(settings.stack_dir) / f"bench-memories-{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(memories)
    return settings.model_copy(
        update={
            "events_topic": f"bench.{name}.events",
            "dlq_topic": f"bench.{name}.dlq",
            "flush_topic": f"bench.{name}.flush",
            "memories_file": path,
            "key_prefix": f"b{name}",
            "consumer_group": f"bench-{name}",
        }
    )


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
