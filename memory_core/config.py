"""Memory resource config: the YAML users write, validated at the boundary."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from typing import Annotated, Any, Self

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from memory_core.errors import (
    ConfigError,
    ConfigErrors,
    EncodingUnavailableError,
    InvalidKeyError,
)
from memory_core.keys import KeyTemplate
from memory_core.models import Category, Role
from memory_core.tokens import SUPPORTED_ENCODINGS, encoding_for_model

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def _parse_duration(value: Any) -> Any:
    """Accept ``90``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"250ms"`` or a timedelta."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError("a duration like 30s, 15m, 12h, 7d or 250ms")
        return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]


DEFAULT_FLUSH_RETRY_AFTER = timedelta(minutes=5)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenAllocation(_Strict):
    """Shares of ``max_tokens`` per category; they sum to 1."""

    system: float = Field(default=0.1, ge=0, le=1)
    short_term: float = Field(default=0.7, ge=0, le=1)
    long_term: float = Field(default=0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Self:
        total = self.system + self.short_term + self.long_term
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"system + short_term + long_term must sum to 1, got {total:g}")
        return self


class FlushingConfig(_Strict):
    """When a flush starts and what it summarizes."""

    threshold: float = Field(default=0.8, gt=0, le=1)
    summarize_oldest_percent: float = Field(default=0.3, gt=0, le=1)
    summary_recent_messages: int = Field(default=3, ge=0, le=100)
    summary_tokens: int = Field(default=500, gt=0)
    # A flush still pending this long after it was requested (by the events' own times) is
    # requested again: a flush whose workflow failed is not pending forever.
    retry_after: Duration = DEFAULT_FLUSH_RETRY_AFTER

    @field_validator("retry_after")
    @classmethod
    def _at_least_1ms(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=1):
            raise ValueError("must be at least 1ms")
        return value


class PersistenceConfig(_Strict):
    """How long a memory lives after its last write."""

    ttl: Duration = timedelta(days=7)

    @field_validator("ttl")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1s")
        return value


class LockingConfig(_Strict):
    """Lock lease and acquisition retries."""

    ttl: Duration = timedelta(seconds=10)
    acquire_timeout: Duration = timedelta(seconds=5)
    retry_backoff: Duration = timedelta(milliseconds=20)

    @field_validator("ttl")
    @classmethod
    def _at_least_100ms(cls, value: timedelta) -> timedelta:
        if value < timedelta(milliseconds=100):
            raise ValueError("must be at least 100ms")
        return value


class PrivacyConfig(_Strict):
    """Redaction applied before anything is stored, logged or traced."""

    redact_patterns: tuple[str, ...] = ()
    redaction: str = "[REDACTED]"
    non_persistable_roles: tuple[Role, ...] = ()

    @field_validator("redact_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from exc
        return patterns


@dataclass(frozen=True, slots=True)
class Budget:
    """Token budget per category (floor of ``max_tokens`` × share) and the message cap."""

    max_tokens: int
    system: int
    short_term: int
    long_term: int
    max_messages: int | None = None

    def of(self, category: Category) -> int:
        """The budget of ``category``."""
        if category is Category.SYSTEM:
            return self.system
        if category is Category.SHORT_TERM:
            return self.short_term
        return self.long_term


class MemoryConfig(_Strict):
    """One memory resource: identity, key template, model, budgets, flushing and privacy."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    key: str = Field(min_length=1)
    # encoding is declared before model: model's check needs to know whether it is set.
    encoding: str | None = None
    model: str = "gpt-4o"
    max_tokens: int = Field(gt=0)
    max_messages: int | None = Field(default=None, gt=0)
    token_allocation: TokenAllocation = TokenAllocation()
    flushing: FlushingConfig = FlushingConfig()
    persistence: PersistenceConfig = PersistenceConfig()
    locking: LockingConfig = LockingConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @field_validator("key")
    @classmethod
    def _template_parses(cls, value: str) -> str:
        try:
            KeyTemplate(value)
        except InvalidKeyError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding_supported(cls, value: str | None) -> str | None:
        if value is not None and value not in SUPPORTED_ENCODINGS:
            choices = ", ".join(SUPPORTED_ENCODINGS)
            raise ValueError(f"must be one of {choices}, got {value!r}")
        return value

    @field_validator("model")
    @classmethod
    def _model_known(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("encoding") is None:
            try:
                encoding_for_model(value)
            except EncodingUnavailableError as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def encoding_name(self) -> str:
        """The tiktoken encoding: the explicit override, else the model's."""
        return self.encoding or encoding_for_model(self.model)

    @property
    def key_template(self) -> KeyTemplate:
        """The parsed key template."""
        return KeyTemplate(self.key)

    @property
    def budget(self) -> Budget:
        """Per-category token budgets."""
        share = self.token_allocation
        return Budget(
            max_tokens=self.max_tokens,
            system=exact_floor(self.max_tokens, share.system),
            short_term=exact_floor(self.max_tokens, share.short_term),
            long_term=exact_floor(self.max_tokens, share.long_term),
            max_messages=self.max_messages,
        )

    def fingerprint(self) -> str:
        """A stable hash of the config, stored beside the state it shaped."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4096)
def exact(share: float) -> Fraction:
    """The decimal a user wrote (0.7), not its binary float (0.6999…)."""
    return Fraction(repr(share))


@functools.lru_cache(maxsize=4096)
def exact_floor(count: int, share: float) -> int:
    """floor(count × share) in exact decimal arithmetic."""
    return math.floor(count * exact(share))


@functools.lru_cache(maxsize=4096)
def exact_ceil(count: int, share: float) -> int:
    """ceil(count × share) in exact decimal arithmetic (cached: called per event)."""
    return math.ceil(count * exact(share))


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def parse_config(data: Any) -> MemoryConfig:
    """Validate one config mapping; errors name each failing field and its rule."""
    try:
        return MemoryConfig.model_validate(data)
    except ValidationError as exc:
        errors = [ConfigError(_field_path(e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigErrors(errors) from None


def load_configs(text: str, source: str = "<yaml>") -> list[MemoryConfig]:
    """Parse YAML holding one memory, a ``memories:`` list, or several ``---`` documents.

    Every invalid field of every resource is reported at once (``ConfigErrors``), each named
    by the resource (``memories[1] (chat).max_tokens``); ``source`` names the text (a path).
    """
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, f"not valid YAML{where}: {problem}") from None
    items: list[tuple[str, Any]] = []
    for number, doc in enumerate(documents):
        if isinstance(doc, dict) and set(doc) == {"memories"}:
            listed = doc["memories"]
            if not isinstance(listed, list):
                raise ConfigError("memories", "must be a list of memory configs")
            items += [(f"memories[{i}]", item) for i, item in enumerate(listed)]
        else:
            items.append((f"document {number + 1}" if len(documents) > 1 else "", doc))
    configs: list[MemoryConfig] = []
    errors: list[ConfigError] = []
    for where, item in items:
        try:
            configs.append(parse_config(item))
        except ConfigErrors as exc:
            name = item.get("id") if isinstance(item, dict) else None
            label = " ".join(x for x in (where, f"({name})" if isinstance(name, str) else "") if x)
            errors += [
                ConfigError(f"{label}.{e.field}" if label else e.field, e.rule) for e in exc.errors
            ]
    if errors:
        raise ConfigErrors(errors)
    ids = [c.id for c in configs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError("id", f"must be unique, repeated: {', '.join(duplicates)}")
    return configs
