"""HybridFlushingStrategy: when to flush, which block, and the rule-based summary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memory_core.config import Budget, FlushingConfig, exact_ceil
from memory_core.errors import NothingToFlushError
from memory_core.models import Category, Kind, MemoryState, Message, Role
from memory_core.tokens import TokenCounter
from memory_core.toolcalls import tool_unit

MIN_BLOCK = 2


class FlushRule:
    """The flush rule: none pending, short-term tokens ≥ threshold × budget, ≥ 2 messages.

    Built once per budget and threshold (the manager checks it after every event).
    """

    __slots__ = ("at", "enabled")

    def __init__(self, budget: Budget, threshold: float) -> None:
        self.enabled = budget.short_term > 0
        self.at = exact_ceil(budget.short_term, threshold)

    def due(
        self, short_tokens: int | None, short_messages: Callable[[], int], pending: bool
    ) -> bool:
        """Whether to request a flush; ``short_tokens`` None skips the threshold (an explicit
        flush request)."""
        if pending or not self.enabled:
            return False
        if short_tokens is not None and short_tokens < self.at:
            return False
        # One message alone cannot be summarized into something smaller.
        return short_messages() >= MIN_BLOCK


def flush_due(
    *,
    short_tokens: int | None,
    short_messages: Callable[[], int],
    pending: bool,
    budget: Budget,
    threshold: float,
) -> bool:
    """``FlushRule(budget, threshold).due(...)``, for a single check."""
    return FlushRule(budget, threshold).due(short_tokens, short_messages, pending)


@dataclass(frozen=True, slots=True)
class FlushPlan:
    """What a flush replaces, by what, and the tokens it saves."""

    flush_seq: int
    covered: tuple[Message, ...]
    summary: Message
    tokens_before: int

    @property
    def tokens_saved(self) -> int:
        """Tokens of the covered messages minus the summary's."""
        return self.tokens_before - self.summary.tokens


class HybridFlushingStrategy:
    """Threshold check plus a rule-based summary: the block's first and N most recent messages."""

    def __init__(self, config: FlushingConfig, budget: Budget, counter: TokenCounter) -> None:
        self.config = config
        self.budget = budget
        self.counter = counter

    def should_flush(self, state: MemoryState) -> bool:
        """Whether a flush should be requested now (see ``flush_due``)."""
        return flush_due(
            short_tokens=state.tokens(Category.SHORT_TERM),
            short_messages=lambda: sum(
                1 for m in state.messages if m.category is Category.SHORT_TERM
            ),
            pending=state.flush_pending,
            budget=self.budget,
            threshold=self.config.threshold,
        )

    def block(self, state: MemoryState) -> list[Message]:
        """The oldest ``summarize_oldest_percent`` of short-term messages, tool groups whole."""
        messages = state.messages
        short = [i for i, m in enumerate(messages) if m.category is Category.SHORT_TERM]
        if len(short) < MIN_BLOCK:
            return []
        want = max(MIN_BLOCK, exact_ceil(len(short), self.config.summarize_oldest_percent))
        chosen: set[int] = set()
        for i in short:
            if len(chosen) >= want:
                break
            chosen.update(tool_unit(messages, i))
        return [messages[i] for i in sorted(chosen)]

    def plan(
        self, state: MemoryState, *, memory_key: str, summary_id: str, now_ms: int
    ) -> FlushPlan:
        """Build the summary of the oldest block; raises ``NothingToFlushError`` if none helps."""
        block = self.block(state)
        if len(block) < MIN_BLOCK:
            raise NothingToFlushError(memory_key, "fewer than 2 short-term messages")
        before = sum(m.tokens for m in block)
        # Never larger than what it replaces, than summary_tokens, or than the long-term budget.
        limit = min(self.config.summary_tokens, self.budget.long_term, before - 1)
        overhead = self.counter.message_tokens(Role.SYSTEM.value, "")
        content = self._summary_text(block, limit - overhead)
        if not content:
            raise NothingToFlushError(memory_key, f"a summary cannot fit in {limit} tokens")
        tokens = self.counter.message_tokens(Role.SYSTEM.value, content)
        summary = Message(
            id=summary_id,
            role=Role.SYSTEM,
            content=content,
            tokens=tokens,
            created_at_ms=now_ms,
            kind=Kind.SUMMARY,
            covers=tuple(m.id for m in block),
        )
        return FlushPlan(state.flush_seq, tuple(block), summary, before)

    def _summary_text(self, block: list[Message], max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        n_recent = self.config.summary_recent_messages
        first, rest = block[0], block[1:]
        recent = rest[-n_recent:] if n_recent else []
        omitted = len(rest) - len(recent)
        header = f"Summary of {len(block)} earlier messages:"
        quoted = [first, *recent]
        lines_budget = max_tokens - self.counter.text_tokens(header) - 8 * (len(quoted) + 1)
        per_line = max(lines_budget // max(len(quoted), 1), 0)
        lines = [header, _quote(first, self.counter.truncate(first.content, per_line))]
        if omitted:
            lines.append(f"… {omitted} messages omitted …")
        lines.extend(_quote(m, self.counter.truncate(m.content, per_line)) for m in recent)
        text = "\n".join(lines)
        # Token counts are not additive across joins; the final cut guarantees the bound.
        return self.counter.truncate(text, max_tokens)


def _quote(message: Message, content: str) -> str:
    who = message.role.value if message.name is None else f"{message.role.value} {message.name}"
    return f"[{who}] {content}"
