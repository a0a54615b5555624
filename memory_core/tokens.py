"""Exact token accounting in the OpenAI chat format, cached per message."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import tiktoken
from tiktoken.model import encoding_name_for_model

from memory_core.errors import EncodingUnavailableError
from memory_core.models import ToolCall

SUPPORTED_ENCODINGS: tuple[str, ...] = ("o200k_base", "cl100k_base", "p50k_base")


def encoding_for_model(model: str) -> str:
    """The encoding a model bills with (tiktoken's own model table), if memstream supports it."""
    try:
        name = encoding_name_for_model(model)
    except KeyError:
        raise EncodingUnavailableError(
            model, "unknown model; set `encoding` to one of " + ", ".join(SUPPORTED_ENCODINGS)
        ) from None
    if name not in SUPPORTED_ENCODINGS:
        raise EncodingUnavailableError(
            name, f"model {model!r} uses an unsupported encoding; set `encoding` explicitly"
        )
    return name


@dataclass(frozen=True, slots=True)
class ChatFormat:
    """Per-message overheads of the chat format, as the OpenAI API bills them."""

    tokens_per_message: int = 3
    tokens_per_name: int = 1
    reply_priming: int = 3

    @classmethod
    def for_model(cls, model: str | None) -> ChatFormat:
        """The legacy gpt-3.5-turbo-0301 format differs; every later chat model uses 3/1/3."""
        if model is not None and model.startswith("gpt-3.5-turbo-0301"):
            return cls(tokens_per_message=4, tokens_per_name=-1)
        return cls()


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """The token-relevant fields of one chat message."""

    role: str
    content: str
    name: str | None = None
    tool_calls: Sequence[ToolCall] = ()


class TokenCounter:
    """Counts chat-format tokens for one encoding, with a bounded LRU of per-message costs."""

    def __init__(
        self,
        encoding: tiktoken.Encoding,
        *,
        chat_format: ChatFormat | None = None,
        cache_size: int = 65_536,
    ) -> None:
        self.encoding = encoding
        self.chat_format = chat_format or ChatFormat()
        self._cache: OrderedDict[_Key, int] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:
        """The encoding name."""
        return self.encoding.name

    def text_tokens(self, text: str) -> int:
        """Tokens of plain text (special-token strings count as ordinary text)."""
        return len(self.encoding.encode_ordinary(text))

    def message_tokens(
        self,
        role: str,
        content: str,
        name: str | None = None,
        tool_calls: Sequence[ToolCall] = (),
    ) -> int:
        """Chat-format cost of one message (without the reply priming).

        The name counts only if it is set and non-empty: an empty name is absent (the API
        refuses one; memstream drops it at the boundary).
        """
        if not name:
            name = None
        key: _Key = (
            (role, name, content)
            if not tool_calls and len(content) <= _PLAIN_KEY_CHARS
            else _digest(role, content, name, tool_calls)
        )
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        fmt = self.chat_format
        cost = fmt.tokens_per_message + self.text_tokens(role) + self.text_tokens(content)
        if name:
            cost += fmt.tokens_per_name + self.text_tokens(name)
        for call in tool_calls:
            # OpenAI does not publish the billing of tool calls; this counts their name and
            # arguments as text, which is what the model reads back.
            cost += self.text_tokens(call.name) + self.text_tokens(call.arguments)
        self._cache[key] = cost
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return cost

    def prompt_tokens(self, messages: Iterable[ChatMessage]) -> int:
        """Tokens the API bills for a prompt of ``messages`` (reply priming included)."""
        total = sum(self.message_tokens(m.role, m.content, m.name, m.tool_calls) for m in messages)
        return total + self.chat_format.reply_priming

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` whose tokens fit in ``max_tokens``."""
        if max_tokens <= 0:
            return ""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        cut = max_tokens
        while cut > 0:
            prefix = self.encoding.decode(tokens[:cut], errors="ignore")
            if self.text_tokens(prefix) <= max_tokens:
                return prefix
            cut -= 1
        return ""


# Short plain messages are their own cache key (hashing a str is C-fast and cached on the
# object); anything longer keys by a 128-bit digest so the cache's memory stays bounded.
_PLAIN_KEY_CHARS = 256
_Key = tuple[str, str | None, str] | bytes


def _digest(role: str, content: str, name: str | None, tool_calls: Sequence[ToolCall]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(role.encode())
    h.update(b"\x00")
    h.update((name or "").encode())
    h.update(b"\x00")
    h.update(content.encode("utf-8", "surrogatepass"))
    for call in tool_calls:
        h.update(b"\x00")
        h.update(call.name.encode())
        h.update(b"\x01")
        h.update(call.arguments.encode("utf-8", "surrogatepass"))
    return h.digest()
