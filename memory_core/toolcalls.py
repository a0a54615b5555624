"""Tool-call groups: an assistant message that calls tools and the results that answer it."""

from __future__ import annotations

from collections.abc import Sequence

from memory_core.models import Kind, Message, Role


def tool_unit(messages: Sequence[Message], index: int) -> list[int]:
    """Indices of the message at ``index`` and the tool-call group it belongs to, ascending."""
    msg = messages[index]
    if msg.role is Role.TOOL and msg.tool_call_id is not None:
        for i in range(index - 1, -1, -1):
            cand = messages[i]
            if cand.role is Role.ASSISTANT and any(
                c.id == msg.tool_call_id for c in cand.tool_calls
            ):
                return tool_unit(messages, i)
        return [index]
    if msg.role is Role.ASSISTANT and msg.tool_calls:
        call_ids = {c.id for c in msg.tool_calls}
        return [index] + [
            i
            for i in range(index + 1, len(messages))
            if messages[i].role is Role.TOOL and messages[i].tool_call_id in call_ids
        ]
    return [index]


def has_caller(messages: Sequence[Message], call_id: str | None) -> bool:
    """Whether an assistant message in ``messages`` made the tool call ``call_id``."""
    if call_id is None:
        return False
    return any(
        m.role is Role.ASSISTANT
        and m.kind is Kind.MESSAGE
        and any(c.id == call_id for c in m.tool_calls)
        for m in messages
    )
