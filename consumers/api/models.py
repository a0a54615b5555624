"""The HTTP API's request and response bodies (also its OpenAPI schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from memory_core import Role, WriteOutcome


class FunctionCall(BaseModel):
    """The function a tool call invokes, as in Chat Completions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    arguments: str = ""


class ToolCallIn(BaseModel):
    """One tool call of an assistant message, as in Chat Completions."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class MessageIn(BaseModel):
    """A message to append: the Chat Completions fields, plus ids for idempotent retries."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str | None = None
    name: str | None = Field(default=None, max_length=256)
    tool_calls: list[ToolCallIn] = Field(default_factory=list)
    tool_call_id: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] = Field(default_factory=dict)
    # Reuse both ids when retrying a write whose outcome was not confirmed.
    id: str | None = Field(default=None, min_length=1, max_length=256, description="message id")
    event_id: str | None = Field(default=None, min_length=1, max_length=256)


class AppendIn(BaseModel):
    """One or many messages, appended in order."""

    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(min_length=1)
    # Seconds to wait until applied; 0 answers once the events are durable (202).
    wait: float = Field(default=10.0, ge=0, le=60)


class WriteIn(BaseModel):
    """A clear or a flush request."""

    model_config = ConfigDict(extra="forbid")

    event_id: str | None = Field(default=None, min_length=1, max_length=256)
    wait: float = Field(default=10.0, ge=0, le=60)


class OutcomeOut(BaseModel):
    """What became of one written event."""

    status: str = Field(description="applied, duplicate, rejected, published, not_persisted")
    message_id: str | None = None
    event_id: str | None = None
    partition: int | None = None
    offset: int | None = None
    reason: str | None = None
    detail: str = ""

    @classmethod
    def of(cls, outcome: WriteOutcome) -> OutcomeOut:
        """The body of ``outcome``."""
        return cls(
            status=outcome.status.value,
            message_id=outcome.message_id,
            event_id=outcome.event_id,
            partition=outcome.partition,
            offset=outcome.offset,
            reason=outcome.reason.value if outcome.reason is not None else None,
            detail=outcome.detail,
        )


class WriteOut(BaseModel):
    """The outcome of every event of a write, in order, and what the status code means."""

    memory_key: str
    outcomes: list[OutcomeOut]
    detail: str = ""


class MessagesOut(BaseModel):
    """One page of a memory's messages, oldest first."""

    memory_key: str
    memory_id: str
    messages: list[dict[str, Any]]
    offset: int
    limit: int
    total: int
    has_more: bool


class PromptOut(BaseModel):
    """The memory as Chat Completions messages and the tokens the API bills for them."""

    memory_key: str
    messages: list[dict[str, Any]]
    prompt_tokens: int
    max_tokens: int | None
    omitted: dict[str, Any]


class MemoriesOut(BaseModel):
    """Memory keys found by one listing call; pass ``cursor`` back for more (null: done)."""

    memories: list[str]
    cursor: str | None


class ErrorOut(BaseModel):
    """Why a request failed."""

    error: str
    detail: str
