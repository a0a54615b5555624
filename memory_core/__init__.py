"""memstream's memory engine: the pure domain and, in subpackages, its adapters."""

from memory_core.config import (
    Budget,
    FlushingConfig,
    LockingConfig,
    MemoryConfig,
    PersistenceConfig,
    PrivacyConfig,
    TokenAllocation,
    load_configs,
    parse_config,
)
from memory_core.encodings import EncodingRegistry
from memory_core.errors import (
    ConfigError,
    ConfigErrors,
    DeadLetterReason,
    EncodingUnavailableError,
    InvalidKeyError,
    MemstreamError,
    NothingToFlushError,
    RejectedEventError,
)
from memory_core.eviction import ApplyResult, EventResult, Outcome, TokenMemoryManager
from memory_core.flushing import FlushPlan, HybridFlushingStrategy, flush_due
from memory_core.keys import KeyTemplate, validate_memory_key
from memory_core.models import (
    Category,
    Kind,
    LoggedEvent,
    MemoryCleared,
    MemoryEvent,
    MemoryFlushed,
    MemoryState,
    Message,
    MessageAppended,
    Role,
    ToolCall,
)
from memory_core.privacy import PrivacyPolicy
from memory_core.tokens import (
    SUPPORTED_ENCODINGS,
    ChatFormat,
    ChatMessage,
    TokenCounter,
    encoding_for_model,
)
from memory_core.toolcalls import tool_unit

__all__ = [
    "SUPPORTED_ENCODINGS",
    "ApplyResult",
    "Budget",
    "Category",
    "ChatFormat",
    "ChatMessage",
    "ConfigError",
    "ConfigErrors",
    "DeadLetterReason",
    "EncodingRegistry",
    "EncodingUnavailableError",
    "EventResult",
    "FlushPlan",
    "FlushingConfig",
    "HybridFlushingStrategy",
    "InvalidKeyError",
    "KeyTemplate",
    "Kind",
    "LockingConfig",
    "LoggedEvent",
    "MemoryCleared",
    "MemoryConfig",
    "MemoryEvent",
    "MemoryFlushed",
    "MemoryState",
    "MemstreamError",
    "Message",
    "MessageAppended",
    "NothingToFlushError",
    "Outcome",
    "PersistenceConfig",
    "PrivacyConfig",
    "PrivacyPolicy",
    "RejectedEventError",
    "Role",
    "TokenAllocation",
    "TokenCounter",
    "TokenMemoryManager",
    "ToolCall",
    "encoding_for_model",
    "flush_due",
    "load_configs",
    "parse_config",
    "tool_unit",
    "validate_memory_key",
]
