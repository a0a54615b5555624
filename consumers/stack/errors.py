"""The local stack's single exception type."""

from __future__ import annotations

from memory_core import MemstreamError


class StackError(MemstreamError):
    """A local-stack service could not be installed, started, reached or stopped."""
