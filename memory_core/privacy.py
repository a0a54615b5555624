"""Redaction and non-persistable roles, applied before anything is stored, logged or traced."""

from __future__ import annotations

import re

from memory_core.config import PrivacyConfig
from memory_core.models import Role


class PrivacyPolicy:
    """A memory's redaction patterns and the roles that are never persisted."""

    __slots__ = ("_pattern", "blocked", "redaction", "redacts")

    def __init__(self, config: PrivacyConfig) -> None:
        self._pattern = (
            re.compile("|".join(f"(?:{p})" for p in config.redact_patterns))
            if config.redact_patterns
            else None
        )
        self.redaction = config.redaction
        self.redacts = self._pattern is not None
        # The roles never stored. A tuple: ``in`` matches members by identity first, while
        # hashing a StrEnum member runs Python code (checked for every event).
        self.blocked = tuple(dict.fromkeys(config.non_persistable_roles))

    def persists(self, role: Role) -> bool:
        """Whether messages of ``role`` may be stored at all."""
        return role not in self.blocked

    def redact(self, text: str) -> str:
        """``text`` with every match of the patterns replaced by the redaction marker."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(self.redaction, text)
