"""The public API of each package is exactly its ``__all__``, and every name resolves."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "package", ["memory_core", "memory_core.redis", "memory_core.temporal", "schemas", "consumers"]
)
def test_every_exported_name_exists_and_public_names_are_exported(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    assert all(hasattr(module, name) for name in exported)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith(package)
    }
    assert public <= exported, sorted(public - exported)


def test_memory_core_exports_are_pinned() -> None:
    import memory_core

    assert {
        "AsyncSafeMemoryInstance",
        "MemoryConfig",
        "TokenMemoryManager",
        "HybridFlushingStrategy",
        "TokenCounter",
        "EncodingRegistry",
        "KeyTemplate",
        "MemoryHealth",
        "MemstreamError",
    } <= set(memory_core.__all__)
