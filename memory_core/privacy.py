"""Redaction and non-persistable roles, applied before anything is stored, logged or traced."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from memory_core.config import PrivacyConfig
from memory_core.models import Draft, Role, ToolCall
from memory_core.values import replace


def key_digest(memory_key: str) -> str:
    """A stable stand-in for a memory key where keys must not show (logs, workflow ids):
    ``k`` and 16 hex digits of its SHA-256 (``memstream partition KEY`` prints it)."""
    return "k" + hashlib.sha256(memory_key.encode()).hexdigest()[:16]


def shown_key(memory_key: str, show: bool) -> str:
    """``memory_key`` itself when keys may show, else its digest."""
    return memory_key if show else key_digest(memory_key)


class PrivacyPolicy:
    """A memory's redaction patterns and the roles that are never persisted.

    Redaction covers every free-text field of a message: content, name, metadata values and
    tool-call arguments (and a summary's content). Identifiers (message ids, tool-call ids and
    names, ``tool_call_id``) and metadata keys are kept as written: they pair a tool result
    with its call and a message with its retries, and a pattern rewriting two of them to the
    same marker would break that pairing.
    """

    __slots__ = ("_pattern", "blocked", "redaction", "redacts")

    def __init__(self, config: PrivacyConfig) -> None:
        self._pattern = (
            re.compile("|".join(f"(?:{p})" for p in config.redact_patterns))
            if config.redact_patterns
            else None
        )
        self.redaction = config.redaction
        # False for most memories: the hot path tests it once and skips every other call.
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

    def redact_name(self, name: str | None) -> str | None:
        """A redacted name; an empty one (as written, or once redacted) is None (absent)."""
        if not name:
            return None
        if self._pattern is None:
            return name
        return self._pattern.sub(self.redaction, name) or None

    def redact_metadata(self, metadata: Mapping[str, str]) -> Mapping[str, str]:
        """``metadata`` with its values redacted (keys are field names, kept)."""
        if self._pattern is None or not metadata:
            return metadata
        sub, marker = self._pattern.sub, self.redaction
        return {k: sub(marker, v) for k, v in metadata.items()}

    def redact_calls(self, calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
        """``calls`` with their arguments redacted (ids and names are identifiers, kept)."""
        if self._pattern is None or not calls:
            return calls
        sub, marker = self._pattern.sub, self.redaction
        return tuple(ToolCall(c.id, c.name, sub(marker, c.arguments)) for c in calls)

    def redact_draft(self, draft: Draft) -> Draft:
        """``draft`` with every free-text field redacted and an empty name dropped.

        Returns ``draft`` itself when there is nothing to change (no pattern, a name that is
        not empty), so a memory without patterns pays nothing.
        """
        if self._pattern is None:
            return draft if draft.name != "" else replace(draft, name=None)
        return replace(
            draft,
            content=self.redact(draft.content),
            name=self.redact_name(draft.name),
            metadata=self.redact_metadata(draft.metadata),
            tool_calls=self.redact_calls(draft.tool_calls),
        )
