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
from memory_core.health import MemoryHealth
from memory_core.instance import (
    AsyncSafeMemoryInstance,
    NoPublisherError,
    Page,
    WriteTimeoutError,
)
from memory_core.keys import KeyTemplate, validate_memory_key
from memory_core.models import (
    Category,
    Draft,
    FlushRequested,
    Kind,
    LoggedEvent,
    MemoryCleared,
    MemoryEvent,
    MemoryFlushed,
    MemoryState,
    Message,
    MessageAppended,
    Role,
    Snapshot,
    ToolCall,
)
from memory_core.policy import MemoryPolicy
from memory_core.ports import Clock, EventPublisher, LockManager, MemoryStore, SystemClock
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
    "AsyncSafeMemoryInstance",
    "Budget",
    "Category",
    "ChatFormat",
    "ChatMessage",
    "Clock",
    "ConfigError",
    "ConfigErrors",
    "DeadLetterReason",
    "Draft",
    "EncodingRegistry",
    "EncodingUnavailableError",
    "EventPublisher",
    "EventResult",
    "FlushPlan",
    "FlushRequested",
    "FlushingConfig",
    "HybridFlushingStrategy",
    "InvalidKeyError",
    "KeyTemplate",
    "Kind",
    "LockManager",
    "LockingConfig",
    "LoggedEvent",
    "MemoryCleared",
    "MemoryConfig",
    "MemoryEvent",
    "MemoryFlushed",
    "MemoryHealth",
    "MemoryPolicy",
    "MemoryState",
    "MemoryStore",
    "MemstreamError",
    "Message",
    "MessageAppended",
    "NoPublisherError",
    "NothingToFlushError",
    "Outcome",
    "Page",
    "PersistenceConfig",
    "PrivacyConfig",
    "PrivacyPolicy",
    "RejectedEventError",
    "Role",
    "Snapshot",
    "SystemClock",
    "TokenAllocation",
    "TokenCounter",
    "TokenMemoryManager",
    "ToolCall",
    "WriteTimeoutError",
    "encoding_for_model",
    "flush_due",
    "load_configs",
    "parse_config",
    "tool_unit",
    "validate_memory_key",
]
