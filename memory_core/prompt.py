"""A memory as a prompt: OpenAI Chat Completions messages and the exact tokens they bill.

Rules (docs/semantics.md, "Prompts"): messages in memory order; a summary is a ``system``
message; ``prompt_tokens`` is the chat-format count of exactly the list returned, reply
priming included (what ``memstream tokens count`` prints for it). ``max_tokens`` keeps every
system message and the newest whole tool units that fit, never a tool result without the
call it answers, and lists what it left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memory_core.errors import MemstreamError
from memory_core.models import Kind, Message, Role
from memory_core.tokens import TokenCounter
from memory_core.toolcalls import tool_unit

ChatDict = dict[str, Any]


class PromptBudgetError(MemstreamError, ValueError):
    """``max_tokens`` is below what the prompt's system messages alone cost."""

    def __init__(self, max_tokens: int, required: int) -> None:
        super().__init__(
            f"max_tokens {max_tokens} is below the {required} tokens the memory's system "
            "messages and summaries cost (with the reply priming); they are always kept: ask "
            f"for at least {required}"
        )
        self.max_tokens = max_tokens
        self.required = required


@dataclass(frozen=True, slots=True)
class Prompt:
    """The memory as Chat Completions messages; ``omitted``: ids left out by ``max_tokens``."""

    messages: tuple[ChatDict, ...]
    prompt_tokens: int
    omitted: tuple[str, ...] = ()
    max_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form the CLI and the HTTP API answer with."""
        return {
            "messages": list(self.messages),
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "omitted": {"count": len(self.omitted), "message_ids": list(self.omitted)},
        }


def chat_message(message: Message) -> ChatDict:
    """One stored message in the Chat Completions format (a summary as ``system``)."""
    role = Role.SYSTEM.value if message.kind is Kind.SUMMARY else message.role.value
    out: ChatDict = {"role": role, "content": message.content}
    if message.name:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def message_view(message: Message) -> ChatDict:
    """A stored message as the CLI and the HTTP API show it: its Chat Completions form plus
    its id, kind, tokens, creation time, metadata and (for a summary) the ids it covers.
    Fed to ``memstream tokens count``, a list of them bills as their prompt."""
    out = chat_message(message)
    out["id"] = message.id
    out["kind"] = message.kind.value
    out["tokens"] = message.tokens
    out["created_at_ms"] = message.created_at_ms
    if message.metadata:
        out["metadata"] = dict(message.metadata)
    if message.covers:
        out["covers"] = list(message.covers)
    return out


def _cost(counter: TokenCounter, message: Message) -> int:
    # The rendered message's own cost: its role may differ from the stored one (summaries).
    role = Role.SYSTEM.value if message.kind is Kind.SUMMARY else message.role.value
    return counter.message_tokens(role, message.content, message.name, message.tool_calls)


def build_prompt(
    messages: Sequence[Message], counter: TokenCounter, max_tokens: int | None = None
) -> Prompt:
    """``messages`` (memory order) as a prompt, trimmed to ``max_tokens`` when given.

    Raises ``PromptBudgetError`` when the system messages alone exceed ``max_tokens``, and
    ``ValueError`` for a ``max_tokens`` below 1.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    costs = [_cost(counter, m) for m in messages]
    priming = counter.chat_format.reply_priming
    chosen = (
        set(range(len(messages)))
        if max_tokens is None
        else set(_fit(messages, costs, max_tokens, priming))
    )
    return Prompt(
        messages=tuple(chat_message(messages[i]) for i in sorted(chosen)),
        prompt_tokens=sum(costs[i] for i in chosen) + priming,
        omitted=tuple(m.id for i, m in enumerate(messages) if i not in chosen),
        max_tokens=max_tokens,
    )


def _fit(messages: Sequence[Message], costs: list[int], max_tokens: int, priming: int) -> list[int]:
    system = [i for i, m in enumerate(messages) if m.role is Role.SYSTEM or m.kind is Kind.SUMMARY]
    required = priming + sum(costs[i] for i in system)
    if required > max_tokens:
        raise PromptBudgetError(max_tokens, required)
    room = max_tokens - required
    taken = set(system)
    kept = list(system)
    # Newest first: the unit of each message not yet kept; stop at the first that does not fit
    # (what is kept is the recent conversation, not a scattering of old small messages).
    for i in range(len(messages) - 1, -1, -1):
        if i in taken:
            continue
        unit = [j for j in tool_unit(messages, i) if j not in taken]
        cost = sum(costs[j] for j in unit)
        if cost > room:
            break
        room -= cost
        taken.update(unit)
        kept += unit
    return kept
