"""MemoryCatalog: the memory resources a process knows, with their policies and counters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memory_core import (
    AsyncSafeMemoryInstance,
    DeadLetterReason,
    EncodingRegistry,
    KeyTemplate,
    MemoryConfig,
    MemoryPolicy,
    RejectedEventError,
    TokenCounter,
    load_configs,
    validate_memory_key,
)
from memory_core.errors import (
    ConfigError,
    EncodingUnavailableError,
    InvalidKeyError,
    MemstreamError,
)
from memory_core.ports import AppliedSignal, EventPublisher, MemoryStore

_CHECKED_MAX = 65_536


class ResourceError(MemstreamError):
    """A memory key no resource's template renders, or a resource id that is not its own."""


def _entry(config: MemoryConfig, encodings: EncodingRegistry) -> CatalogEntry:
    try:
        counter = encodings.counter(config.encoding_name, model=config.model)
    except EncodingUnavailableError as exc:
        raise EncodingUnavailableError(
            exc.encoding, f"{exc.reason} (memory resource {config.id}, model {config.model})"
        ) from exc
    return CatalogEntry(MemoryPolicy.of(config), counter)


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
    """Memory resources by id; built once per process from the memories file.

    A memory key belongs to the first resource, in file order, whose key template renders it:
    an event naming another resource for that key is refused (docs/semantics.md, "Keys").
    """

    def __init__(self, configs: list[MemoryConfig], encodings: EncodingRegistry) -> None:
        self._entries = {c.id: _entry(c, encodings) for c in configs}
        self._templates = tuple((KeyTemplate(c.key), c) for c in configs)
        # (memory key, record key, memory id) that passed every check, with their entry: a key
        # sends many events, so each combination is checked once (until the memo fills up and
        # starts over, which keeps it bounded without bookkeeping per hit).
        self._checked: dict[tuple[str, bytes, str], CatalogEntry] = {}

    @classmethod
    def from_file(cls, path: Path, encodings: EncodingRegistry) -> MemoryCatalog:
        """Load and validate ``path`` (YAML)."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read the memories file: {exc}") from None
        return cls(load_configs(text, str(path)), encodings)

    def entry_for(self, memory_key: str, record_key: bytes | None, memory_id: str) -> CatalogEntry:
        """The entry of a record's memory, once its record key and memory key are checked.

        Raises ``RejectedEventError``: ``key_mismatch`` (the record key is null or not the
        memory key), ``invalid_key`` (an unsafe key, or one no template renders),
        ``unknown_memory``, ``memory_mismatch`` (the key belongs to another resource).
        """
        if record_key is None:
            raise RejectedEventError(
                DeadLetterReason.KEY_MISMATCH,
                f"the record has no key; it must be the event's memory_key {_shown(memory_key)} "
                "(the record key chooses the partition that orders the memory's events)",
            )
        seen = (memory_key, record_key, memory_id)
        entry = self._checked.get(seen)
        if entry is not None:
            return entry
        entry = self._check(memory_key, record_key, memory_id)
        if len(self._checked) >= _CHECKED_MAX:
            self._checked.clear()
        self._checked[seen] = entry
        return entry

    def resolve(self, memory_key: str, memory_id: str | None = None) -> CatalogEntry:
        """The entry of the resource ``memory_key`` belongs to: the first whose template
        renders it (the consumer's rule, so never ambiguous). ``memory_id``, when given, must
        be that resource. ``ResourceError`` otherwise, naming the resources and templates."""
        owner = self.resource_for_key(memory_key)
        if owner is None:
            known = ", ".join(f"{e.config.id} ({e.config.key})" for e in self._entries.values())
            raise ResourceError(f"no memory resource's key template renders {memory_key}: {known}")
        if memory_id is not None and memory_id != owner.id:
            if memory_id not in self._entries:
                raise ConfigError("memory_id", f"unknown memory {memory_id!r}; known: {self.ids}")
            raise ResourceError(
                f"{memory_key} belongs to memory {owner.id} ({owner.key}, the first template "
                f"that renders it); events naming {memory_id} are dead-lettered as "
                "memory_mismatch",
            )
        return self._entries[owner.id]

    def instance(
        self,
        memory_key: str,
        *,
        store: MemoryStore,
        publisher: EventPublisher | None = None,
        memory_id: str | None = None,
        signal: AppliedSignal | None = None,
    ) -> AsyncSafeMemoryInstance:
        """The memory ``memory_key`` (its resource resolved as by ``resolve``), with its
        token counter (ready for ``prompt()``) and, if given, the applied ``signal`` its
        writes wait on."""
        entry = self.resolve(memory_key, memory_id)
        return AsyncSafeMemoryInstance(
            memory_key,
            entry.config,
            store=store,
            publisher=publisher,
            counter=entry.counter,
            signal=signal,
        )

    def resource_for_key(self, memory_key: str) -> MemoryConfig | None:
        """The resource ``memory_key`` belongs to: the first whose template renders it."""
        for template, config in self._templates:
            if template.matches(memory_key):
                return config
        return None

    def _check(self, memory_key: str, record_key: bytes, memory_id: str) -> CatalogEntry:
        if record_key.decode("utf-8", "replace") != memory_key:
            raise RejectedEventError(
                DeadLetterReason.KEY_MISMATCH,
                f"record key {_shown(record_key.decode('utf-8', 'replace'))} differs from the "
                f"event's memory_key {_shown(memory_key)}",
            )
        try:
            validate_memory_key(memory_key)
        except InvalidKeyError as exc:
            raise RejectedEventError(
                DeadLetterReason.INVALID_KEY, f"{exc} (memory key {_shown(memory_key)})"
            ) from None
        entry = self._entries.get(memory_id)
        if entry is None:
            raise RejectedEventError(
                DeadLetterReason.UNKNOWN_MEMORY,
                f"no memory resource {_shown(memory_id)}; known: {', '.join(self._entries)}",
            )
        owner = self.resource_for_key(memory_key)
        if owner is None:
            raise RejectedEventError(
                DeadLetterReason.INVALID_KEY,
                f"memory key {_shown(memory_key)} matches no key template; keys of memory "
                f"{memory_id!r} look like {entry.config.key!r}",
            )
        if owner.id != memory_id:
            raise RejectedEventError(
                DeadLetterReason.MEMORY_MISMATCH,
                f"memory key {_shown(memory_key)} belongs to memory {owner.id!r} (template "
                f"{owner.key!r}, the first in the memories file that matches it), but the "
                f"event names {memory_id!r} (template {entry.config.key!r})",
            )
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


def _shown(text: str) -> str:
    """``text`` quoted for a dead-letter detail: cut short, control characters escaped."""
    return repr(text[:80]) + ("…" if len(text) > 80 else "")
