"""Recovery from the log: streaming ``verify`` and ``replay``, point-in-time memories.

- ``reading``: the topic read partition by partition, decoded as the apply consumer does;
- ``verify``: Redis compared with the fold of the log;
- ``replay``: Redis rebuilt (converging over a partly written one);
- ``point_in_time``: one memory as it was at an offset or a time.
"""

from consumers.recovery.point_in_time import PointInTime, memory_at, parse_time_ms
from consumers.recovery.reading import LogContents, Progress, ProgressFn, read_log
from consumers.recovery.replay import ReplayReport, replay
from consumers.recovery.verify import Mismatch, VerifyReport, verify

__all__ = [
    "LogContents",
    "Mismatch",
    "PointInTime",
    "Progress",
    "ProgressFn",
    "ReplayReport",
    "VerifyReport",
    "memory_at",
    "parse_time_ms",
    "read_log",
    "replay",
    "verify",
]
