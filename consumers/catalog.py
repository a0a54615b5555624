"""MemoryCatalog: the memory resources a process knows, with their policies and counters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memory_core import (
    EncodingRegistry,
    MemoryConfig,
    MemoryPolicy,
    TokenCounter,
    load_configs,
)
from memory_core.errors import ConfigError


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
        # (memory key, record key, memory id) of records already checked, with their entry:
        # filled and bounded by ``consumers.events.to_domain``.
        self.checked: dict[tuple[str, bytes | None, str], CatalogEntry] = {}

    @classmethod
    def from_file(cls, path: Path, encodings: EncodingRegistry) -> MemoryCatalog:
        """Load and validate ``path`` (YAML)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the memories file: {exc}") from None
        return cls(load_configs(text), encodings)

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
