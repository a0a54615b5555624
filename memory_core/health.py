"""MemoryHealth: how full a memory is, its flush and lock state, and its TTL."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from memory_core.config import Budget
from memory_core.models import CATEGORIES, Category


@dataclass(frozen=True, slots=True)
class MemoryHealth:
    """A memory's health as one plain value (``as_dict`` for JSON)."""

    memory_key: str
    memory_id: str | None
    exists: bool
    messages: int
    max_messages: int | None
    tokens: dict[Category, int]
    budget: dict[Category, int]
    last_flush_at_ms: int | None
    last_tokens_saved: int
    tokens_saved_total: int
    flush_seq: int
    flush_pending: bool
    lock_holder: str | None
    lock_ttl_ms: int | None
    key_ttl_ms: int | None
    last_applied_offset: int
    config_matches: bool | None

    @property
    def total_tokens(self) -> int:
        """Tokens held over all categories."""
        return sum(self.tokens.values())

    @property
    def usage(self) -> dict[Category, float]:
        """Share of each category's budget in use (0 for an empty budget)."""
        return {c: (self.tokens[c] / self.budget[c] if self.budget[c] else 0.0) for c in CATEGORIES}

    @property
    def within_budget(self) -> bool:
        """Every category within its budget and the message cap respected."""
        capped = self.max_messages is None or self.messages <= self.max_messages
        return capped and all(self.tokens[c] <= self.budget[c] for c in CATEGORIES)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (categories as strings, usage included)."""
        out = asdict(self)
        out["tokens"] = {c.value: v for c, v in self.tokens.items()}
        out["budget"] = {c.value: v for c, v in self.budget.items()}
        out["usage"] = {c.value: round(v, 4) for c, v in self.usage.items()}
        out["total_tokens"] = self.total_tokens
        out["within_budget"] = self.within_budget
        return out


def budget_by_category(budget: Budget) -> dict[Category, int]:
    """A budget as a category → tokens dict."""
    return {c: budget.of(c) for c in CATEGORIES}
