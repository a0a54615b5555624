"""Run every benchmark; exit 1 if a ratio misses its target (``python -m benchmarks [name…]``)."""

from __future__ import annotations

import sys

from benchmarks import latency, pipeline, recovery, restart, store, tokens, wait
from consumers.lifecycle import tune_gc
from consumers.settings import Settings

BENCHMARKS = {
    "tokens": tokens.run,
    "store": store.run,
    "pipeline": pipeline.run,
    "restart": restart.run,
    "latency": latency.run,  # only some of its targets gate (latency.GATING)
    "wait": wait.run,
    "recovery": recovery.run,
}


def main(argv: list[str]) -> int:
    """Run the named benchmarks (all by default); ``--report-only`` never fails the run."""
    report_only = "--report-only" in argv
    argv = [a for a in argv if a != "--report-only"]
    settings = Settings()
    tune_gc()  # as `memstream run` does: every figure is measured under the production setting
    chosen = argv or list(BENCHMARKS)
    failed = []
    for name in chosen:
        result = BENCHMARKS[name](settings)
        print(result.report())
        print(f"   saved {result.save()}")
        if not result.passed:
            failed.append(name)
    if failed:
        print(f"targets missed: {', '.join(failed)}")
        return 0 if report_only else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
