"""MemoryCatalog: the memory resources a process knows, with their policies and counters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memory_core import (
    DeadLetterReason,
    EncodingRegistry,
    MemoryConfig,
    MemoryPolicy,
    RejectedEventError,
    TokenCounter,
    load_configs,
    validate_memory_key,
)
from memory_core.errors import ConfigError, InvalidKeyError

_CHECKED_MAX = 65_536


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One memory resource ready for the apply path."""

    policy: MemoryPolicy
    counter: TokenCounter

    @property
    def config(self) -> MemoryConfig:
        """The memory's config."""
        return self.policy.config


class MemoryCatalog:
    """Memory resources by id; built once per process from the memories file."""

    def __init__(self, configs: list[MemoryConfig], encodings: EncodingRegistry) -> None:
        self._entries = {
            c.id: CatalogEntry(
                MemoryPolicy.of(c), encodings.counter(c.encoding_name, model=c.model)
            )
            for c in configs
        }
        # (memory key, record key, memory id) already checked, with their entry.
        self._checked: dict[tuple[str, bytes | None, str], CatalogEntry] = {}

    @classmethod
    def from_file(cls, path: Path, encodings: EncodingRegistry) -> MemoryCatalog:
        """Load and validate ``path`` (YAML)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the memories file: {exc}") from None
        return cls(load_configs(text), encodings)

    def entry_for(self, memory_key: str, record_key: bytes | None, memory_id: str) -> CatalogEntry:
        """The entry of a record's memory, once its keys are checked.

        Raises ``RejectedEventError`` (invalid key, key mismatch, unknown memory). A key sends
        many events, so what passed is remembered (bounded).
        """
        seen = (memory_key, record_key, memory_id)
        entry = self._checked.get(seen)
        if entry is not None:
            return entry
        try:
            validate_memory_key(memory_key)
        except InvalidKeyError as exc:
            raise RejectedEventError(DeadLetterReason.INVALID_KEY, str(exc)) from None
        if record_key is not None and record_key.decode("utf-8", "replace") != memory_key:
            raise RejectedEventError(
                DeadLetterReason.INVALID_KEY, "record key differs from the event's memory_key"
            )
        entry = self._entries.get(memory_id)
        if entry is None:
            raise RejectedEventError(
                DeadLetterReason.UNKNOWN_MEMORY, f"no memory resource {memory_id!r}"
            )
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()
        self._checked[seen] = entry
        return entry

    def get(self, memory_id: str) -> CatalogEntry | None:
        """The entry of ``memory_id``, or None if unknown."""
        return self._entries.get(memory_id)

    def config(self, memory_id: str) -> MemoryConfig:
        """The config of ``memory_id``; ``ConfigError`` if unknown."""
        entry = self._entries.get(memory_id)
        if entry is None:
            raise ConfigError("memory_id", f"unknown memory {memory_id!r}; known: {self.ids}")
        return entry.config

    def __contains__(self, memory_id: object) -> bool:
        return memory_id in self._entries

    @property
    def ids(self) -> list[str]:
        """Known memory ids."""
        return list(self._entries)
